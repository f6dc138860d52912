import Foundation
import ShoalTensor
import ShoalTokenizer

/// Which on-disk convention a checkpoint follows. The tensor names of each live here and only here.
public enum CheckpointLayout: String, Sendable {
    /// `config.json` + `model.safetensors` or sharded `model-*.safetensors` + index.
    case huggingFace
    /// `params.json` + `consolidated.safetensors`: wq/wk rows in the original interleaved-RoPE order.
    case mistral
    /// One llama.cpp GGUF file (`general.architecture = llama` with experts), its experts either
    /// merged per layer (`blk.N.ffn_gate_exps.weight`, `[n_expert][out][in]`) or one tensor each
    /// (`blk.N.ffn_gate.E.weight`, the December 2023 files); wq/wk rows in the interleaved order.
    case gguf

    /// How q/k rows pair up for RoPE. transformers' converter permutes wq/wk rows so that
    /// pair i is (i, i + head_dim/2); Mistral's files keep adjacent pairs (2i, 2i+1). Using
    /// the matching rotation keeps both files mapped as they are.
    public var ropeStyle: RopeStyle { self == .huggingFace ? .halfSplit : .interleaved }

    func name(_ tensor: TensorName) -> String {
        switch (self, tensor) {
        case (.gguf, _): return GGUFNames.name(tensor, merged: true)
        case (.huggingFace, .embedding): return "model.embed_tokens.weight"
        case (.huggingFace, .output): return "lm_head.weight"
        case (.huggingFace, .finalNorm): return "model.norm.weight"
        case let (.huggingFace, .attentionNorm(l)): return "model.layers.\(l).input_layernorm.weight"
        case let (.huggingFace, .ffnNorm(l)): return "model.layers.\(l).post_attention_layernorm.weight"
        case let (.huggingFace, .wq(l)): return "model.layers.\(l).self_attn.q_proj.weight"
        case let (.huggingFace, .wk(l)): return "model.layers.\(l).self_attn.k_proj.weight"
        case let (.huggingFace, .wv(l)): return "model.layers.\(l).self_attn.v_proj.weight"
        case let (.huggingFace, .wo(l)): return "model.layers.\(l).self_attn.o_proj.weight"
        case let (.huggingFace, .router(l)): return "model.layers.\(l).block_sparse_moe.gate.weight"
        case let (.huggingFace, .expert(l, e, w)): return "model.layers.\(l).block_sparse_moe.experts.\(e).\(w).weight"
        case (.mistral, .embedding): return "tok_embeddings.weight"
        case (.mistral, .output): return "output.weight"
        case (.mistral, .finalNorm): return "norm.weight"
        case let (.mistral, .attentionNorm(l)): return "layers.\(l).attention_norm.weight"
        case let (.mistral, .ffnNorm(l)): return "layers.\(l).ffn_norm.weight"
        case let (.mistral, .wq(l)): return "layers.\(l).attention.wq.weight"
        case let (.mistral, .wk(l)): return "layers.\(l).attention.wk.weight"
        case let (.mistral, .wv(l)): return "layers.\(l).attention.wv.weight"
        case let (.mistral, .wo(l)): return "layers.\(l).attention.wo.weight"
        case let (.mistral, .router(l)): return "layers.\(l).feed_forward.gate.weight"
        case let (.mistral, .expert(l, e, w)): return "layers.\(l).feed_forward.experts.\(e).\(w).weight"
        }
    }
}

/// RoPE pairing of the dimensions inside one head.
public enum RopeStyle: Sendable { case halfSplit, interleaved }

/// The model's tensors by role, independent of layout.
enum TensorName {
    case embedding, output, finalNorm
    case attentionNorm(Int), ffnNorm(Int), wq(Int), wk(Int), wv(Int), wo(Int), router(Int)
    /// w1 = gate projection, w3 = up projection, w2 = down projection.
    case expert(Int, Int, String)
}

