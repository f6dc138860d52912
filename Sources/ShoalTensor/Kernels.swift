import CShoalKernels

/// One matrix-vector product of a batch dispatched together: y[0..<rows] = W x.
public struct MatVec {
    /// W `[rows, cols]`.
    public var matrix: Matrix
    /// x `[cols]`.
    public var x: UnsafePointer<Float>
    /// y `[rows]`.
    public var y: UnsafeMutablePointer<Float>

    /// A product reading `x[0..<matrix.cols]` and writing `y[0..<matrix.rows]`.
    public init(matrix: Matrix, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        self.matrix = matrix
        self.x = x
        self.y = y
    }
}

/// One matrix product over n tokens: y[t*ldy + r] = W[r,:] · x[t*ldx + :].
public struct MatMul {
    /// W `[rows, cols]`.
    public var matrix: Matrix
    /// x `[n, ldx]`, of which the first `cols` of each row are read.
    public var x: UnsafePointer<Float>
    /// Floats from one token's x to the next (>= cols).
    public var ldx: Int
    /// Tokens.
    public var n: Int
    /// y `[n, ldy]`, of which the first `rows` of each row are written.
    public var y: UnsafeMutablePointer<Float>
    /// Floats from one token's y to the next (>= rows).
    public var ldy: Int

    /// A product over `n` tokens; strides are in floats.
    public init(matrix: Matrix, x: UnsafePointer<Float>, ldx: Int, n: Int,
                y: UnsafeMutablePointer<Float>, ldy: Int) {
        self.matrix = matrix
        self.x = x
        self.ldx = ldx
        self.n = n
        self.y = y
        self.ldy = ldy
    }
}

/// Matrix products to run in one dispatch, kept from call to call so that, once warm, a
/// forward pass allocates nothing for them. The one place that chooses GEMV or GEMM.
public struct ProductBatch {
    private var jobs: [MatMul] = []
    private var vectors: [MatVec] = []

    public init() {}

    /// Weight bytes of the products added since the last `removeAll`.
    public var weightBytes: Int { jobs.reduce(0) { $0 + $1.matrix.byteCount } }

    public mutating func append(_ job: MatMul) { jobs.append(job) }

    public mutating func removeAll() { jobs.removeAll(keepingCapacity: true) }

    /// Runs the products in one dispatch: as GEMVs when every one has a single token (a
    /// decode step), as GEMMs otherwise. A GEMM over one token runs the GEMV kernel, so a
    /// product's result depends only on its own tokens, never on the others in the batch.
    public mutating func run(pool: ComputePool) {
        if jobs.allSatisfy({ $0.n == 1 }) {
            vectors.removeAll(keepingCapacity: true)
            for j in jobs { vectors.append(MatVec(matrix: j.matrix, x: j.x, y: j.y)) }
            vectors.withUnsafeBufferPointer { Kernels.gemv($0, pool: pool) }
        } else {
            jobs.withUnsafeBufferPointer { Kernels.gemm($0, pool: pool) }
        }
    }
}

/// The fast kernels (C, chosen per CPU at run time) behind safe-ish Swift entry points.
public enum Kernels {
    /// The instruction set in use: "avx512", "avx2" or "generic".
    public static var isa: String { String(cString: shoal_kernels_isa()) }

    /// Batches smaller than these run on the calling thread: waking a worker costs more.
    static let inlineBytes = 128 << 10
    static let inlineMultiplyAdds = 128 << 10

    /// Runs all products in one parallel dispatch, splitting the total rows of all matrices
    /// across the pool's threads (so q,k,v or the w1,w3 of two experts cost one dispatch).
    /// No allocation.
    public static func gemv(_ jobs: UnsafeBufferPointer<MatVec>, pool: ComputePool) {
        var bytes = 0
        for job in jobs { bytes += job.matrix.byteCount }
        let parts = bytes < inlineBytes ? 1 : pool.threadCount * ComputePool.chunksPerThread
        if parts == 1 {
            for job in jobs { gemv(job, rows: 0..<job.matrix.rows) }
            return
        }
        pool.parallelFor(parts) { part in
            var start = 0
            for job in jobs {
                let cost = job.matrix.rowBytes
                let rows = share(of: part, parts: parts, total: bytes, start: start,
                                 rowCost: cost, rowCount: job.matrix.rows)
                if !rows.isEmpty { gemv(job, rows: rows) }
                start += job.matrix.byteCount
            }
        }
    }

