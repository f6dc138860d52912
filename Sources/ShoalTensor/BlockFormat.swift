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
