import Foundation
import Testing
import ShoalTensor
@testable import ShoalModel

/// `shoal quantize` (GGUFExport) and `--quantize` at load (Checkpoint): llama.cpp's tensor
/// types per mix, weights that dequantize close to the source, and the same function either way.
@Suite(.serialized) struct QuantizeTests {
    static let mixes: [QuantizationMix] = [.q8_0, .q6_K, .q5_K_M, .q5_K_S, .q5_1, .q5_0, .q4_K_M, .q4_K_S, .q4_1, .q4_0,
                                           .q3_K_L, .q3_K_M, .q3_K_S, .q2_K]
    /// The mixes the fixtures hold a llama-quantize file of (their summary.json names them).
    static let fixtureVariants: [QuantizationMix: String] = [
        .q8_0: "Q8_0", .q6_K: "Q6_K", .q5_K_M: "Q5_K_M", .q4_K_M: "Q4_K_M", .q4_0: "Q4_0",
    ]

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
    /// 8-expert model: the fixtures' summary.json records it. Q4_1, Q5_0 and Q5_1 have no
    /// fixture file; llama_tensor_get_type treats them as Q4_0 (8-bit attn_k/attn_v, a Q6_K
    /// output, the base type everywhere else; without an imatrix), so their expected types are
    /// the Q4_0 file's with Q4_0 replaced by the mix's type.
    @Test(arguments: [QuantizationMix.q8_0, .q6_K, .q5_K_M, .q5_1, .q5_0, .q4_K_M, .q4_1, .q4_0])
    func tensorTypesAreLlamaCppsMix(mix: QuantizationMix) throws {
        let summary = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("gguf/q-small/summary.json")))) as! [String: Any]
        let variant = Self.fixtureVariants[mix] ?? "Q4_0"
        var expected = ((summary["variants"] as! [String: Any])[variant] as! [String: Any])["tensor_types"] as! [String: String]
        if Self.fixtureVariants[mix] == nil {
            expected = expected.mapValues { $0 == "Q4_0" ? mix.rawValue.uppercased() : $0 }
        }
        let file = try GGUFFile(path: try Self.written(mix))
        #expect(Dictionary(uniqueKeysWithValues: file.tensorList.map { ($0.name, $0.type.rawValue) }) == expected)
        #expect(file["general.file_type"]?.int == Int(mix.fileType))
    }

    /// Every block tensor of the written file is, byte for byte, what llama-quantize writes
    /// from the same weights: FNV-1a 64 over those tensors' bytes in name order. Recorded from
    /// llama-quantize (the llama.cpp of the llama-cpp-python 0.3.36 sdist, no imatrix) run on
    /// the bf16 GGUF of this suite's source (`shoal synth --dim 256 --hidden 512 --heads 8
    /// --kv-heads 4 --vocab 512 --layers 2 --dtype bf16 --seed 5`, then `shoal quantize --type
    /// bf16`). That covers each tensor's type and every block of every quantizer; the
    /// routers are left out (llama-quantize keeps the source's bf16, Shoal stores float32).
    static let llamaQuantizeDigests: [QuantizationMix: UInt64] = [
        .q8_0: 0x08332a730737ad5c, .q6_K: 0x39fe575f3fe93932, .q5_K_M: 0x842bedf628bbbb55,
        .q5_1: 0xd6098b1e4bac3e86, .q5_0: 0xb356b7c5aa73d047, .q4_K_M: 0xda8f82d44281abae,
        .q4_1: 0x9473e116fa7e754c, .q4_0: 0x528cb86cdfc168e7, .q3_K_L: 0x65ffeb4d0669c548,
        .q3_K_M: 0xbb95d04b470d9dfe, .q3_K_S: 0x151740101799b618, .q2_K: 0x0add4cc8aeb17d74,
        .q5_K_S: 0xa41854029073f1e2, .q4_K_S: 0xb8cfffc6f6ca43de,
    ]

    @Test(arguments: mixes)
    func blocksAreLlamaQuantizes(mix: QuantizationMix) throws {
        let file = try GGUFFile(path: try Self.written(mix))
        var digest: UInt64 = 0xcbf2_9ce4_8422_2325
        for tensor in file.tensorList.sorted(by: { $0.name < $1.name }) where tensor.type.isQuantized {
            for byte in file.data(tensor) { digest = (digest ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        #expect(digest == Self.llamaQuantizeDigests[mix], "\(mix): 0x\(String(digest, radix: 16))")
    }

    /// `ffn_down`'s type per layer in a 32-layer model, as llama-quantize chose it for the same
    /// shape (the 8-expert rules that depend on the layer: Q3_K_M's first sixteenth, Q4_K_S's
    /// first eighth, Q4_K_M's and Q5_K_M's use_more_bits; digits are the K-quant's bits).
    @Test func ffnDownTypesPerLayerAreLlamaCpps() {
        let recorded: [(QuantizationMix, String)] = [
            (.q2_K, "33333333333333333333333333333333"), (.q3_K_S, "33333333333333333333333333333333"),
            (.q3_K_M, "55444444444444444444444444444444"), (.q3_K_L, "55555555555555555555555555555555"),
            (.q4_K_M, "66664464464464464464464464466666"), (.q5_K_M, "66665565565565565565565565566666"),
            (.q4_K_S, "55554444444444444444444444444444"), (.q5_K_S, "55555555555555555555555555555555"),
        ]
        let bits: [DType: Character] = [.q2_K: "2", .q3_K: "3", .q4_K: "4", .q5_K: "5", .q6_K: "6"]
        for (mix, expected) in recorded {
            let types = String((0..<32).map { bits[mix.type(for: .expert($0, 0, "w2"), layers: 32)] ?? "?" })
            #expect(types == expected, "\(mix)")
        }
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
    /// (Q8_0 0.0038, Q6_K 0.0133, Q5_K 0.0277, Q5_1 0.0295, Q5_0 0.0313, Q4_K 0.0547, Q4_1
    /// 0.0609, Q4_0 0.065, Q3_K 0.1254, Q2_K 0.234; F32 exact). A block misplaced or a scale
    /// misread is an error of order 1.
    @Test(arguments: mixes + [.f32])
    func dequantizedWeightsStayCloseToTheSource(mix: QuantizationMix) throws {
        let source = try Checkpoint(folder: try Self.source.get())
        let file = try Checkpoint(folder: try Self.written(mix))
        let c = source.config
        let bound: [DType: Double] = [.f32: 0, .q8_0: 0.0057, .q6_K: 0.02, .q5_K: 0.042, .q5_1: 0.044, .q5_0: 0.047,
                                      .q4_K: 0.082, .q4_1: 0.091, .q4_0: 0.098, .q3_K: 0.19, .q2_K: 0.35]
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

    /// A source row that cannot be stored is refused, naming the file, the tensor and the row
    /// as the source numbers it (wq's rows are moved to the interleaved order on the way), by
    /// `shoal quantize` and by `--quantize` at load: a NaN, and a weight past what the blocks'
    /// binary16 scales hold (2^100: its Q8_0 scale would be 1e28, binary16's largest 65504).
    @Test(arguments: [(TensorName.wq(0), 1, Float.nan, "it holds NaN or infinite weights"),
                      (.expert(1, 3, "w1"), 5, 0x1p100, "its largest weight, 1.2676506e+30, is past what the type's binary16 scales hold")])
    func rowsThatCannotBeStoredAreRefused(tensor: TensorName, row: Int, value: Float, reason: String) throws {
        let folder = NSTemporaryDirectory() + "shoal-unquantizable-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(atPath: try Self.source.get(), toPath: folder)
        for entry in try FileManager.default.contentsOfDirectory(atPath: folder) where entry.hasSuffix(".gguf") {
            try FileManager.default.removeItem(atPath: folder + "/" + entry)
        }
        let name = CheckpointLayout.huggingFace.name(tensor)
        let path = folder + "/model.safetensors"
        let info = try #require(try SafetensorsFile(path: path).tensors[name])
        #expect(info.type == .bf16)
        let file = try #require(FileHandle(forUpdatingAtPath: path))
        let headerBytes = try #require(try file.read(upToCount: 8)).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        try file.seek(toOffset: 8 + headerBytes + UInt64(info.range.lowerBound + (row * info.shape[1] + 7) * 2))
        try file.write(contentsOf: withUnsafeBytes(of: UInt16(value.bitPattern >> 16)) { Data($0) })
        try file.close()

        let out = folder + "/out.gguf"
        #expect(throws: ModelLoadError.unquantizableRow(file: folder, tensor: name, row: row, type: "Q4_K", reason: reason)) {
            try GGUFExport.write(try Checkpoint(folder: folder), mix: .q4_K_M, to: out, pool: ComputePool(threads: 2))
        }
        #expect(throws: ModelLoadError.unquantizableRow(file: folder, tensor: name, row: row, type: "Q8_0", reason: reason)) {
            try Engine(folder: folder, threads: 2, quantize: .q8_0)
        }
    }

    func logits(_ engine: Engine, _ ids: [Int]) throws -> [Float] {
        let cache = KVCache(config: engine.model.config, capacity: ids.count)
        return Array(try engine.model.forward(ids, cache: cache, allLogits: true))
    }
}
