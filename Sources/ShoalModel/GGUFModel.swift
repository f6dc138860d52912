import ShoalTensor
import ShoalTokenizer

/// What a llama.cpp GGUF file means as a Mixtral: tensor names (`llama.cpp`'s `LLM_ARCH_LLAMA`
/// with experts), the config from its metadata, and its tokenizer. docs/gguf.md lists the keys.
enum GGUFNames {
    /// The tensor's name in a GGUF file; `merged` picks `blk.N.ffn_gate_exps.weight` over the
    /// December 2023 per-expert `blk.N.ffn_gate.E.weight`.
    static func name(_ tensor: TensorName, merged: Bool) -> String {
        switch tensor {
        case .embedding: return "token_embd.weight"
        case .output: return "output.weight"
        case .finalNorm: return "output_norm.weight"
        case let .attentionNorm(l): return "blk.\(l).attn_norm.weight"
        case let .ffnNorm(l): return "blk.\(l).ffn_norm.weight"
        case let .wq(l): return "blk.\(l).attn_q.weight"
        case let .wk(l): return "blk.\(l).attn_k.weight"
        case let .wv(l): return "blk.\(l).attn_v.weight"
        case let .wo(l): return "blk.\(l).attn_output.weight"
        case let .router(l): return "blk.\(l).ffn_gate_inp.weight"
        case let .expert(l, e, w):
            let role = ["w1": "gate", "w2": "down", "w3": "up"][w]!
            return merged ? "blk.\(l).ffn_\(role)_exps.weight" : "blk.\(l).ffn_\(role).\(e).weight"
        }
    }

    /// A tensor of `file`: a whole record, or expert E's matrix inside a merged expert tensor
    /// (`[n_expert][out][in]`: bytes `[E·out·rowBytes, (E+1)·out·rowBytes)`).
    static func stored(_ tensor: TensorName, in file: GGUFModelFiles) throws -> StoredTensor {
        if case let .expert(_, e, _) = tensor {
            let mergedName = name(tensor, merged: true)
            if let t = file.tensors[mergedName] {
                guard t.dims.count == 3, e < t.dims[2] else {
                    throw ModelLoadError.shapeMismatch(name: mergedName, expected: [e + 1], actual: t.shape)
                }
                let matrixBytes = t.byteCount / t.dims[2]
                let slice = UnsafeRawBufferPointer(rebasing: file.data(t)[(e * matrixBytes)..<((e + 1) * matrixBytes)])
                return StoredTensor(name: "\(mergedName)[expert \(e)]", typeName: t.type.rawValue, dtype: t.type,
                                    shape: [t.dims[1], t.dims[0]], bytes: slice)
            }
        }
        let n = name(tensor, merged: false)
        guard let t = file.tensors[n] else {
            let wanted = if case .expert = tensor { "\(name(tensor, merged: true)) (or the per-expert \(n))" } else { n }
            throw ModelLoadError.missingTensor(name: wanted, folder: file.path)
        }
        return StoredTensor(name: n, typeName: t.type.rawValue, dtype: t.type, shape: t.shape, bytes: file.data(t))
    }

