import ShoalTensor

/// Which block type each tensor gets when a float checkpoint is quantized, by `shoal quantize`
/// or at load (`--quantize`). The mixes are llama.cpp's (`llama_tensor_get_type` for an
/// 8-expert model, as the fixtures' summary records them), so a file Shoal writes has the
/// tensor types of the same-named llama-quantize file.
public enum QuantizationMix: String, Sendable, CaseIterable {
    case q8_0, q6_K = "q6_k", q5_K_M = "q5_k_m", q5_K_S = "q5_k_s", q5_1, q5_0, q4_K_M = "q4_k_m", q4_K_S = "q4_k_s"
    case q4_1, q4_0
    case q3_K_L = "q3_k_l", q3_K_M = "q3_k_m", q3_K_S = "q3_k_s", q2_K = "q2_k"
    /// No quantization: every weight as bfloat16 (or float32).
    case bf16, f32

    /// The type most weights get.
    var base: DType {
        switch self {
        case .q8_0: return .q8_0
        case .q6_K: return .q6_K
        case .q5_K_M, .q5_K_S: return .q5_K
        case .q4_K_M, .q4_K_S: return .q4_K
        case .q5_1: return .q5_1
        case .q5_0: return .q5_0
        case .q4_1: return .q4_1
        case .q4_0: return .q4_0
        case .q3_K_L, .q3_K_M, .q3_K_S: return .q3_K
        case .q2_K: return .q2_K
        case .bf16: return .bf16
        case .f32: return .f32
        }
    }

    /// `general.file_type` (`enum llama_ftype`) of a file of this mix.
    public var fileType: UInt32 {
        switch self {
        case .f32: return 0
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        case .q2_K: return 10
        case .q3_K_S: return 11
        case .q3_K_M: return 12
        case .q3_K_L: return 13
        case .q4_K_S: return 14
        case .q4_K_M: return 15
        case .q5_K_S: return 16
        case .q5_K_M: return 17
        case .q6_K: return 18
        case .bf16: return 32
        }
    }

    /// The stored type of a weight matrix. Norms and routers are never quantized (they stay
    /// float32); `layers` is the model's layer count (several mixes give `ffn_down` more bits
    /// in some layers).
    func type(for tensor: TensorName, layers: Int) -> DType {
        guard base.isQuantized else { return base }
        switch tensor {
        case .finalNorm, .attentionNorm, .ffnNorm, .router: return .f32
        case .output: return self == .q8_0 ? .q8_0 : .q6_K
        case .wk, .wv: return .q8_0  // 8 experts: attn_k and attn_v get 8 bits in every mix
        case .wo:  // 8 experts: attn_output gets Q5_K in these mixes
            return [.q4_K_M, .q4_K_S, .q3_K_M, .q3_K_S, .q2_K].contains(self) ? .q5_K : base
        case let .expert(layer, _, w) where w == "w2":
            switch self {
            case .q4_K_M, .q5_K_M: return Self.usesMoreBits(layer, of: layers) ? .q6_K : base
            case .q4_K_S: return layer < layers / 8 ? .q5_K : base
            case .q3_K_M: return layer < layers / 16 ? .q5_K : .q4_K
            case .q3_K_L: return .q5_K
            case .q2_K: return .q3_K
            default: return base
            }
        case .embedding, .wq, .expert: return base
        }
    }

    /// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
    /// one between.
    static func usesMoreBits(_ layer: Int, of layers: Int) -> Bool {
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
    }
}
