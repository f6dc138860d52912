// Float32 rows to ggml blocks, following llama.cpp's reference quantizers
// (`quantize_row_*_ref`, `make_qkx2_quants`, `make_qx_quants` in ggml-quants.c): the same
// block layouts (see `BlockFormat`) and the same search for scales, so a file Shoal writes
// reads in llama.cpp and its error is what llama-quantize's would be without an imatrix.

/// Quantizes rows of float32 weights into ggml blocks.
public enum Quantizer {
    /// Writes `x[0..<n]` (n a multiple of `dtype.blockWeights`) as `n / blockWeights` blocks of
    /// `dtype` at `out`. Float types are stored as they are (bf16 rounded to nearest even).
    public static func quantize(_ dtype: DType, _ x: UnsafePointer<Float>, count n: Int,
                                into out: UnsafeMutableRawPointer) {
        precondition(n % dtype.blockWeights == 0, "\(n) weights are not whole \(dtype) blocks")
        let blocks = n / dtype.blockWeights
        // Scratch for the K-quant searches, made once per call (a row is thousands of blocks).
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { scratch.deallocate() }
        for b in 0..<blocks {
            let xb = x + b * dtype.blockWeights, yb = out + b * dtype.blockBytes
            switch dtype {
            case .f32: yb.storeBytes(of: xb[0], as: Float.self)
            case .bf16: yb.storeBytes(of: floatToBF16(xb[0]), as: UInt16.self)
            case .f16: yb.storeBytes(of: Float16(xb[0]).bitPattern, as: UInt16.self)
            case .q8_0: q8_0(xb, yb)
            case .q4_0: q4_0(xb, yb)
            case .q4_1: q4_1(xb, yb)
            case .q5_0: q5_0(xb, yb)
            case .q5_1: q5_1(xb, yb)
            case .q2_K: q2_K(xb, yb, scratch: scratch)
            case .q3_K: q3_K(xb, yb, scratch: scratch)
            case .q4_K: kQuant(xb, yb, fifthBit: false, scratch: scratch)
            case .q5_K: kQuant(xb, yb, fifthBit: true, scratch: scratch)
            case .q6_K: q6_K(xb, yb, scratch: scratch)
            }
        }
    }

    // MARK: - 32-weight blocks

