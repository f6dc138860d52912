import Foundation
import Testing
import ShoalTensor
import ShoalTestSupport

/// The `shoal` binary as users and scripts drive it: exact output formats and exit codes.
@Suite struct CLITests {
    /// Runs the `shoal` built beside the test bundle (`ShoalBinary.run`).
    func shoal(_ arguments: [String]) throws -> ShoalBinary.Output { try ShoalBinary.run(arguments) }

    @Test func tokenizeAndDetokenizePrintJSON() throws {
        let tok = try Fixtures.path("tokenizer/tokenizer.model.v1")
        let r = try shoal(["tokenize", "--tokenizer", tok, "--bos", "--", "-Hello world"])
        #expect(r.status == 0)
        let ids = try JSONDecoder().decode([Int].self, from: Data(r.stdout.utf8))
        #expect(ids.first == 1 && ids.count > 2)
        let back = try shoal(["detokenize", "--tokenizer", tok, "--ids", ids.map(String.init).joined(separator: ",")])
        #expect(back.status == 0 && back.stdout == "\"-Hello world\"\n")
        let bad = try shoal(["detokenize", "--tokenizer", tok, "--ids", "1,99999"])
        #expect(bad.status == 1 && bad.stderr.hasPrefix("error: ") && bad.stderr.contains("99999"))
    }

    @Test func refusedConversationExitsOne() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chat = dir + "/chat.json"
        try Data(#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]"#.utf8)
            .write(to: URL(fileURLWithPath: chat))
        let r = try shoal(["tokenize", "--tokenizer", try Fixtures.path("tokenizer/tokenizer.model.v1"), "--chat", chat])
        #expect(r.status == 1 && r.stdout.isEmpty && r.stderr.hasPrefix("error: "))
        #expect(r.stderr.split(separator: "\n").count == 1)
    }

    @Test func generateJSONIsTheGreedyReference() throws {
        let expected = try Fixtures.Expected(model: "tiny-bf16")
        let ids = try expected.ints("prompt2.input_ids").map(String.init).joined(separator: ",")
        let r = try shoal(["generate", "--model", try Fixtures.path("models/tiny-bf16/mistral"), "--ids", ids,
                           "--max-tokens", "24", "--ignore-eos", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        struct Result: Decodable { var ids: [Int]; var text: String }
        let result = try JSONDecoder().decode(Result.self, from: Data(r.stdout.utf8))
        #expect(result.ids == (try expected.ints("prompt2.greedy_tokens")))
        #expect(r.stderr.contains("tokens/s"))
    }

    @Test func logitsFileMatchesTheReference() throws {
        let expected = try Fixtures.Expected(model: "tiny-f32")
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ids = try expected.ints("prompt0.input_ids")
        let r = try shoal(["logits", "--model", try Fixtures.path("models/tiny-f32/hf"),
                           "--ids", ids.map(String.init).joined(separator: ","), "--out", dir + "/l.safetensors"])
        #expect(r.status == 0, "\(r.stderr)")
        let file = try SafetensorsFile(path: dir + "/l.safetensors")
        #expect(file.tensors["logits"]?.shape == [ids.count, 32000] && file.tensors["logits"]?.type == .f32)
        expectClose(try file.floats("logits"), try expected.floats("prompt0.logits"), "shoal logits")
    }

    @Test func badModelAndBadIdsGetOneLineErrors() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try shoal(["generate", "--model", dir, "--prompt", "hi"])
        #expect(r.status == 1 && r.stderr.hasPrefix("error: ") && r.stderr.contains("not a model folder"))
        #expect(r.stderr.split(separator: "\n").count == 1)
        let out = try shoal(["generate", "--model", try Fixtures.path("models/tiny-f32/hf"), "--ids", "1,32000"])
        #expect(out.status == 1 && out.stderr.contains("token id 32000 is outside the vocabulary"))
        let long = try shoal(["generate", "--model", try Fixtures.path("models/tiny-f32/hf"), "--ids", "1,2",
                              "--max-tokens", "40000"])
        #expect(long.status == 1 && long.stderr.contains("context holds 32768"))
    }

    /// Elastic placement's flags refuse what does not go together, before anything starts.
    @Test func placementFlagsRefuseBadCombinations() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        for (arguments, says) in [
            (["worker", "--model", model, "--experts", "0-3", "--join", "127.0.0.1:1"], "give either --experts SPEC"),
            (["worker", "--model", model], "give either --experts SPEC"),
            (["worker", "--model", model, "--join", "127.0.0.1:1", "--memory", "lots"], "--memory lots: expected a size like 12GiB"),
            (["worker", "--model", model, "--experts", "0-3", "--memory", "1GiB"], "--memory, --advertise and --read-bandwidth go with --join"),
            (["worker", "--model", model, "--experts", "0-3", "--read-bandwidth", "5"], "--memory, --advertise and --read-bandwidth go with --join"),
            (["worker", "--model", model, "--join", "127.0.0.1:1", "--read-bandwidth", "0"], "--read-bandwidth 0.0: expected GB/s above 0"),
            (["worker", "--model", model, "--join", "127.0.0.1:1", "--read-bandwidth", "nan"], "expected GB/s above 0"),
            (["serve", "--model", model, "--placement", "auto", "--workers", "127.0.0.1:1"], "--workers and --placement auto"),
            (["serve", "--model", model, "--placement", "sideways"], "--placement"),
        ] {
            let r = try shoal(arguments)
            #expect(r.status == 64 && r.stderr.contains(says), "\(arguments): \(r.status) \(r.stderr)")
        }
    }

