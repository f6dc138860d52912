import Foundation
import Testing
import ShoalTensor
import ShoalTestSupport
@testable import ShoalModel

/// Bad GGUF metadata and bad quantization options: each refused with one error naming the key,
/// option or tensor at fault, before anything is computed.
@Suite struct QuantizedInputTests {
    /// The metadata of a valid 2-layer, 8-expert llama file (README §2.4 of the GGUF fixtures),
    /// with `change` applied: nil removes a key.
    static func metadata(_ change: [String: GGUFWriter.Value?] = [:]) -> [(String, GGUFWriter.Value)] {
        var keys: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string("llama")), ("llama.block_count", .u32(2)),
            ("llama.context_length", .u32(512)), ("llama.embedding_length", .u32(256)),
            ("llama.feed_forward_length", .u32(256)), ("llama.attention.head_count", .u32(8)),
            ("llama.attention.head_count_kv", .u32(4)), ("llama.rope.dimension_count", .u32(32)),
            ("llama.rope.freq_base", .f32(1e6)), ("llama.attention.layer_norm_rms_epsilon", .f32(1e-5)),
            ("llama.expert_count", .u32(8)), ("llama.expert_used_count", .u32(2)), ("llama.vocab_size", .u32(3)),
            ("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .strings(["<unk>", "<s>", "</s>"])),
            ("tokenizer.ggml.scores", .f32s([0, 0, 0])), ("tokenizer.ggml.token_type", .i32s([2, 3, 3])),
        ]
        for (key, value) in change {
            keys.removeAll { $0.0 == key }
            if let value { keys.append((key, value)) }
        }
        return keys
    }

    /// A GGUF file of `metadata` and no tensors, opened as a checkpoint.
    static func open(_ metadata: [(String, GGUFWriter.Value)]) throws -> Checkpoint {
        let path = NSTemporaryDirectory() + "shoal-meta-\(UUID().uuidString).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try GGUFWriter(path: path, metadata: metadata, tensors: []).finish()
        return try Checkpoint(folder: path)
    }

    @Test func metadataTheModelCannotRunIsRefused() throws {
        #expect(try Self.open(Self.metadata()).config.experts == 8)  // the base is valid
        let cases: [([String: GGUFWriter.Value?], String)] = [
            (["general.architecture": .string("gpt2")], "general.architecture is gpt2"),
            (["llama.expert_count": nil], "llama.expert_count is absent or 0: a dense model"),
            (["llama.attention.head_count": nil], "missing key llama.attention.head_count"),
            (["llama.block_count": .string("two")], "llama.block_count is not a non-negative integer"),
            (["llama.rope.dimension_count": .u32(16)], "llama.rope.dimension_count 16 rotates part of each head"),
            (["llama.rope.scaling.type": .string("linear")], "llama.rope.scaling.type is linear"),
            (["llama.attention.value_length": .u32(16)], "llama.attention.value_length 16 differs from key_length 32"),
        ]
        for (change, message) in cases {
            do {
                _ = try Self.open(Self.metadata(change))
                Issue.record("\(change) was accepted")
            } catch let error as ModelLoadError {
                #expect("\(error)".contains(message), "\(change): \(error)")
            }
        }
    }

    @Test func vocabulariesShoalCannotReadAreRefused() throws {
        let cases: [([String: GGUFWriter.Value?], String)] = [
            (["tokenizer.ggml.model": .string("gpt2")], "tokenizer.ggml.model is gpt2"),
            (["tokenizer.ggml.scores": .f32s([0, 0])], "tokenizer.ggml.scores is not 3 numbers"),
            (["tokenizer.ggml.token_type": .i32s([2, 3, 9])], "token 2 has unknown token type 9"),
        ]
        for (change, message) in cases {
            let checkpoint = try Self.open(Self.metadata(change))
            do {
                _ = try checkpoint.loadTokenizer()
                Issue.record("\(change) was accepted")
            } catch {
                #expect("\(error)".contains(message), "\(change): \(error)")
            }
        }
    }

    /// `--quantize` to blocks a row cannot hold names the tensor; so does `shoal quantize`, which
    /// then leaves no file behind; unknown types and mixes are refused by name.
    @Test func badQuantizationOptionsAreRefused() throws {
        let tiny = try Fixtures.path("models/tiny-f32/hf")  // rows of 64 weights
        let out = try Fixtures.temporaryFolder() + "/tiny.gguf"
        let cases: [([String], String)] = [
            (["generate", "--model", tiny, "--quantize", "q4_k_m", "--ids", "1"],
             "experts.0.w1.weight: rows of 64 weights cannot be quantized to Q4_K (blocks of 256)"),
            (["quantize", "--model", tiny, "--type", "q4_k_m", "--out", out],
             "token_embd.weight: rows of 64 weights cannot be quantized to Q4_K (blocks of 256)"),
            (["quantize", "--model", tiny, "--type", "q3_k", "--out", out], "q3_k"),
            (["worker", "--model", tiny, "--experts", "0-7", "--quantize", "int3"], "int3"),
            (["demo", "--model", tiny, "--quantized", "q3_k"], "--quantized q3_k: expected none or one of"),
            (["bench-kernels", "--type", "iq4_xs"], "--type iq4_xs: expected one of f32, bf16, q8_0"),
            (["bench-kernels", "--type", "q4_k", "--cols", "100"], "--cols 100 is not a whole number of Q4_K blocks"),
        ]
        for (arguments, message) in cases {
            let run = try ShoalBinary.run(arguments)
            #expect(run.status != 0 && run.stderr.contains(message), "\(arguments): \(run.stderr)")
        }
        let folder = (out as NSString).deletingLastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder).isEmpty, "a refused quantize left a file")
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// A file that is neither a model folder nor a GGUF file.
    @Test func aFileThatIsNotGGUFIsRefused() throws {
        let path = try Fixtures.path("tokenizer/tokenizer.model.v1")
        #expect(throws: ModelLoadError.notGGUF(file: path)) { try Checkpoint(folder: path) }
    }
}
