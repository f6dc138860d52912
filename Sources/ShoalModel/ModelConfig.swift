import Foundation

/// The shape of a Mixtral-architecture model, whichever folder layout it came from.
public struct ModelConfig: Sendable, Equatable, Codable {
    public var dim: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    /// FFN hidden size of one expert.
    public var hiddenDim: Int
    public var vocabSize: Int
    public var experts: Int
    public var expertsPerToken: Int
    public var normEps: Float
    public var ropeTheta: Float
    /// The longest sequence (prompt + generated) the model accepts.
    public var maxContext: Int
    /// Attention looks back at most this many positions; nil means the whole context.
    public var slidingWindow: Int?
    public var bosId: Int
    public var eosId: Int
    public var tiedEmbeddings: Bool

    public init(dim: Int, layers: Int, heads: Int, kvHeads: Int, headDim: Int? = nil, hiddenDim: Int,
                vocabSize: Int, experts: Int = 8, expertsPerToken: Int = 2, normEps: Float = 1e-5,
                ropeTheta: Float = 1e6, maxContext: Int = 32768, slidingWindow: Int? = nil,
                bosId: Int = 1, eosId: Int = 2, tiedEmbeddings: Bool = false) {
        self.dim = dim; self.layers = layers; self.heads = heads; self.kvHeads = kvHeads
        self.headDim = headDim ?? dim / heads; self.hiddenDim = hiddenDim; self.vocabSize = vocabSize
        self.experts = experts; self.expertsPerToken = expertsPerToken; self.normEps = normEps
        self.ropeTheta = ropeTheta; self.maxContext = maxContext; self.slidingWindow = slidingWindow
        self.bosId = bosId; self.eosId = eosId; self.tiedEmbeddings = tiedEmbeddings
    }

    /// Bytes one position takes in a `KVCache`: keys and values of every layer, float32.
    public var kvCacheBytesPerPosition: Int { 2 * layers * kvHeads * headDim * MemoryLayout<Float>.size }

    /// Checks the numbers a forward pass relies on.
    public func validate(source: String) throws {
        func need(_ ok: Bool, _ what: String) throws {
            if !ok { throw ModelLoadError.badConfig(file: source, detail: what) }
        }
        try need(dim > 0 && layers > 0 && heads > 0 && kvHeads > 0 && headDim > 0 && hiddenDim > 0, "sizes must be positive")
        try need(heads % kvHeads == 0, "heads (\(heads)) must be a multiple of KV heads (\(kvHeads))")
        try need(headDim % 2 == 0, "head_dim (\(headDim)) must be even for RoPE")
        try need(vocabSize > 2, "vocab_size must be > 2")
        try need(experts > 0 && expertsPerToken > 0 && expertsPerToken <= experts,
                 "experts per token (\(expertsPerToken)) must be in 1...\(experts)")
        try need(maxContext > 0, "context length must be positive")
        try need(ropeTheta > 0 && normEps > 0, "rope_theta and norm eps must be positive")
    }
}

// MARK: - Hugging Face config.json

/// `config.json` as written by transformers 4.x (top-level `rope_theta`, `torch_dtype`) and
/// 5.x (`rope_parameters.rope_theta`, `dtype`).
struct HFConfig: Decodable {
    struct RopeParameters: Decodable { var rope_theta: Double? }
    var hidden_size: Int
    var num_hidden_layers: Int
    var num_attention_heads: Int
    var num_key_value_heads: Int?
    var head_dim: Int?
    var intermediate_size: Int
    var vocab_size: Int
    var num_local_experts: Int?
    var num_experts_per_tok: Int?
    var rms_norm_eps: Double?
    var rope_theta: Double?
    var rope_parameters: RopeParameters?
    var max_position_embeddings: Int?
    var sliding_window: Int?
    var bos_token_id: Int?
    var eos_token_id: Int?
    var tie_word_embeddings: Bool?
    var model_type: String?

    var modelConfig: ModelConfig {
        ModelConfig(
            dim: hidden_size, layers: num_hidden_layers, heads: num_attention_heads,
            kvHeads: num_key_value_heads ?? num_attention_heads, headDim: head_dim,
            hiddenDim: intermediate_size, vocabSize: vocab_size,
            experts: num_local_experts ?? 8, expertsPerToken: num_experts_per_tok ?? 2,
            normEps: Float(rms_norm_eps ?? 1e-5),
            ropeTheta: Float(rope_parameters?.rope_theta ?? rope_theta ?? 1e6),
            maxContext: max_position_embeddings ?? 32768, slidingWindow: sliding_window,
            bosId: bos_token_id ?? 1, eosId: eos_token_id ?? 2,
            tiedEmbeddings: tie_word_embeddings ?? false)
    }
}

// MARK: - Mistral params.json

/// `params.json` of a mistral-inference folder.
struct MistralParams: Decodable {
    struct MoE: Decodable { var num_experts: Int; var num_experts_per_tok: Int }
    var dim: Int
    var n_layers: Int
    var head_dim: Int?
    var hidden_dim: Int
    var n_heads: Int
    var n_kv_heads: Int?
    var norm_eps: Double?
    var vocab_size: Int
    var rope_theta: Double?
    var sliding_window: Int?
    var max_seq_len: Int?
    var max_position_embeddings: Int?
    var moe: MoE?

    var modelConfig: ModelConfig {
        ModelConfig(
            dim: dim, layers: n_layers, heads: n_heads, kvHeads: n_kv_heads ?? n_heads,
            headDim: head_dim, hiddenDim: hidden_dim, vocabSize: vocab_size,
            experts: moe?.num_experts ?? 1, expertsPerToken: moe?.num_experts_per_tok ?? 1,
            normEps: Float(norm_eps ?? 1e-5),
            // mistral-inference's default when params.json omits it.
            ropeTheta: Float(rope_theta ?? 1e4),
            maxContext: max_seq_len ?? max_position_embeddings ?? 32768, slidingWindow: sliding_window)
    }
}