    /// A joining worker must give the coordinator an address it can dial back.
    @Test func aJoiningWorkerNeedsAnAddressToBeDialled() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        for (arguments, says) in [
            (["--listen", "0.0.0.0:0", "--insecure"], "--listen 0.0.0.0:0 has no address a coordinator can dial: give --advertise HOST:PORT"),
            (["--listen", "127.0.0.1:0", "--advertise", "0.0.0.0:5"], "--advertise 0.0.0.0:5: expected HOST:PORT that a coordinator can dial"),
        ] {
            let r = try shoal(["worker", "--model", model, "--join", "127.0.0.1:1"] + arguments)
            #expect(r.status == 1 && r.stderr.contains(says), "\(arguments): \(r.status) \(r.stderr)")
        }
    }

    @Test func synthRefusesBadOptions() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (arguments, says) in [
            (["--shape", "huge"], "--shape takes tiny, mini or real-layers N"),
            (["--shape", "real-layers", "x"], "--shape takes tiny, mini or real-layers N"),
            (["--dtype", "f8"], "--dtype takes bf16 or f32"),
            (["--vocab", "100"], "--vocab must be at least 300"),
            (["--kv-heads", "3"], "must be a multiple of KV heads"),
        ] {
            let r = try shoal(["synth", "--out", dir + "/m"] + arguments)
            #expect(r.status == 1 && r.stderr.hasPrefix("error: ") && r.stderr.contains(says), "\(arguments): \(r.stderr)")
        }
    }

    @Test func synthThenGenerateStreams() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try shoal(["synth", "--out", dir + "/m", "--shape", "tiny", "--layers", "3", "--seed", "9"])
        #expect(s.status == 0, "\(s.stderr)")
        let r = try shoal(["generate", "--model", dir + "/m", "--prompt", "Hello there", "--max-tokens", "8",
                           "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--ignore-eos", "--json"])
        let again = try shoal(["generate", "--model", dir + "/m", "--prompt", "Hello there", "--max-tokens", "8",
                               "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--ignore-eos", "--json"])
        #expect(r.status == 0 && r.stdout == again.stdout && r.stdout.hasPrefix("{\"ids\":["))
    }
}
