import CShoalKernels

/// The element types Shoal reads from checkpoints and keeps in memory: floats, and ggml's block
/// formats, in which `blockWeights` consecutive weights of a row share one block of
/// `blockBytes` bytes (scales and quantized values; `ggml-common.h`).
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case bf16 = "BF16"
    case f16 = "F16"
    case q8_0 = "Q8_0"
    case q4_0 = "Q4_0"
    case q4_1 = "Q4_1"
    case q5_0 = "Q5_0"
    case q5_1 = "Q5_1"
    case q2_K = "Q2_K"
    case q3_K = "Q3_K"
    case q4_K = "Q4_K"
    case q5_K = "Q5_K"
    case q6_K = "Q6_K"

    /// Weights per block: 1 for the float types, 32 for Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1, 256
    /// for the K-quants.
    public var blockWeights: Int {
        switch self {
        case .f32, .bf16, .f16: return 1
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: return 256
        }
    }

    /// Bytes per block (per weight for the float types).
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        case .q8_0: return 34
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        }
    }

    /// Whether weights are stored in blocks with shared scales (Q8_0 and below).
    public var isQuantized: Bool { blockWeights > 1 }

    /// Bytes of a row of `cols` weights; `cols` must be a whole number of blocks.
    public func rowBytes(_ cols: Int) -> Int { cols / blockWeights * blockBytes }

    /// The kernels' code for this type (`SHOAL_W_*`); f16 is widened to f32 at load.
    var kernelType: Int32 {
        switch self {
        case .f32: return Int32(SHOAL_W_F32)
        case .bf16: return Int32(SHOAL_W_BF16)
        case .f16: preconditionFailure("f16 weights are widened to f32 at load")
        case .q8_0: return Int32(SHOAL_W_Q8_0)
        case .q4_0: return Int32(SHOAL_W_Q4_0)
        case .q4_1: return Int32(SHOAL_W_Q4_1)
        case .q5_0: return Int32(SHOAL_W_Q5_0)
        case .q5_1: return Int32(SHOAL_W_Q5_1)
        case .q2_K: return Int32(SHOAL_W_Q2_K)
        case .q3_K: return Int32(SHOAL_W_Q3_K)
        case .q4_K: return Int32(SHOAL_W_Q4_K)
        case .q5_K: return Int32(SHOAL_W_Q5_K)
        case .q6_K: return Int32(SHOAL_W_Q6_K)
        }
    }
}

/// The `Float` that bf16 bits stand for: bfloat16 is the upper half of a float32, so widening is
/// a shift, and exact.
@inline(__always)
public func bf16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// bf16 bits of `value`, rounded to nearest even: the one narrowing used for weights and for
/// activations on the wire.
///
/// Adding 0x7FFF plus the lowest kept bit, then truncating, is round-to-nearest-even on the
/// binary32 bit pattern; a carry out of the mantissa correctly bumps the exponent, up to
/// infinity. NaN skips the rounding (it could carry a NaN into infinity) and keeps its sign
/// with the quiet bit set, so a truncated payload never turns it into infinity.
@inline(__always)
public func floatToBF16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
    let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
}
