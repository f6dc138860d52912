// The plain reference of ggml's block formats (`ggml-common.h` structs, `dequantize_row_*` in
// `ggml-quants.c`): the oracle the C kernels' dequantization is tested against, bit for bit.

/// Reads single weights out of ggml quantization blocks, computing each one as ggml's
/// `dequantize_row_*` does, in the same float32 order.
public enum BlockFormat {
    /// Weight `index` (`0..<dtype.blockWeights`) of one block of a quantized `dtype`.
    public static func weight(_ dtype: DType, block b: UnsafeRawBufferPointer, index j: Int) -> Float {
        precondition(dtype.isQuantized && b.count >= dtype.blockBytes && (0..<dtype.blockWeights).contains(j))
        switch dtype {
        case .q8_0:  // d, int8 qs[32]
            return Float(Int8(bitPattern: b[2 + j])) * half(b, 0)
        case .q4_0:  // d, qs[16]: weight j < 16 is the low nibble of qs[j], j + 16 its high nibble
            let q = j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4
            return Float(Int(q) - 8) * half(b, 0)
        case .q4_1:  // d, m, qs[16] as Q4_0's; weight d·q + m
            let q = j < 16 ? b[4 + j] & 15 : b[4 + j - 16] >> 4
            return Float(q) * half(b, 0) + half(b, 2)
        case .q5_0, .q5_1:  // d, (m,) qh: bit j is weight j's fifth bit, qs[16] as Q4_0's
            let at = dtype == .q5_0 ? 2 : 4
            let qh = (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * $1) }
            let low = j < 16 ? b[at + 4 + j] & 15 : b[at + 4 + j - 16] >> 4
            let q = Int(low) | Int((qh >> UInt32(j)) & 1) << 4
            return dtype == .q5_0 ? Float(q - 16) * half(b, 0) : Float(q) * half(b, 0) + half(b, 2)
        case .q2_K:  // scales[16], qs[64], d, dmin
            let (half128, plane, l) = (j / 128, (j % 128) / 32, j % 32)
            let scale = b[8 * half128 + 2 * plane + l / 16]
            let q = (b[16 + 32 * half128 + l] >> UInt8(2 * plane)) & 3
            return half(b, 80) * Float(scale & 15) * Float(q) - half(b, 82) * Float(scale >> 4)
        case .q3_K:  // hmask[32], qs[64], scales[12], d
            let (half128, plane, l) = (j / 128, (j % 128) / 32, j % 32)
            let q = Int((b[32 + 32 * half128 + l] >> UInt8(2 * plane)) & 3)
            let high = (b[l] >> UInt8(4 * half128 + plane)) & 1
            return half(b, 108) * Float(q3KScale(b, 8 * half128 + 2 * plane + l / 16)) * Float(high == 1 ? q : q - 4)
        case .q4_K:  // d, dmin, scales[12], qs[128]
            let (d1, m1) = scaleAndMin(b, subBlock: j / 32)
            let q = b[16 + 32 * (j / 64) + j % 32]
            return d1 * Float((j / 32) % 2 == 0 ? q & 15 : q >> 4) - m1
        case .q5_K:  // d, dmin, scales[12], qh[32], qs[128]
            let (d1, m1) = scaleAndMin(b, subBlock: j / 32)
            let q = b[48 + 32 * (j / 64) + j % 32]
            let low = (j / 32) % 2 == 0 ? q & 15 : q >> 4
            let fifth = (b[16 + j % 32] >> UInt8(j / 32)) & 1
            return d1 * Float(low | fifth << 4) - m1
        case .q6_K:  // ql[128], qh[64], int8 scales[16], d
            let half128 = j / 128, quarter = (j % 128) / 32, l = j % 32
            let low = b[64 * half128 + 32 * (quarter & 1) + l]
            let nibble = quarter >= 2 ? low >> 4 : low & 15
            let top = (b[128 + 32 * half128 + l] >> UInt8(2 * quarter)) & 3
            let q = Int(nibble | top << 4) - 32
            let scale = Float(Int8(bitPattern: b[192 + 8 * half128 + l / 16 + 2 * quarter]))
            return half(b, 208) * scale * Float(q)
        case .f32, .bf16, .f16:
            preconditionFailure("\(dtype) is not a block format")
        }
    }

    /// An IEEE binary16 at `offset`, widened exactly.
    static func half(_ b: UnsafeRawBufferPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(b[offset]) | UInt16(b[offset + 1]) << 8))
    }

    /// Scale `j` (of 16) of a Q3_K block, whose 6-bit values are packed in the 12 bytes at
    /// offset 96 (ggml's `dequantize_row_q3_K` unpacks them with `kmask1`/`kmask2`): the low
    /// nibble of byte `j` (j < 8) or the high nibble of byte `j − 8`, under bits `2·(j/4)` and
    /// `2·(j/4) + 1` of byte `8 + j % 4`; minus 32.
    static func q3KScale(_ b: UnsafeRawBufferPointer, _ j: Int) -> Int {
        let s = { (i: Int) in Int(b[96 + i]) }
        let low = j < 8 ? s(j) & 15 : s(j - 8) >> 4
        let top = (s(8 + j % 4) >> (2 * (j / 4))) & 3
        return (low | top << 4) - 32
    }

    /// `d · scale` and `dmin · min` of sub-block `j` of a Q4_K / Q5_K block, whose 6-bit scales
    /// and mins are packed in the 12 bytes at offset 4 (ggml's `get_scale_min_k4`).
    static func scaleAndMin(_ b: UnsafeRawBufferPointer, subBlock j: Int) -> (Float, Float) {
        let q = { (i: Int) in b[4 + i] }
        let sc, m: UInt8
        if j < 4 {
            sc = q(j) & 63
            m = q(j + 4) & 63
        } else {
            sc = (q(j + 4) & 0xF) | ((q(j - 4) >> 6) << 4)
            m = (q(j + 4) >> 4) | ((q(j) >> 6) << 4)
        }
        return (half(b, 0) * Float(sc), half(b, 2) * Float(m))
    }
}
