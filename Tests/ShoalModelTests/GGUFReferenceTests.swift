import Foundation
import ShoalTestSupport
import Testing
import ShoalTensor
import ShoalTokenizer
@testable import ShoalModel

/// GGUF files against the float64 reference on their dequantized weights
/// (../shared/fixtures/gguf/README.md §3): logits, hidden states and routing within
/// 1e-4 + 1e-4·|ref|, router choices and greedy tokens exact, for every stored variant and
/// both expert layouts.
@Suite struct GGUFReferenceTests {
    static let variants = [
        ("Q4_K_M", "q-small.Q4_K_M.gguf"), ("Q4_K_M-legacy", "q-small.Q4_K_M.legacy.gguf"),
        ("Q4_0", "q-small.Q4_0.gguf"), ("Q8_0", "q-small.Q8_0.gguf"),
    ]

    static func path(_ index: Int) throws -> String {
        try Fixtures.path("gguf/q-small/\(variants[index].0)/\(variants[index].1)")
    }

    static func expected(_ index: Int) throws -> SafetensorsFile {
        try SafetensorsFile(path: try Fixtures.path("gguf/q-small/\(variants[index].0)/expected.safetensors"))
    }

    @Test(arguments: variants.indices)
    func prefillMatchesReference(_ index: Int) throws {
        let expected = try Self.expected(index)
        let engine = try Engine(folder: try Self.path(index), threads: 2)
        let m = engine.model, V = m.config.vocabSize
        #expect(engine.checkpoint.layout == .gguf)
        for p in 0..<3 {
            let ids = try expected.floats("prompt\(p).input_ids").map { Int($0) }
            let positions = try expected.floats("prompt\(p).logits_positions").map { Int($0) }
            let trace = ForwardTrace()
            m.trace = trace
            let cache = KVCache(config: m.config, capacity: ids.count)
            let logits = Array(try m.forward(ids, cache: cache, allLogits: true))
            m.trace = nil
            let tag = "\(Self.variants[index].0) prompt \(p)"
            let stored = positions.flatMap { logits[($0 * V)..<(($0 + 1) * V)] }
            expectClose(stored, try expected.floats("prompt\(p).logits"), "\(tag) logits")
            expectClose(trace.finalHidden, try expected.floats("prompt\(p).final_hidden"), "\(tag) final_hidden")
            if p == 0 { try expectRoutingAndLayers(trace, expected.floats, tag) }
        }
    }

    /// Greedy decoding with the KV cache: the tokens exactly, and at each step the final hidden
    /// state the lm_head sees within tolerance.
    @Test(arguments: variants.indices)
    func greedyDecodeMatchesReference(_ index: Int) throws {
        let expected = try Self.expected(index)
        let engine = try Engine(folder: try Self.path(index), threads: 1)
        let m = engine.model, dim = m.config.dim
        for p in 0..<3 {
            let prompt = try expected.floats("prompt\(p).input_ids").map { Int($0) }
            let tokens = try expected.floats("prompt\(p).greedy_tokens").map { Int($0) }
            let result = try engine.generator.generate(prompt: prompt, parameters: GenerationParameters(maxTokens: 24, ignoreEOS: true))
            #expect(result.ids == tokens, "\(Self.variants[index].0) prompt \(p) greedy")
            if p == 0 {
                let steps = try expected.floats("prompt0.greedy_step_final_hidden")
                let cache = KVCache(config: m.config, capacity: prompt.count + tokens.count)
                let trace = ForwardTrace()
                m.trace = trace
                defer { m.trace = nil }
                _ = try m.forward(prompt, cache: cache)
                for s in 0..<tokens.count {
                    let last = Array(trace.finalHidden.suffix(dim))
                    expectClose(last, Array(steps[(s * dim)..<((s + 1) * dim)]), "\(Self.variants[index].0) step \(s)")
                    _ = try m.forward([tokens[s]], cache: cache)
                }
            }
        }
    }

    /// The metadata gives the fixture's shape (README §2.4), including the legacy file's
    /// missing keys.
    @Test(arguments: variants.indices)
    func configFromMetadata(_ index: Int) throws {
        let c = try Checkpoint(folder: try Self.path(index)).config
        #expect(c == ModelConfig(dim: 256, layers: 2, heads: 8, kvHeads: 4, headDim: 32, hiddenDim: 256, vocabSize: 32000,
                                 experts: 8, expertsPerToken: 2, normEps: Float(bitPattern: 0x3727_C5AC), ropeTheta: 1e6,
                                 maxContext: 32768))
    }

    /// The GGUF's vocabulary is tokenizer.model.v1's: the same pieces, scores and types, and the
    /// same ids on every encode and chat case of the tokenizer fixtures.
    @Test func tokenizerEqualsTheSentencePieceModel() throws {
        let gguf = try Checkpoint(folder: try Self.path(0)).loadTokenizer()
        let v1 = try SentencePieceTokenizer(contentsOf: try Fixtures.path("tokenizer/tokenizer.model.v1"))
        #expect(gguf.vocabSize == v1.vocabSize && gguf.bosId == 1 && gguf.eosId == 2 && gguf.unkId == 0)
        #expect((0..<v1.vocabSize).allSatisfy {
            gguf.piece($0) == v1.piece($0) && gguf.score($0) == v1.score($0) && gguf.pieceType($0) == v1.pieceType($0)
        })
        let encode = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("tokenizer/encode.json")))) as! [String: Any]
        var checked = 0
        for c in encode["cases"] as! [[String: Any]] {
            let text = c["text"] as! String
            #expect(gguf.encode(text, bos: false, eos: false) == c["ids"] as! [Int], "\(c["name"]!)")
            #expect(try gguf.decode(c["ids"] as! [Int]) == v1.decode(c["ids"] as! [Int]), "\(c["name"]!) decode")
            checked += 1
        }
        let chat = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("tokenizer/chat.json")))) as! [String: Any]
        for c in chat["cases"] as! [[String: Any]] {
            guard let ids = c["ids"] as? [Int] else { continue }
            let messages = (c["messages"] as! [[String: Any]]).map {
                ChatMessage(role: ChatMessage.Role(rawValue: $0["role"] as! String)!, content: $0["content"] as! String,
                            prefix: $0["prefix"] as? Bool ?? false)
            }
            #expect(try gguf.encodeChat(messages) == ids, "\(c["name"]!)")
            checked += 1
        }
        #expect(checked > 40)
    }

    /// A tensor of a type Shoal has no kernel for is refused when the file is opened, naming
    /// the tensor and the type.
    @Test func unsupportedTensorTypeIsRefusedAtLoad() throws {
        var data = try Data(contentsOf: URL(fileURLWithPath: try Self.path(2)))
        // The first tensor record: the name, n_dims, ne[0..<2], then the type.
        let name = Array("output.weight".utf8)
        let at = data.firstRange(of: Data(name))!.upperBound
        data[at + 4 + 16] = 20  // IQ4_NL
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/damaged.gguf"
        try data.write(to: URL(fileURLWithPath: path))
        #expect(throws: GGUFError.unsupportedType(file: "damaged.gguf", tensor: "output.weight", type: "IQ4_NL")) {
            try Engine(folder: path, threads: 1)
        }
    }
}
