import Foundation
import ShoalTensor
import ShoalTestSupport
import Testing
@testable import ShoalModel

/// A checkpoint stored in float16 (`torch_dtype: float16`, safetensors F16) computes exactly the
/// function of its weights widened to float32: the same logits, bit for bit, as the same values
/// stored as F32. Made from the tiny-f32 fixture by rounding every tensor to binary16.
@Suite struct Float16CheckpointTests {
    @Test func f16WeightsAreTheFunctionOfTheirWidenedValues() throws {
        let source = try FixtureFolder.path("models/tiny-f32/hf")
        let folder = try FixtureFolder.temporary()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = try SafetensorsFile(path: source + "/model.safetensors")
        let names = file.tensors.keys.sorted()
        // Every value rounded to binary16 (Float16's initializer rounds to nearest even).
        let halves = try names.map { name in try file.floats(name).map { Float16($0) } }
        for (dtype, type) in [("f16", ElementType.f16), ("f32", ElementType.f32)] {
            let dir = folder + "/" + dtype
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for extra in ["config.json", "tokenizer.model", "generation_config.json"] {
                try FileManager.default.copyItem(atPath: source + "/" + extra, toPath: dir + "/" + extra)
            }
            let writer = try SafetensorsWriter(
                path: dir + "/model.safetensors",
                tensors: names.map { SafetensorsWriter.tensor($0, type, file.tensors[$0]!.shape) })
            for values in halves {
                if type == .f16 {
                    try values.map(\.bitPattern).withUnsafeBytes { try writer.append($0) }
                } else {
                    try values.map { Float($0) }.withUnsafeBytes { try writer.append($0) }
                }
            }
            try writer.finish()
        }
        let prompt = [1, 415, 5565, 349, 2]
        func logits(_ dir: String) throws -> [Float] {
            let engine = try Engine(folder: dir, threads: 2)
            let cache = KVCache(config: engine.model.config, capacity: 64)
            return Array(try engine.model.forward(prompt, cache: cache, allLogits: true))
        }
        let half = try logits(folder + "/f16"), widened = try logits(folder + "/f32"), original = try logits(source)
        // Counted, not compared with ==: a failing == on 160,000 floats makes the test library
        // diff the arrays, which takes minutes.
        func differing(_ a: [Float], _ b: [Float]) -> Int { a.count == b.count ? zip(a, b).count { $0 != $1 } : -1 }
        #expect(half.count == prompt.count * 32000)
        #expect(differing(half, widened) == 0, "f16 weights must compute what their float32 values compute")
        #expect(differing(half, original) > 0, "rounding to f16 changed nothing: the check above could not fail")
    }
}