/// One tensor as stored: its bytes in a mapping, with the type and shape the file gives it.
struct StoredTensor {
    /// The file's name for it (a merged GGUF expert tensor adds `[expert E]`).
    let name: String
    /// The file's type name (`BF16`, `Q4_K`, …).
    let typeName: String
    /// The compute type, when it is a weight type Shoal reads.
    let dtype: DType?
    /// PyTorch order: a matrix is `[rows, cols]`.
    let shape: [Int]
    let bytes: UnsafeRawBufferPointer

    /// Asks the kernel to read these bytes ahead.
    func willNeed() { MappedPages.willNeed(bytes) }

    /// Drops these bytes' pages from this process, once they were copied or quantized.
    func dontNeed() { MappedPages.dontNeed(bytes) }
}

/// An opened checkpoint: a model folder (either safetensors layout) or a GGUF file, with its
/// config and tokenizer; safetensors files are mapped on first use. Matrices it hands out point
/// into the mappings, so it must outlive them.
///
/// `@unchecked Sendable`: after loading, its state is only read.
public final class Checkpoint: @unchecked Sendable {
    /// The folder, or the GGUF file, it was opened from.
    public let folder: String
    public let layout: CheckpointLayout
    public let config: ModelConfig
    /// `tokenizer.model`, `tokenizer.model.v1` or `.v3`, when the folder has one (a GGUF file carries
    /// its vocabulary: `loadTokenizer()`).
    public let tokenizerPath: String?
    /// The GGUF file (or its splits), for a `.gguf` layout.
    public let gguf: GGUFModelFiles?
    /// Float weights are quantized as they are loaded, by this mix (`--quantize`); weights
    /// already quantized in the file stay as they are.
    public let quantization: QuantizationMix?
    /// Tensor name → file name inside `folder` (safetensors layouts).
    private let fileOf: [String: String]
    private var opened: [String: SafetensorsFile] = [:]
    /// Weights made at load (f16 widened to f32, quantized copies), owned here.
    private var owned: [UnsafeMutableRawPointer] = []
    /// Threads that quantize rows at load, one per core, made on first use.
    private lazy var quantizingPool = ComputePool(threads: Engine.defaultThreads)

