/// Plain loops that are obviously right, accumulating in Double: the oracle the fast
/// `Kernels` are tested against. Slow; never on a hot path.
public enum ReferenceKernels {
    /// y[r] = W[r,:] · x for every row.
    public static func gemv(_ job: MatVec) {
        let W = job.matrix
        for r in 0..<W.rows {
            var sum = 0.0
            for c in 0..<W.cols { sum += Double(W.element(r, c)) * Double(job.x[c]) }
            job.y[r] = Float(sum)
        }
    }

    /// y[t*ldy + r] = W[r,:] · x[t*ldx + :] for every row and token.
    public static func gemm(_ job: MatMul) {
        for t in 0..<job.n {
            gemv(MatVec(matrix: job.matrix, x: job.x + t * job.ldx, y: job.y + t * job.ldy))
        }
    }

    /// a · b over `count` floats.
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var sum = 0.0
        for i in 0..<count { sum += Double(a[i]) * Double(b[i]) }
        return Float(sum)
    }

    /// y += alpha * x over `count` floats.
    public static func axpy(_ y: UnsafeMutablePointer<Float>, _ alpha: Float,
                            _ x: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { y[i] = Float(Double(y[i]) + Double(alpha) * Double(x[i])) }
    }
}
