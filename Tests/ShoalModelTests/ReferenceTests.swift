import Foundation
import ShoalTestSupport
import Testing
import ShoalTensor
@testable import ShoalModel

/// The model against transformers' float32 reference on every public fixture and layout
/// (../shared/fixtures/README.md §4).
@Suite struct ReferenceTests {
    static let cases: [(model: String, layout: String)] = [
        ("tiny-f32", "hf"), ("tiny-f32", "mistral"),
        ("tiny-bf16", "hf"), ("tiny-bf16", "hf-sharded"), ("tiny-bf16", "mistral"),
    ]

    @Test(arguments: cases.indices)
    func prefillMatchesReference(_ index: Int) throws {
        let (model, layout) = Self.cases[index]
        let expected = try Fixtures.Expected(model: model)
        let engine = try Engine(folder: try Fixtures.path("models/\(model)/\(layout)"), threads: 2)
        let m = engine.model, V = m.config.vocabSize
        for p in 0..<expected.promptCount {
            let ids = try expected.ints("prompt\(p).input_ids")
            let trace = ForwardTrace()
            m.trace = trace
            let cache = KVCache(config: m.config, capacity: ids.count)
            let logits = Array(try m.forward(ids, cache: cache, allLogits: true))
            m.trace = nil
            let tag = "\(model)/\(layout) prompt \(p)"
            #expect(logits.count == ids.count * V)
            expectClose(logits, try expected.floats("prompt\(p).logits"), "\(tag) logits")
            expectClose(trace.finalHidden, try expected.floats("prompt\(p).final_hidden"), "\(tag) final_hidden")
            if p == 0 {
                try expectRoutingAndLayers(trace, expected.floats, tag)
                #expect(trace.layerOutputs.count == m.config.layers + 1 && trace.layerOutputs[0].count == ids.count * m.config.dim)
            }
        }
    }

    @Test(arguments: cases.indices)
    func greedyMatchesReference(_ index: Int) throws {
        let (model, layout) = Self.cases[index]
        let expected = try Fixtures.Expected(model: model)
        let engine = try Engine(folder: try Fixtures.path("models/\(model)/\(layout)"), threads: 2)
        for p in 0..<expected.promptCount {
            let ids = try expected.ints("prompt\(p).input_ids")
            let result = try engine.generator.generate(
                prompt: ids, parameters: GenerationParameters(maxTokens: 24, ignoreEOS: true))
            #expect(result.ids == (try expected.ints("prompt\(p).greedy_tokens")), "\(model)/\(layout) prompt \(p) greedy")
        }
    }

    /// Each KV-cache decode step must give the logits of a full recomputation.
    @Test(arguments: cases.indices)
    func decodeStepsMatchReference(_ index: Int) throws {
        let (model, layout) = Self.cases[index]
        let expected = try Fixtures.Expected(model: model)
        let engine = try Engine(folder: try Fixtures.path("models/\(model)/\(layout)"), threads: 1)
        let m = engine.model, V = m.config.vocabSize
        let prompt = try expected.ints("prompt0.input_ids"), tokens = try expected.ints("prompt0.greedy_tokens")
        let steps = try expected.floats("prompt0.greedy_step_logits")
        let cache = KVCache(config: m.config, capacity: prompt.count + tokens.count)
        var logits = Array(try m.forward(prompt, cache: cache))
        for s in 0..<tokens.count {
            expectClose(logits, Array(steps[(s * V)..<((s + 1) * V)]), "\(model)/\(layout) decode step \(s)")
            logits = Array(try m.forward([tokens[s]], cache: cache))
        }
    }
}