    /// Opens `folder`: a Hugging Face or Mistral folder, or a GGUF file (the name is kept for the
    /// callers that only ever passed folders). With `quantize`, float weights are quantized by
    /// that mix when they are loaded, as `shoal quantize` would write them.
    public init(folder: String, quantize: QuantizationMix? = nil) throws {
        self.folder = folder
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory), !isDirectory.boolValue {
            guard GGUFFile.looksLikeGGUF(folder) else { throw ModelLoadError.notGGUF(file: folder) }
            let file = try GGUFModelFiles(path: folder)
            gguf = file
            layout = .gguf
            quantization = nil
            config = try GGUFNames.config(file)
            fileOf = [:]
            tokenizerPath = nil
            try config.validate(source: folder)
            return
        }
        gguf = nil
        quantization = quantize
        let fm = FileManager.default
        let found = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).sorted()
        func has(_ name: String) -> Bool { found.contains(name) }
        func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

        if has("config.json") && (has("model.safetensors") || has("model.safetensors.index.json")) {
            layout = .huggingFace
            config = try Self.decode(HFConfig.self, path("config.json")).modelConfig
            if has("model.safetensors.index.json") {
                fileOf = try Self.readIndex(path("model.safetensors.index.json"))
            } else {
                (fileOf, opened) = try Self.openSingle(path("model.safetensors"), file: "model.safetensors")
            }
        } else if has("params.json") && has("consolidated.safetensors") {
            layout = .mistral
            config = try Self.decode(MistralParams.self, path("params.json")).modelConfig
            (fileOf, opened) = try Self.openSingle(path("consolidated.safetensors"), file: "consolidated.safetensors")
        } else {
            throw ModelLoadError.notACheckpoint(folder: folder, found: found)
        }
        try config.validate(source: layout == .huggingFace ? path("config.json") : path("params.json"))
        // v3 loads too: its plain text encodes as SentencePiece does; its chat format is refused
        // (`encodeChat`).
        tokenizerPath = ["tokenizer.model", "tokenizer.model.v1", "tokenizer.model.v3"].first(where: has).map(path)
    }

    deinit { owned.forEach { $0.deallocate() } }

    /// How q/k rows pair up for RoPE in the matrices this checkpoint hands out. Quantizing at
    /// load moves a Hugging Face folder's q/k rows to the interleaved order, as `shoal quantize`
    /// does, so both compute the same thing in the same order.
    public var ropeStyle: RopeStyle { quantization != nil ? .interleaved : layout.ropeStyle }

    /// The tokenizer beside the weights, or an error saying it is missing.
    public func requireTokenizerPath() throws -> String {
        guard let p = tokenizerPath else { throw ModelLoadError.missingTokenizer(folder: folder) }
        return p
    }

    /// The checkpoint's tokenizer: `tokenizer.model(.v1)` beside a folder's weights, or a GGUF
    /// file's own vocabulary.
    public func loadTokenizer() throws -> SentencePieceTokenizer {
        if let gguf { return try GGUFNames.tokenizer(gguf) }
        return try SentencePieceTokenizer(contentsOf: try requireTokenizerPath())
    }

    /// A weight matrix `[rows, cols]`, checked against the expected shape: mapped as stored,
    /// f16 widened to f32, or quantized by `quantization` (into memory owned here).
    func matrix(_ tensor: TensorName, rows: Int, cols: Int) throws -> Matrix {
        let t = try stored(tensor)
        guard t.shape == [rows, cols] else {
            throw ModelLoadError.shapeMismatch(name: t.name, expected: [rows, cols], actual: t.shape)
        }
        guard let dtype = t.dtype else { throw ModelLoadError.unsupportedDType(name: t.name, dtype: t.typeName) }
        t.willNeed()
        let widened = dtype == .f16 ? Self.widen(t, rows: rows, cols: cols) : nil
        let source = widened ?? Matrix(dtype: dtype, rows: rows, cols: cols, base: t.bytes.baseAddress!)
        guard let mix = quantization, !dtype.isQuantized else {
            if let widened { owned.append(UnsafeMutableRawPointer(mutating: widened.base)) }
            return source
        }
        defer { widened.map { UnsafeMutableRawPointer(mutating: $0.base).deallocate() } }
        return try quantized(tensor, source, name: t.name, to: mix.type(for: tensor, layers: config.layers), dropping: t)
    }

    /// An f16 matrix widened into a new float32 buffer, which the caller owns.
    private static func widen(_ t: StoredTensor, rows: Int, cols: Int) -> Matrix {
        let out = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
        for i in 0..<(rows * cols) {
            out[i] = Float(Float16(bitPattern: t.bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
        }
        return Matrix(dtype: .f32, rows: rows, cols: cols, base: UnsafeRawPointer(out))
    }

    /// `source` quantized row by row into memory owned here, as `shoal quantize` writes it (q/k
    /// rows moved to the interleaved order when the file has them in the half-split one); the
    /// stored tensor's file pages are then dropped from this process.
    private func quantized(_ tensor: TensorName, _ source: Matrix, name: String, to target: DType,
                           dropping stored: StoredTensor) throws -> Matrix {
        guard source.cols % target.blockWeights == 0 else {
            throw ModelLoadError.badConfig(file: folder, detail: "\(name): rows of \(source.cols) weights cannot be quantized to \(target.rawValue) (blocks of \(target.blockWeights))")
        }
        var heads: Int?
        if layout.ropeStyle == .halfSplit {
            if case .wq = tensor { heads = config.heads }
            if case .wk = tensor { heads = config.kvHeads }
        }
        let out = UnsafeMutableRawPointer.allocate(byteCount: max(1, source.rows * target.rowBytes(source.cols)), alignment: 64)
        owned.append(out)
        try GGUFExport.quantizeRows(of: source, 0..<source.rows, permutingHeads: heads, to: target, into: out,
                                    pool: quantizingPool, tensor: name, file: folder)
        stored.dontNeed()
        return Matrix(dtype: target, rows: source.rows, cols: source.cols, base: UnsafeRawPointer(out))
    }

    /// Drops a tensor's file pages from this process (after it was copied or quantized).
    func release(_ tensor: TensorName) {
        (try? stored(tensor))?.dontNeed()
    }

    /// A small vector (norm weights) copied to float32.
    func vector(_ tensor: TensorName, count: Int) throws -> [Float] {
        let t = try stored(tensor)
        guard t.shape == [count] else {
            throw ModelLoadError.shapeMismatch(name: t.name, expected: [count], actual: t.shape)
        }
        let b = t.bytes
        switch t.dtype {
        case .f32: return (0..<count).map { b.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
        case .bf16: return (0..<count).map { bf16ToFloat(b.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) }
        case .f16: return (0..<count).map { Float(Float16(bitPattern: b.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
        default: throw ModelLoadError.unsupportedDType(name: t.name, dtype: t.typeName)
        }
    }

    /// Bytes of one (layer, expert)'s three matrices as stored (a quantized one at its block
    /// size; one quantized at load, at the size it will have), without reading them.
    public func expertBytes(layer: Int, expert: Int) throws -> Int {
        try ["w1", "w2", "w3"].reduce(0) { total, w in
            let name = TensorName.expert(layer, expert, w)
            let tensor = try stored(name)
            guard let quantize = quantization, let dtype = tensor.dtype, !dtype.isQuantized, tensor.shape.count == 2 else {
                return total + tensor.bytes.count
            }
            return total + tensor.shape[0] * quantize.type(for: name, layers: config.layers).rowBytes(tensor.shape[1])
        }
    }

    /// A tensor as stored, without reading its data.
    func stored(_ tensor: TensorName) throws -> StoredTensor {
        if let gguf { return try GGUFNames.stored(tensor, in: gguf) }
        let name = layout.name(tensor)
        guard let fileName = fileOf[name] else { throw ModelLoadError.missingTensor(name: name, folder: folder) }
        let file = try open(fileName, for: name)
        guard let info = file.tensors[name] else { throw ModelLoadError.missingTensor(name: name, folder: folder) }
        return StoredTensor(name: name, typeName: info.type.rawValue, dtype: info.type.weightDType,
                            shape: info.shape, bytes: file.data(info))
    }

    private func open(_ fileName: String, for tensor: String) throws -> SafetensorsFile {
        if let f = opened[fileName] { return f }
        let p = (folder as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: p) else { throw ModelLoadError.missingShard(file: fileName, tensor: tensor) }
        let f = try SafetensorsFile(path: p)
        opened[fileName] = f
        return f
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ path: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        } catch let DecodingError.keyNotFound(key, _) {
            throw ModelLoadError.badConfig(file: path, detail: "missing key \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, context) {
            throw ModelLoadError.badConfig(file: path, detail: "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))")
        } catch {
            throw ModelLoadError.badConfig(file: path, detail: "not a readable JSON config")
        }
    }

    private static func readIndex(_ path: String) throws -> [String: String] {
        struct Index: Decodable { var weight_map: [String: String] }
        let index = try decode(Index.self, path)
        for file in Set(index.weight_map.values) where file.contains("/") || file.hasPrefix(".") {
            throw ModelLoadError.badConfig(file: path, detail: "shard name \(file) leaves the folder")
        }
        return index.weight_map
    }

    /// A one-file checkpoint: every tensor lives in `file`, which stays open for loading.
    private static func openSingle(_ path: String, file: String) throws
        -> ([String: String], [String: SafetensorsFile])
    {
        let f = try SafetensorsFile(path: path)
        return (Dictionary(uniqueKeysWithValues: f.tensors.keys.map { ($0, file) }), [file: f])
    }
}
