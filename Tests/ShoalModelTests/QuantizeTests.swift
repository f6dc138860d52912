import Foundation
import Testing
import ShoalTensor
@testable import ShoalModel

/// `shoal quantize` (GGUFExport) and `--quantize` at load (Checkpoint): llama.cpp's tensor
/// types per mix, weights that dequantize close to the source, and the same function either way.
@Suite(.serialized) struct QuantizeTests {
    static let mixes: [QuantizationMix] = [.q8_0, .q6_K, .q5_K_M, .q4_K_M, .q4_0]

    /// A random bf16 Mixtral whose rows hold whole K-quant blocks, written once for the suite.
    static let source: Result<String, Error> = Result {
        let folder = NSTemporaryDirectory() + "shoal-quantize-\(UUID().uuidString)"
        let config = ModelConfig(dim: 256, layers: 2, heads: 8, kvHeads: 4, hiddenDim: 512, vocabSize: 512)
        try Synth.write(config, to: folder, dtype: .bf16, seed: 5)
        return folder
    }

    static func written(_ mix: QuantizationMix) throws -> String {
        let folder = try source.get()
        let path = folder + "/model.\(mix.rawValue).gguf"
        if !FileManager.default.fileExists(atPath: path) {
            try GGUFExport.write(try Checkpoint(folder: folder), mix: mix, to: path, pool: ComputePool(threads: 2))
        }
        return path
    }

    /// The type of every tensor is what llama-quantize chose for the same mix of a 2-layer,
    /// 8-expert model: the fixtures' summary.json records it.
    @Test(arguments: mixes)
    func tensorTypesAreLlamaCppsMix(mix: QuantizationMix) throws {
        let summary = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("gguf/q-small/summary.json")))) as! [String: Any]
        let variant = ["q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q4_k_m": "Q4_K_M", "q4_0": "Q4_0"][mix.rawValue]!
        let expected = ((summary["variants"] as! [String: Any])[variant] as! [String: Any])["tensor_types"] as! [String: String]
        let file = try GGUFFile(path: try Self.written(mix))
        #expect(Dictionary(uniqueKeysWithValues: file.tensorList.map { ($0.name, $0.type.rawValue) }) == expected)
        #expect(file["general.file_type"]?.int == Int(mix.fileType))
    }

    /// Quantizing at load computes, bit for bit, what loading the written file computes: the
    /// same blocks, the q/k rows moved the same way.
    @Test(arguments: mixes)
    func quantizingAtLoadEqualsTheWrittenFile(mix: QuantizationMix) throws {
        let folder = try Self.source.get()
        let prompts = [[1, 17, 42, 99, 3, 250], [1]]
        let atLoad = try Engine(folder: folder, threads: 2, quantize: mix)
        let file = try Engine(folder: try Self.written(mix), threads: 2)
        #expect(file.checkpoint.layout == .gguf && atLoad.checkpoint.quantization == mix)
        for ids in prompts {
            let a = try logits(atLoad, ids), b = try logits(file, ids)
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(mix) prompt \(ids)")
        }
        let unquantized = try logits(try Engine(folder: folder, threads: 2), prompts[0])
        #expect(try logits(atLoad, prompts[0]) != unquantized, "\(mix): quantizing changed nothing")
    }

    /// Every weight of the file, dequantized, against the bf16 source (q/k rows permuted back):
    /// relative RMS error within 1.5× what was measured per type on these uniform random weights
    /// (Q8_0 0.0038, Q6_K 0.0133, Q5_K 0.0277, Q4_K 0.0547, Q4_0 0.065; F32 exact). A block
    /// misplaced or a scale misread is an error of order 1.
    @Test(arguments: mixes + [.f32])
    func dequantizedWeightsStayCloseToTheSource(mix: QuantizationMix) throws {
        let source = try Checkpoint(folder: try Self.source.get())
        let file = try Checkpoint(folder: try Self.written(mix))
        let c = source.config
        let bound: [DType: Double] = [.f32: 0, .q8_0: 0.0057, .q6_K: 0.02, .q5_K: 0.042, .q4_K: 0.082, .q4_0: 0.098]
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        var checked = 0
        for (t, rows, cols, heads) in [(TensorName.embedding, c.vocabSize, c.dim, 0), (.output, c.vocabSize, c.dim, 0),
                                       (.wq(1), q, c.dim, c.heads), (.wk(0), kv, c.dim, c.kvHeads), (.wo(1), c.dim, q, 0),
                                       (.router(0), c.experts, c.dim, 0), (.expert(1, 3, "w1"), c.hiddenDim, c.dim, 0),
                                       (.expert(0, 7, "w2"), c.dim, c.hiddenDim, 0)] {
            let a = try source.matrix(t, rows: rows, cols: cols), b = try file.matrix(t, rows: rows, cols: cols)
            var error = 0.0, norm = 0.0
            let ra = UnsafeMutablePointer<Float>.allocate(capacity: cols), rb = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { ra.deallocate(); rb.deallocate() }
            for r in 0..<rows {
                a.copyRow(GGUFExport.sourceRow(r, heads: heads > 0 ? heads : nil, rows: rows), into: ra)
                b.copyRow(r, into: rb)
                for i in 0..<cols { error += Double(ra[i] - rb[i]) * Double(ra[i] - rb[i]); norm += Double(ra[i] * ra[i]) }
            }
            let relative = (error / norm).squareRoot()
            #expect(relative <= bound[b.dtype]!, "\(mix) \(t) as \(b.dtype): relative RMS error \(relative)")
            checked += 1
        }
        #expect(checked == 8)
    }

    /// Rows that cannot hold a mix's blocks are refused, naming the tensor.
    @Test func kQuantsNeedRowsOf256() throws {
        let tiny = try Fixtures.path("models/tiny-f32/hf")
        let out = NSTemporaryDirectory() + "shoal-refused-\(UUID().uuidString).gguf"
        defer { try? FileManager.default.removeItem(atPath: out) }
        #expect(throws: ModelLoadError.self) {
            try GGUFExport.write(try Checkpoint(folder: tiny), mix: .q4_K_M, to: out, pool: ComputePool(threads: 1))
        }
    }

    func logits(_ engine: Engine, _ ids: [Int]) throws -> [Float] {
        let cache = KVCache(config: engine.model.config, capacity: ids.count)
        return Array(try engine.model.forward(ids, cache: cache, allLogits: true))
    }
}
