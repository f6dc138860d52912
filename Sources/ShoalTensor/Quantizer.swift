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
        for j in 0..<32 { y.storeBytes(of: Int8((x[j] * id).rounded()), toByteOffset: 2 + j, as: Int8.self) }
    }

    static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0, signedMax: Float = 0
        for j in 0..<32 where amax < abs(x[j]) { amax = abs(x[j]); signedMax = x[j] }
        let d = signedMax / -8, id = d != 0 ? 1 / d : 0
        y.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
        func level(_ v: Float) -> UInt8 { UInt8(min(15, Int8(clamping: Int((v * id + 8.5).rounded(.towardZero))))) }
        for j in 0..<16 { y.storeBytes(of: level(x[j]) | level(x[16 + j]) << 4, toByteOffset: 2 + j, as: UInt8.self) }
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
            let ls = UInt8(min(63, nearest(invScale * scales[j]))), lm = UInt8(min(63, nearest(invMin * mins[j])))
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

    /// ggml's `nearest_int`: round half to even.
    @inline(__always)
    static func nearest(_ v: Float) -> Int { Int(v.rounded(.toNearestOrEven)) }

    /// `make_qkx2_quants`: levels 0...nmax with a scale and a (non-positive) offset minimising
    /// the weighted squared error, trying `steps + 1` scales around the range's own. Returns
    /// (scale, -offset).
    static func makeQKX2(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, nmax: Int, into L: UnsafeMutablePointer<UInt8>,
                         aux: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float, steps: Int) -> (Float, Float) {
        let n = 32
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
            let diff = scale * Float(l) + lo - x[i]
            bestError += w[i] * diff * diff
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
                let diff = thisScale * Float(aux[i]) + thisMin - x[i]
                error += w[i] * diff * diff
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

    /// `make_qx_quants` with `rmse_type` 1: symmetric levels -nmax..<nmax weighted by x², 19
    /// scales tried; returns the scale (Q6_K recomputes the levels from the stored scales).
    static func makeQX(_ x: UnsafePointer<Float>, nmax: Int) -> Float {
        let n = 16
        var amax: Float = 0, signedMax: Float = 0
        for i in 0..<n where abs(x[i]) > amax { amax = abs(x[i]); signedMax = x[i] }
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
