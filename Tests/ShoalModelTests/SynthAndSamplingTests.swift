import Foundation
import Testing
import ShoalTensor
@testable import ShoalModel

@Suite struct SynthTests {
    /// A sharded synth checkpoint and an unsharded one of the same seed are the same model.
    @Test func shardedAndSingleFileGiveTheSameLogits() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = Synth.preset("tiny")!
        try Synth.write(config, to: dir + "/one", seed: 3)
        try Synth.write(config, to: dir + "/sharded", seed: 3, maxShardBytes: 1 << 20)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/sharded")
        #expect(files.contains("model.safetensors.index.json"))
        #expect(files.filter { $0.hasPrefix("model-") }.count > 2)
        let ids = [1, 100, 200, 300, 400]
        var results: [[Float]] = []
        for name in ["one", "sharded"] {
            let engine = try Engine(folder: dir + "/" + name, threads: 2)
            let cache = KVCache(config: engine.model.config, capacity: 8)
            results.append(Array(try engine.model.forward(ids, cache: cache, allLogits: true)))
            #expect(engine.checkpoint.config == config)
        }
        #expect(results[0] == results[1])
        #expect(results[0].allSatisfy { $0.isFinite })
    }
}

@Suite struct SamplingTests {
    func logits(_ values: [Float]) -> [Float] { values }

    @Test func greedyAndTopKOneTakeTheArgmax() {
        let l: [Float] = [0.1, 3, 2.9, -1]
        l.withUnsafeBufferPointer { p in
            var greedy = Sampler(SamplingParameters())
            var topOne = Sampler(SamplingParameters(temperature: 1, topK: 1))
            #expect(greedy.sample(p) == 1 && topOne.sample(p) == 1)
        }
    }

    /// `logitBias` is added before anything else: it moves the argmax, bans a token from a
    /// draw, and an id past the vocabulary changes nothing.
    @Test func logitBiasIsAddedBeforeSampling() {
        let l: [Float] = [0.1, 3, 2.9, -1]
        l.withUnsafeBufferPointer { p in
            var lifted = Sampler(SamplingParameters(logitBias: [3: 4.2]))  // -1 + 4.2 = 3.2 > 3
            var short = Sampler(SamplingParameters(logitBias: [3: 3.9]))   // -1 + 3.9 = 2.9 < 3
            var outside = Sampler(SamplingParameters(logitBias: [4: 100]))
            #expect(lifted.sample(p) == 3 && short.sample(p) == 1 && outside.sample(p) == 1)
            var banned = Sampler(SamplingParameters(temperature: 1, seed: 3, logitBias: [1: -100, 2: -100]))
            #expect((0..<300).allSatisfy { _ in [0, 3].contains(banned.sample(p)) })
        }
    }

    @Test func aSeedMakesSamplingRepeatable() {
        let l = (0..<100).map { Float($0 % 7) * 0.3 }
        func draw(seed: UInt64) -> [Int] {
            var s = Sampler(SamplingParameters(temperature: 1, topP: 0.9, seed: seed))
            return l.withUnsafeBufferPointer { p in (0..<50).map { _ in s.sample(p) } }
        }
        #expect(draw(seed: 42) == draw(seed: 42))
        #expect(draw(seed: 42) != draw(seed: 43))
    }

    @Test func topKAndTopPKeepOnlyTheLikelyTokens() {
        let l: [Float] = [5, 4.9, 0, 0, 0, 0, 0, 0]
        l.withUnsafeBufferPointer { p in
            var k2 = Sampler(SamplingParameters(temperature: 5, topK: 2, seed: 1))
            #expect((0..<200).allSatisfy { _ in k2.sample(p) < 2 })
            var p50 = Sampler(SamplingParameters(temperature: 1, topP: 0.5, seed: 1))
            #expect((0..<200).allSatisfy { _ in p50.sample(p) == 0 })
            var all = Sampler(SamplingParameters(temperature: 100, seed: 1))
            #expect(Set((0..<400).map { _ in all.sample(p) }).count == 8)
        }
    }

