import Foundation
import ShoalTestSupport
import Testing
@testable import ShoalModel

/// Past the fixtures' ~125 positions: thousands of positions through one prefill, and the same
/// tokens decoded one at a time (what generation does), give the same logits. The two paths
/// share no arithmetic order by accident: the prefill runs GEMMs over chunks of tokens and
/// attends for many queries at once, the decode runs GEMVs and attends for one; the KV cache,
/// RoPE at large angles and attention over thousands of keys must agree.
@Suite struct LongContextTests {
    @Test func aLongPrefillEqualsDecodingOneByOne() throws {
        let folder = try FixtureFolder.temporary()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let config = try #require(Synth.preset("tiny"))
        try Synth.write(config, to: folder + "/m", dtype: .f32, seed: 11)
        let engine = try Engine(folder: folder + "/m", threads: 2)
        let model = engine.model, vocab = config.vocabSize
        let count = 3000, checked = 100
        // Ids spread over the vocabulary (a stride prime to it), none a control token.
        let tokens = (0..<count).map { 3 + ($0 * 7919) % (vocab - 3) }

        // One prefill of all but the last `checked` tokens, then those as a second prefill with
        // every position's logits.
        let prefillCache = KVCache(config: config, capacity: count)
        let lastOfFirst = Array(try model.forward(Array(tokens[..<(count - checked)]), cache: prefillCache))
        let rest = Array(try model.forward(Array(tokens[(count - checked)...]), cache: prefillCache, allLogits: true))

        let decodeCache = KVCache(config: config, capacity: count)
        var decoded: [[Float]] = []
        for (position, token) in tokens.enumerated() {
            let logits = try model.forward([token], cache: decodeCache)
            if position >= count - checked - 1 { decoded.append(Array(logits)) }
        }
        var differing: [String] = []
        func compare(_ a: [Float], _ b: ArraySlice<Float>, position: Int) {
            guard let first = a.indices.first(where: { a[$0] != b[b.startIndex + $0] }) else { return }
            differing.append("position \(position): logit \(first) decoded \(a[first]), prefilled \(b[b.startIndex + first])")
        }
        compare(decoded[0], lastOfFirst[...], position: count - checked - 1)
        for i in 0..<checked {
            compare(decoded[i + 1], rest[(i * vocab)..<((i + 1) * vocab)], position: count - checked + i)
        }
        // Bit for bit: the kernels give a token the same sums alone or in a batch.
        #expect(differing.isEmpty, "\(differing.count) of \(checked + 1) positions differ; first: \(differing.first ?? "")")
    }
}