    /// The model's shape from `llama.*` metadata. Keys some files lack are derived as llama.cpp
    /// does: head_dim from embedding_length / head_count, the vocabulary from the token list.
    static func config(_ file: GGUFModelFiles) throws -> ModelConfig {
        func fail(_ detail: String) -> ModelLoadError { .badConfig(file: file.path, detail: detail) }
        guard let arch = file["general.architecture"]?.string else { throw fail("no general.architecture") }
        guard arch == "llama" else {
            throw fail("general.architecture is \(arch); Shoal runs llama-architecture files with experts (Mixtral)")
        }
        func int(_ key: String) throws -> Int? {
            guard let v = file["\(arch).\(key)"] else { return nil }
            guard let i = v.int else { throw fail("\(arch).\(key) is not a non-negative integer") }
            return i
        }
        func require(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw fail("missing key \(arch).\(key)") }
            return v
        }
        func float(_ key: String) throws -> Double? {
            guard let v = file["\(arch).\(key)"] else { return nil }
            guard let d = v.double else { throw fail("\(arch).\(key) is not a number") }
            return d
        }
        let experts = try int("expert_count") ?? 0
        guard experts > 0 else { throw fail("\(arch).expert_count is absent or 0: a dense model, not a mixture of experts") }
        let dim = try require("embedding_length"), heads = try require("attention.head_count")
        guard heads > 0 else { throw fail("\(arch).attention.head_count is 0") }
        let headDim = try int("attention.key_length") ?? dim / heads
        if let v = try int("attention.value_length"), v != headDim {
            throw fail("\(arch).attention.value_length \(v) differs from key_length \(headDim)")
        }
        if let rot = try int("rope.dimension_count"), rot != headDim {
            throw fail("\(arch).rope.dimension_count \(rot) rotates part of each head; Shoal rotates all \(headDim)")
        }
        if let scaling = file["\(arch).rope.scaling.type"]?.string, scaling != "none" {
            throw fail("\(arch).rope.scaling.type is \(scaling); Shoal has no RoPE scaling")
        }
        let vocab = try int("vocab_size") ?? file["tokenizer.ggml.tokens"]?.array?.count
            ?? file.tensors["token_embd.weight"].map { $0.dims.count == 2 ? $0.dims[1] : 0 } ?? 0
        return ModelConfig(
            dim: dim, layers: try require("block_count"), heads: heads,
            kvHeads: try int("attention.head_count_kv") ?? heads, headDim: headDim,
            hiddenDim: try require("feed_forward_length"), vocabSize: vocab,
            experts: experts, expertsPerToken: try require("expert_used_count"),
            // Stored as float32: Float(Double(f32)) gives back the same float.
            normEps: Float(try float("attention.layer_norm_rms_epsilon") ?? 1e-5),
            ropeTheta: Float(try float("rope.freq_base") ?? 10_000),
            maxContext: try int("context_length") ?? 4096,
            bosId: file["tokenizer.ggml.bos_token_id"]?.int ?? 1,
            eosId: file["tokenizer.ggml.eos_token_id"]?.int ?? 2,
            tiedEmbeddings: file.tensors["output.weight"] == nil)
    }

    /// The SentencePiece tokenizer of `tokenizer.ggml.model = llama`.
    static func tokenizer(_ file: GGUFModelFiles) throws -> SentencePieceTokenizer {
        func fail(_ detail: String) -> ModelLoadError { .badConfig(file: file.path, detail: detail) }
        guard let model = file["tokenizer.ggml.model"]?.string else { throw fail("no tokenizer.ggml.model") }
        guard model == "llama" else {
            throw fail("tokenizer.ggml.model is \(model); Shoal reads the SentencePiece vocabulary (llama)")
        }
        guard let tokens = file["tokenizer.ggml.tokens"]?.array?.map(\.string), !tokens.contains(nil) else {
            throw fail("tokenizer.ggml.tokens is not an array of strings")
        }
        let n = tokens.count
        guard let scores = file["tokenizer.ggml.scores"]?.array?.compactMap(\.double), scores.count == n else {
            throw fail("tokenizer.ggml.scores is not \(n) numbers")
        }
        guard let types = file["tokenizer.ggml.token_type"]?.array?.compactMap({ v -> Int? in
            if case let .signed(i) = v { return Int(i) }
            return v.int
        }), types.count == n else {
            throw fail("tokenizer.ggml.token_type is not \(n) integers")
        }
        return try SentencePieceTokenizer(
            llamaVocabulary: tokens.map { $0! }, scores: scores.map { Float($0) }, types: types,
            bosId: file["tokenizer.ggml.bos_token_id"]?.int ?? -1,
            eosId: file["tokenizer.ggml.eos_token_id"]?.int ?? -1,
            addDummyPrefix: file["tokenizer.ggml.add_space_prefix"]?.bool ?? true)
    }
}
