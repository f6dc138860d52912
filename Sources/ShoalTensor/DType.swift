/// The element types Shoal reads from checkpoints and keeps in memory.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case bf16 = "BF16"
    case f16 = "F16"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        }
    }
}

/// bfloat16 is the upper half of a float32: widening is a shift, narrowing rounds to nearest even.
@inline(__always)
public func bf16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

@inline(__always)
public func floatToBF16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
    let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
}