    static func q8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127, id = d != 0 ? 1 / d : 0
        y.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
        for j in 0..<32 { y.storeBytes(of: Int8(clamping: integer(x[j] * id, .toNearestOrAwayFromZero)), toByteOffset: 2 + j, as: Int8.self) }
    }

    static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (_, signedMax) = largestMagnitude(x, count: 32)
        let d = signedMax / -8, id = d != 0 ? 1 / d : 0
        y.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
        func level(_ v: Float) -> UInt8 { UInt8(max(0, min(15, integer(v * id + 8.5, .towardZero)))) }
        for j in 0..<16 { y.storeBytes(of: level(x[j]) | level(x[16 + j]) << 4, toByteOffset: 2 + j, as: UInt8.self) }
    }

    /// `quantize_row_q4_1_ref`: levels 0...15 from the block's minimum, weight d·q + m.
    static func q4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (d, m) = minAndStep(x, levels: 15, into: y)
        let id = d != 0 ? 1 / d : 0
        func level(_ v: Float) -> UInt8 { UInt8(max(0, min(15, integer((v - m) * id + 0.5, .towardZero)))) }
        for j in 0..<16 { y.storeBytes(of: level(x[j]) | level(x[16 + j]) << 4, toByteOffset: 4 + j, as: UInt8.self) }
    }

    /// `quantize_row_q5_0_ref`: Q4_0's scheme with 32 levels, the fifth bits gathered in `qh`.
    static func q5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (_, signedMax) = largestMagnitude(x, count: 32)
        let d = signedMax / -16, id = d != 0 ? 1 / d : 0
        y.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
        storeFiveBits({ UInt8(max(0, min(31, integer(x[$0] * id + 16.5, .towardZero)))) }, at: y + 2)
    }

    /// `quantize_row_q5_1_ref`: Q4_1's scheme with 32 levels.
    static func q5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (d, m) = minAndStep(x, levels: 31, into: y)
        let id = d != 0 ? 1 / d : 0
        storeFiveBits({ UInt8(max(0, min(31, integer((x[$0] - m) * id + 0.5, .towardZero)))) }, at: y + 4)
    }

    /// A 32-weight block's minimum and step for `levels` steps up to its maximum, stored as
    /// binary16 `d` then `m` at `y`; the step is computed in float32 before either is rounded.
    private static func minAndStep(_ x: UnsafePointer<Float>, levels: Float, into y: UnsafeMutableRawPointer) -> (Float, Float) {
        var lo = Float.greatestFiniteMagnitude, hi = -Float.greatestFiniteMagnitude
        for j in 0..<32 { lo = min(lo, x[j]); hi = max(hi, x[j]) }
        let d = (hi - lo) / levels
        y.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
        y.storeBytes(of: Float16(lo).bitPattern, toByteOffset: 2, as: UInt16.self)
        return (d, lo)
    }

    /// The 5-bit levels of weights 0..<32 as Q5_0 / Q5_1 store them at `y`: `qh` (bit j the
    /// fifth bit of weight j), then 16 bytes of low nibbles (weight j and j + 16 in byte j).
    private static func storeFiveBits(_ level: (Int) -> UInt8, at y: UnsafeMutableRawPointer) {
        var qh: UInt32 = 0
        for j in 0..<16 {
            let a = level(j), b = level(16 + j)
            y.storeBytes(of: (a & 15) | (b & 15) << 4, toByteOffset: 4 + j, as: UInt8.self)
            qh |= UInt32(a >> 4) << UInt32(j) | UInt32(b >> 4) << UInt32(16 + j)
        }
        y.storeBytes(of: qh, as: UInt32.self)
    }

    // MARK: - 256-weight K-quants

    /// Q4_K (4-bit) or Q5_K (5-bit): 8 sub-blocks of 32, each with a 6-bit scale and min
    /// relative to the block's `d` and `dmin`.
    static func kQuant(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, fifthBit: Bool,
                       scratch: UnsafeMutableRawPointer) {
        let nmax = fifthBit ? 31 : 15
        // scratch: levels L[256], aux[32], then floats scales[8], mins[8], weights[32], then packed[12].
        let L = scratch.assumingMemoryBound(to: UInt8.self), aux = L + 256
        let scales = (scratch + 512).assumingMemoryBound(to: Float.self), mins = scales + 8, weights = scales + 16
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<8 {
            let xs = x + 32 * j
            var sumX2: Float = 0
            for l in 0..<32 { sumX2 += xs[l] * xs[l] }
            let av = (sumX2 / 32).squareRoot()
            for l in 0..<32 { weights[l] = av + abs(xs[l]) }
            (scales[j], mins[j]) = makeQKX2(xs, weights, nmax: nmax, into: L + 32 * j, aux: aux,
                                            rmin: fifthBit ? -0.5 : -1, rdelta: 0.1, steps: fifthBit ? 15 : 20)
            maxScale = max(maxScale, scales[j])
            maxMin = max(maxMin, mins[j])
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0, invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        let packed = (scratch + 1024).assumingMemoryBound(to: UInt8.self)  // the 12 bytes of scales and mins
        packed.initialize(repeating: 0, count: 12)
        for j in 0..<8 {
            // as C's `uint8_t ls = nearest_int(…); ls = MIN(63, ls)`: a negative level wraps
            let ls = min(63, UInt8(truncatingIfNeeded: nearest(invScale * scales[j])))
            let lm = min(63, UInt8(truncatingIfNeeded: nearest(invMin * mins[j])))
            if j < 4 {
                packed[j] = ls
                packed[j + 4] = lm
            } else {
                packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                packed[j - 4] |= (ls >> 4) << 6
                packed[j] |= (lm >> 4) << 6
            }
        }
        let d = Float16(maxScale / 63), dmin = Float16(maxMin / 63)
        y.storeBytes(of: d.bitPattern, as: UInt16.self)
        y.storeBytes(of: dmin.bitPattern, toByteOffset: 2, as: UInt16.self)
        for i in 0..<12 { y.storeBytes(of: packed[i], toByteOffset: 4 + i, as: UInt8.self) }
        // Levels again against the rounded scales actually stored.
        let header = UnsafeRawBufferPointer(start: y, count: 16)
        for j in 0..<8 {
            let (sd, sm) = BlockFormat.scaleAndMin(header, subBlock: j)
            guard sd != 0 else { continue }
            for ii in 0..<32 {
                L[32 * j + ii] = UInt8(max(0, min(nmax, nearest((x[32 * j + ii] + sm) / sd))))
            }
        }
        if fifthBit {
            let qh = y + 16, ql = y + 48
            for i in 0..<32 { qh.storeBytes(of: 0, toByteOffset: i, as: UInt8.self) }
            for c in 0..<4 {
                for l in 0..<32 {
                    var l1 = L[64 * c + l], l2 = L[64 * c + 32 + l]
                    var h = qh.load(fromByteOffset: l, as: UInt8.self)
                    if l1 > 15 { l1 -= 16; h |= 1 << (2 * c) }
                    if l2 > 15 { l2 -= 16; h |= 2 << (2 * c) }
                    qh.storeBytes(of: h, toByteOffset: l, as: UInt8.self)
                    ql.storeBytes(of: l1 | l2 << 4, toByteOffset: 32 * c + l, as: UInt8.self)
                }
            }
        } else {
            for c in 0..<4 {
                for l in 0..<32 {
                    (y + 16).storeBytes(of: L[64 * c + l] | L[64 * c + 32 + l] << 4, toByteOffset: 32 * c + l, as: UInt8.self)
                }
            }
        }
    }

    /// Q2_K (`quantize_row_q2_K_ref`): 16 sub-blocks of 16 at levels 0...3, each with a 4-bit
    /// scale and min relative to the block's `d` and `dmin`, searched on the absolute error
    /// weighted by |x|.
    static func q2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, scratch: UnsafeMutableRawPointer) {
        // scratch: levels L[256], aux[32], then floats scales[16], mins[16], weights[16].
        let L = scratch.assumingMemoryBound(to: UInt8.self), aux = L + 256
        let scales = (scratch + 512).assumingMemoryBound(to: Float.self), mins = scales + 16, weights = scales + 32
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<16 {
            let xs = x + 16 * j
            for l in 0..<16 { weights[l] = abs(xs[l]) }
            (scales[j], mins[j]) = makeQKX2(xs, weights, count: 16, nmax: 3, into: L + 16 * j, aux: aux,
                                            rmin: -0.5, rdelta: 0.1, steps: 15, absolute: true)
            maxScale = max(maxScale, scales[j])
            maxMin = max(maxMin, mins[j])
        }
        let packed = y.assumingMemoryBound(to: UInt8.self)  // scales[16]: scale j low, min j high
        let invScale: Float = maxScale > 0 ? 15 / maxScale : 0, invMin: Float = maxMin > 0 ? 15 / maxMin : 0
        for j in 0..<16 {
            // both searches give scales and mins >= 0; clamping keeps a stray negative at 0
            packed[j] = UInt8(clamping: min(15, nearest(invScale * scales[j])))
                | UInt8(clamping: min(15, nearest(invMin * mins[j]))) << 4
        }
        let d = Float16(maxScale / 15), dmin = Float16(maxMin / 15)
        y.storeBytes(of: d.bitPattern, toByteOffset: 80, as: UInt16.self)
        y.storeBytes(of: dmin.bitPattern, toByteOffset: 82, as: UInt16.self)
        // Levels again against the rounded scales actually stored.
        for j in 0..<16 {
            let sd = Float(d) * Float(packed[j] & 15)
            guard sd != 0 else { continue }
            let sm = Float(dmin) * Float(packed[j] >> 4)
            for ii in 0..<16 { L[16 * j + ii] = UInt8(max(0, min(3, nearest((x[16 * j + ii] + sm) / sd)))) }
        }
        packTwoBitPlanes(L, into: y + 16)
    }

    /// Q3_K (`quantize_row_q3_K_ref`): 16 sub-blocks of 16 at levels −4...3, each with a 6-bit
    /// signed scale relative to the block's `d`; the levels' third bits go to `hmask`.
    static func q3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, scratch: UnsafeMutableRawPointer) {
        // scratch: levels L[256] (0...7), then floats scales[16].
        let L = scratch.assumingMemoryBound(to: UInt8.self), scales = (scratch + 256).assumingMemoryBound(to: Float.self)
        var maxScale: Float = 0, maxAbsScale: Float = 0
        for j in 0..<16 {
            scales[j] = makeQ3(x + 16 * j, nmax: 4, into: L + 16 * j)
            if abs(scales[j]) > maxAbsScale { maxAbsScale = abs(scales[j]); maxScale = scales[j] }
        }
        let bytes = y.assumingMemoryBound(to: UInt8.self)
        bytes.initialize(repeating: 0, count: 110)
        let sc = bytes + 96  // 16 six-bit scales + 32, packed as BlockFormat.q3KScale reads them
        var d: Float16 = 0
        if maxScale != 0 {
            let iscale = -32 / maxScale
            for j in 0..<16 {
                let l = max(-32, min(31, nearest(iscale * scales[j]))) + 32
                if j < 8 { sc[j] = UInt8(l & 15) } else { sc[j - 8] |= UInt8(l & 15) << 4 }
                sc[8 + j % 4] |= UInt8(l >> 4) << UInt8(2 * (j / 4))
            }
            d = Float16(1 / iscale)
        }
        y.storeBytes(of: d.bitPattern, toByteOffset: 108, as: UInt16.self)
        let header = UnsafeRawBufferPointer(start: y, count: 110)
        for j in 0..<16 {
            let sd = Float(d) * Float(BlockFormat.q3KScale(header, j))
            guard sd != 0 else { continue }
            for ii in 0..<16 { L[16 * j + ii] = UInt8(max(-4, min(3, nearest(x[16 * j + ii] / sd))) + 4) }
        }
        for j in 0..<256 where L[j] > 3 {  // weight j's third bit: bit j / 32 of hmask[j % 32]
            bytes[j % 32] |= 1 << UInt8(j / 32)
            L[j] -= 4
        }
        packTwoBitPlanes(L, into: y + 32)
    }

    /// 256 two-bit levels as Q2_K and Q3_K store them: in each half of 128, byte l holds the
    /// levels of weights l, l + 32, l + 64 and l + 96 from its low bits up.
    private static func packTwoBitPlanes(_ L: UnsafePointer<UInt8>, into q: UnsafeMutableRawPointer) {
        for h in 0..<2 {
            for l in 0..<32 {
                let at = 128 * h + l
                q.storeBytes(of: L[at] | L[at + 32] << 2 | L[at + 64] << 4 | L[at + 96] << 6, toByteOffset: 32 * h + l,
                             as: UInt8.self)
            }
        }
    }

    /// Q6_K: 16 sub-blocks of 16, each with an int8 scale relative to the block's `d`.
    static func q6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, scratch: UnsafeMutableRawPointer) {
        // scratch: levels[256], then floats scales[16].
        let levels = scratch.assumingMemoryBound(to: UInt8.self), scales = (scratch + 256).assumingMemoryBound(to: Float.self)
        var maxScale: Float = 0, maxAbsScale: Float = 0
        for ib in 0..<16 {
            scales[ib] = makeQX(x + 16 * ib, nmax: 32)
            if abs(scales[ib]) > maxAbsScale { maxAbsScale = abs(scales[ib]); maxScale = scales[ib] }
        }
        for i in 0..<210 { y.storeBytes(of: 0, toByteOffset: i, as: UInt8.self) }
        guard maxAbsScale >= 1e-15 else { return }
        let iscale = -128 / maxScale
        let d = Float16(1 / iscale)
        y.storeBytes(of: d.bitPattern, toByteOffset: 208, as: UInt16.self)
        levels.initialize(repeating: 32, count: 256)
        for ib in 0..<16 {
            let s = Int8(clamping: min(127, nearest(iscale * scales[ib])))
            y.storeBytes(of: s, toByteOffset: 192 + ib, as: Int8.self)
            let sd = Float(d) * Float(s)
            guard sd != 0 else { continue }
            for ii in 0..<16 {
                levels[16 * ib + ii] = UInt8(max(-32, min(31, nearest(x[16 * ib + ii] / sd))) + 32)
            }
        }
        for h in 0..<2 {
            let Lh = 128 * h
            for l in 0..<32 {
                let q1 = levels[Lh + l], q2 = levels[Lh + l + 32], q3 = levels[Lh + l + 64], q4 = levels[Lh + l + 96]
                y.storeBytes(of: (q1 & 0xF) | (q3 & 0xF) << 4, toByteOffset: 64 * h + l, as: UInt8.self)
                y.storeBytes(of: (q2 & 0xF) | (q4 & 0xF) << 4, toByteOffset: 64 * h + l + 32, as: UInt8.self)
                let high = (q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6
                y.storeBytes(of: high, toByteOffset: 128 + 32 * h + l, as: UInt8.self)
            }
        }
    }

    // MARK: - Scale searches

    /// The largest |x[i]| and the x[i] it belongs to (the first of equals), as ggml's symmetric
    /// quantizers find their scale's sign.
    static func largestMagnitude(_ x: UnsafePointer<Float>, count n: Int) -> (Float, Float) {
        var amax: Float = 0, signedMax: Float = 0
        for i in 0..<n where abs(x[i]) > amax { amax = abs(x[i]); signedMax = x[i] }
        return (amax, signedMax)
    }

    /// ggml's `nearest_int`: round half to even.
    @inline(__always)
    static func nearest(_ v: Float) -> Int { integer(v, .toNearestOrEven) }

    /// `v` rounded by `rule` to an integer, for every float: ggml's C conversions give the same
    /// for |v| < 2^22 (every level of a block whose scale a float holds); past that, and for
    /// NaN, where C's are undefined, it clamps, NaN giving 0. A block of subnormal weights has
    /// a scale whose inverse is infinite, so its levels are ±inf or NaN (0·inf); its binary16
    /// scale is 0, so whatever level is stored dequantizes to 0, as llama.cpp's does.
    @inline(__always)
    static func integer(_ v: Float, _ rule: FloatingPointRoundingRule) -> Int {
        v.isNaN ? 0 : Int(min(max(v, -0x1p22), 0x1p22).rounded(rule))
    }

    /// `make_qkx2_quants`: levels 0...nmax for `n` weights with a scale and a (non-positive)
    /// offset minimising the weighted squared error (or, `absolute`, the weighted absolute
    /// error: Q2_K's `use_mad`), trying `steps + 1` scales around the range's own. Returns
    /// (scale, -offset).
    static func makeQKX2(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, count n: Int = 32, nmax: Int,
                         into L: UnsafeMutablePointer<UInt8>, aux: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float,
                         steps: Int, absolute: Bool = false) -> (Float, Float) {
        func cost(_ diff: Float) -> Float { absolute ? abs(diff) : diff * diff }
        var lo = x[0], hi = x[0], sumW = w[0], sumX = w[0] * x[0]
        for i in 1..<n {
            lo = min(lo, x[i]); hi = max(hi, x[i])
            sumW += w[i]; sumX += w[i] * x[i]
        }
        if lo > 0 { lo = 0 }
        if hi == lo {
            for i in 0..<n { L[i] = 0 }
            return (0, -lo)
        }
        var iscale = Float(nmax) / (hi - lo), scale = 1 / iscale, bestError: Float = 0
        for i in 0..<n {
            let l = max(0, min(nmax, nearest(iscale * (x[i] - lo))))
            L[i] = UInt8(l)
            bestError += w[i] * cost(scale * Float(l) + lo - x[i])
        }
        for step in 0...steps {
            iscale = (rmin + rdelta * Float(step) + Float(nmax)) / (hi - lo)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = max(0, min(nmax, nearest(iscale * (x[i] - lo))))
                aux[i] = UInt8(l)
                let fl = Float(l)
                sumL += w[i] * fl; sumL2 += w[i] * fl * fl; sumXL += w[i] * fl * x[i]
            }
            let D = sumW * sumL2 - sumL * sumL
            guard D > 0 else { continue }
            var thisScale = (sumW * sumXL - sumX * sumL) / D, thisMin = (sumL2 * sumX - sumL * sumXL) / D
            if thisMin > 0 {
                thisMin = 0
                thisScale = sumXL / sumL2
            }
            var error: Float = 0
            for i in 0..<n {
                error += w[i] * cost(thisScale * Float(aux[i]) + thisMin - x[i])
            }
            if error < bestError {
                for i in 0..<n { L[i] = aux[i] }
                bestError = error
                scale = thisScale
                lo = thisMin
            }
        }
        return (scale, -lo)
    }

    /// `make_q3_quants` with `do_rmse`: symmetric levels −nmax..<nmax for 16 weights, improved
    /// one weight at a time (up to 5 passes) while the x²-weighted fit gets better. Writes the
    /// levels + nmax to `L` and returns the scale.
    static func makeQ3(_ x: UnsafePointer<Float>, nmax: Int, into L: UnsafeMutablePointer<UInt8>) -> Float {
        let n = 16
        let (amax, signedMax) = largestMagnitude(x, count: n)
        guard amax >= 1e-15 else {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let iscale = -Float(nmax) / signedMax
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: n) { levels in
            var sumLX: Float = 0, sumL2: Float = 0
            for i in 0..<n {
                let l = max(-nmax, min(nmax - 1, nearest(iscale * x[i])))
                levels[i] = l
                let w = x[i] * x[i]
                sumLX += w * x[i] * Float(l); sumL2 += w * Float(l) * Float(l)
            }
            for _ in 0..<5 {
                var changed = 0
                for i in 0..<n {
                    let w = x[i] * x[i]
                    var slx = sumLX - w * x[i] * Float(levels[i])
                    guard slx > 0 else { continue }
                    var sl2 = sumL2 - w * Float(levels[i]) * Float(levels[i])
                    // bounded before rounding: a tiny slx makes the quotient overflow an Int
                    let newL = max(-nmax, min(nmax - 1, nearest(max(-64, min(64, x[i] * sl2 / slx)))))
                    guard newL != levels[i] else { continue }
                    slx += w * x[i] * Float(newL)
                    sl2 += w * Float(newL) * Float(newL)
                    if sl2 > 0 && slx * slx * sumL2 > sumLX * sumLX * sl2 {
                        levels[i] = newL; sumLX = slx; sumL2 = sl2
                        changed += 1
                    }
                }
                if changed == 0 { break }
            }
            for i in 0..<n { L[i] = UInt8(levels[i] + nmax) }
            return sumL2 > 0 ? sumLX / sumL2 : 0
        }
    }

    /// `make_qx_quants` with `rmse_type` 1: symmetric levels -nmax..<nmax weighted by x², 19
    /// scales tried; returns the scale (Q6_K recomputes the levels from the stored scales).
    static func makeQX(_ x: UnsafePointer<Float>, nmax: Int) -> Float {
        let n = 16
        let (amax, signedMax) = largestMagnitude(x, count: n)
        guard amax >= 1e-15 else { return 0 }
        func sums(_ iscale: Float) -> (Float, Float) {
            var sumLX: Float = 0, sumL2: Float = 0
            for i in 0..<n {
                let l = Float(max(-nmax, min(nmax - 1, nearest(iscale * x[i]))))
                let w = x[i] * x[i]
                sumLX += w * x[i] * l; sumL2 += w * l * l
            }
            return (sumLX, sumL2)
        }
        let (sumLX, sumL2) = sums(-Float(nmax) / signedMax)
        var scale = sumL2 != 0 ? sumLX / sumL2 : 0, best = scale * sumLX
        for step in -9...9 where step != 0 {
            let (lx, l2) = sums(-(Float(nmax) + 0.1 * Float(step)) / signedMax)
            if l2 > 0 && lx * lx > best * l2 {
                scale = lx / l2
                best = scale * lx
            }
        }
        return scale
    }
}