    /// One matrix-vector product, split across the pool.
    public static func gemv(_ job: MatVec, pool: ComputePool) {
        withUnsafePointer(to: job) { gemv(UnsafeBufferPointer(start: $0, count: 1), pool: pool) }
    }

    /// Runs all products in one parallel dispatch, splitting the total rows of all matrices
    /// across the pool's threads by their share of the multiply-adds. No allocation.
    public static func gemm(_ jobs: UnsafeBufferPointer<MatMul>, pool: ComputePool) {
        var flops = 0
        for job in jobs { flops += job.matrix.rows * job.matrix.cols * job.n }
        let parts = flops < inlineMultiplyAdds ? 1 : pool.threadCount * ComputePool.chunksPerThread
        if parts == 1 {
            for job in jobs { gemm(job, rows: 0..<job.matrix.rows) }
            return
        }
        pool.parallelFor(parts) { part in
            var start = 0
            for job in jobs {
                let cost = job.matrix.cols * job.n
                let rows = share(of: part, parts: parts, total: flops, start: start,
                                 rowCost: cost, rowCount: job.matrix.rows)
                if !rows.isEmpty { gemm(job, rows: rows) }
                start += job.matrix.rows * cost
            }
        }
    }

    /// One matrix product, split across the pool.
    public static func gemm(_ job: MatMul, pool: ComputePool) {
        withUnsafePointer(to: job) { gemm(UnsafeBufferPointer(start: $0, count: 1), pool: pool) }
    }

    /// a · b over `count` floats: the dot product `attend` runs per cached key, exposed so
    /// tests can check it at every length on every instruction set.
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        shoal_dot_f32(a, b, count)
    }

    /// y += alpha * x over `count` floats: the update `attend` runs per cached value, exposed
    /// for the same tests.
    public static func axpy(_ y: UnsafeMutablePointer<Float>, _ alpha: Float,
                            _ x: UnsafePointer<Float>, count: Int) {
        shoal_axpy_f32(y, alpha, x, count)
    }

    /// Attention of `group` query heads sharing one key/value head, at one query position:
    /// `out[g*headDim ..< (g+1)*headDim]` = Σ_j p_gj · value_j over positions `j` in `positions`,
    /// p_g the softmax of `scale` · (q_g · key_j). Key and value `j` start at
    /// `keys + j*stride` and `values + j*stride`; `scores` is scratch of
    /// `group * positions.count` floats.
    public static func attend(q: UnsafePointer<Float>, group: Int, headDim: Int,
                              keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int,
                              positions: Range<Int>, scale: Float,
                              scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        shoal_attend_f32(q, group, headDim, keys, values, stride, positions.lowerBound,
                         positions.upperBound, scale, scores, out)
    }

    /// a[i] = silu(a[i]) · b[i] over `count` floats: an expert's gate.
    public static func swiglu(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        shoal_swiglu_f32(a, b, count)
    }

    // MARK: - Splitting and the C calls

    /// The rows of one job that part `part` of `parts` owns, when all jobs' rows are laid end to
    /// end as `total` units of work and this job's rows start at unit `start`, `rowCost` each.
    /// Every cut is rounded to a whole row tile, and two neighbouring parts compute their shared
    /// cut identically, so the parts tile each job exactly.
    static func share(of part: Int, parts: Int, total: Int, start: Int,
                      rowCost: Int, rowCount: Int) -> Range<Int> {
        func cut(_ p: Int) -> Int {
            if p == 0 { return 0 }
            if p == parts || rowCost == 0 { return rowCount }
            let boundary = total * p / parts - start
            if boundary <= 0 { return 0 }
            let tileCost = rowCost * Int(SHOAL_ROW_TILE)
            let row = (boundary + tileCost / 2) / tileCost * Int(SHOAL_ROW_TILE)
            return min(row, rowCount)
        }
        return cut(part)..<cut(part + 1)
    }

    static func gemv(_ job: MatVec, rows: Range<Int>) {
        let W = job.matrix
        shoal_gemv(W.dtype.kernelType, W.base, W.cols, job.x, job.y, rows.lowerBound, rows.upperBound)
    }

    static func gemm(_ job: MatMul, rows: Range<Int>) {
        let W = job.matrix
        precondition(job.n >= 0 && (job.n <= 1 || (job.ldx >= W.cols && job.ldy >= W.rows)),
                     "MatMul rows overlap: ldx < cols or ldy < rows")
        shoal_gemm(W.dtype.kernelType, W.base, W.cols, job.x, job.ldx, job.n, job.y, job.ldy,
                   rows.lowerBound, rows.upperBound)
    }
}