    /// NaN and infinite logits never trap the sampler (a broken worker once made it read
    /// `candidates[-1]`), are never drawn, and `allFinite` flags them for callers to refuse.
    @Test func nonFiniteLogitsNeitherTrapNorGetDrawn() {
        let cases: [[Float]] = [
            [.nan, .nan, .nan], [.nan, 1, 2, .nan], [-.infinity, 0.5, .infinity, .nan], [.infinity, .infinity], [2, 1, 0],
        ]
        for l in cases {
            l.withUnsafeBufferPointer { p in
                #expect(Sampler.allFinite(p) == l.allSatisfy(\.isFinite), "\(l)")
                for parameters in [SamplingParameters(), SamplingParameters(temperature: 0.8, topK: 2, topP: 0.5, seed: 3),
                                   SamplingParameters(temperature: 1.5, seed: 9)] {
                    var sampler = Sampler(parameters)
                    let drawn = (0..<50).map { _ in sampler.sample(p) }
                    #expect(drawn.allSatisfy { l.indices.contains($0) }, "\(l)")
                    if l.contains(where: \.isFinite) {
                        #expect(drawn.allSatisfy { l[$0].isFinite || parameters.temperature == 0 }, "\(l): \(drawn)")
                    }
                }
            }
        }
        [Float]([.nan, 1, 2, .nan]).withUnsafeBufferPointer { #expect(Sampler.argmax($0) == 2) }
        // One NaN among a million finite values is found.
        var big = [Float](repeating: 1, count: 1 << 20)
        #expect(big.withUnsafeBufferPointer { Sampler.allFinite($0) })
        big[777_777] = .nan
        #expect(!big.withUnsafeBufferPointer { Sampler.allFinite($0) })
    }

    @Test func stopStringsCutTheTextAndHoldBackPrefixes() {
        var emitted: [String] = []
        var m = StopMatcher(["END", "\n\n"])
        var found = m.feed("Hello E", emit: { emitted.append($0) })
        #expect(!found && emitted == ["Hello "])
        found = m.feed("N", emit: { emitted.append($0) })
        #expect(!found && emitted == ["Hello "])
        found = m.feed("Dless", emit: { emitted.append($0) })
        #expect(found && m.text == "Hello ")
        var n = StopMatcher(["END"])
        found = n.feed("the EN", emit: { _ in }) || n.feed("TRY", emit: { _ in })
        n.flush(emit: { _ in })
        #expect(!found && n.text == "the ENTRY")
    }

    @Test func generationStopsAtStopStringsAndMaxTokens() throws {
        let engine = try Engine(folder: try Fixtures.path("models/tiny-f32/hf"), threads: 1)
        let prompt = [1, 1782, 349, 272]
        let free = try engine.generator.generate(prompt: prompt, parameters: GenerationParameters(maxTokens: 12, ignoreEOS: true))
        #expect(free.ids.count == 12 && free.finishReason == .length)
        var streamed = ""
        let again = try engine.generator.generate(prompt: prompt, parameters: GenerationParameters(maxTokens: 12, ignoreEOS: true)) {
            streamed += $0
        }
        #expect(again.ids == free.ids && streamed == free.text)
        #expect(try free.text == engine.tokenizer.decode(free.ids))
        // Stop at a piece of the text that greedy decoding produces.
        let chars = Array(free.text)
        guard chars.count > 4 else { Issue.record("greedy text too short: \(free.text)"); return }
        let stop = String(chars[(chars.count / 2)..<(chars.count / 2 + 2)])
        let stopped = try engine.generator.generate(
            prompt: prompt, parameters: GenerationParameters(maxTokens: 12, stop: [stop], ignoreEOS: true))
        #expect(stopped.finishReason == .stop)
        #expect(!stopped.text.contains(stop) && free.text.hasPrefix(stopped.text))
    }
}
