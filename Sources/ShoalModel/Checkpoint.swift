import Foundation
import ShoalTensor

/// Which on-disk convention a folder follows. The tensor names of each live here and only here.
public enum CheckpointLayout: String, Sendable {
    /// `config.json` + `model.safetensors` or sharded `model-*.safetensors` + index.
    case huggingFace
    /// `params.json` + `consolidated.safetensors`: wq/wk rows in the original interleaved-RoPE order.
    case mistral

    /// How q/k rows pair up for RoPE. transformers' converter permutes wq/wk rows so that
    /// pair i is (i, i + head_dim/2); Mistral's files keep adjacent pairs (2i, 2i+1). Using
    /// the matching rotation keeps both files mapped as they are.
    public var ropeStyle: RopeStyle { self == .huggingFace ? .halfSplit : .interleaved }

    func name(_ tensor: TensorName) -> String {
        switch (self, tensor) {
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

/// An opened model folder: its layout, config and tokenizer path, with safetensors files
/// mapped on first use. Matrices it hands out point into the mappings, so it must outlive them.
///
/// `@unchecked Sendable`: after loading, its state is only read.
public final class Checkpoint: @unchecked Sendable {
    public let folder: String
    public let layout: CheckpointLayout
    public let config: ModelConfig
    /// `tokenizer.model` or `tokenizer.model.v1`, when the folder has one.
    public let tokenizerPath: String?
    /// Tensor name → file name inside `folder`.
    private let fileOf: [String: String]
    private var opened: [String: SafetensorsFile] = [:]
    /// f16 weights widened to f32, owned here.
    private var widened: [UnsafeMutableRawPointer] = []

    public init(folder: String) throws {
        self.folder = folder
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
        tokenizerPath = ["tokenizer.model", "tokenizer.model.v1"].first(where: has).map(path)
    }

    deinit { widened.forEach { $0.deallocate() } }

    /// The tokenizer beside the weights, or an error saying it is missing.
    public func requireTokenizerPath() throws -> String {
        guard let p = tokenizerPath else { throw ModelLoadError.missingTokenizer(folder: folder) }
        return p
    }

    /// A weight matrix `[rows, cols]`, checked against the expected shape.
    func matrix(_ tensor: TensorName, rows: Int, cols: Int) throws -> Matrix {
        let name = layout.name(tensor)
        let (file, info) = try info(name)
        guard info.shape == [rows, cols] else {
            throw ModelLoadError.shapeMismatch(name: name, expected: [rows, cols], actual: info.shape)
        }
        guard let dtype = info.type.weightDType else {
            throw ModelLoadError.unsupportedDType(name: name, dtype: info.type.rawValue)
        }
        file.willNeed(info)
        let bytes = file.data(info)
        if dtype == .f16 {
            let out = UnsafeMutableRawPointer.allocate(byteCount: rows * cols * 4, alignment: 64)
            widened.append(out)
            let f = out.bindMemory(to: Float.self, capacity: rows * cols)
            for i in 0..<(rows * cols) {
                f[i] = Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
            }
            return Matrix(dtype: .f32, rows: rows, cols: cols, base: UnsafeRawPointer(out))
        }
        return Matrix(dtype: dtype, rows: rows, cols: cols, base: bytes.baseAddress!)
    }

    /// A small vector (norm weights) copied to float32.
    func vector(_ tensor: TensorName, count: Int) throws -> [Float] {
        let name = layout.name(tensor)
        let (file, info) = try info(name)
        guard info.shape == [count] else {
            throw ModelLoadError.shapeMismatch(name: name, expected: [count], actual: info.shape)
        }
        guard info.type.weightDType != nil else {
            throw ModelLoadError.unsupportedDType(name: name, dtype: info.type.rawValue)
        }
        return try file.floats(name)
    }

    /// The file holding a tensor and its header entry, without reading its data.
    func tensor(_ tensor: TensorName) throws -> (SafetensorsFile, TensorInfo) {
        try info(layout.name(tensor))
    }

    private func info(_ name: String) throws -> (SafetensorsFile, TensorInfo) {
        guard let fileName = fileOf[name] else { throw ModelLoadError.missingTensor(name: name, folder: folder) }
        let file = try open(fileName, for: name)
        guard let info = file.tensors[name] else { throw ModelLoadError.missingTensor(name: name, folder: folder) }
        return (file, info)
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
