import Foundation
import CShoalKernels
import ShoalTensor
import Synchronization
import Testing

// Every fast kernel against ReferenceKernels (Double accumulation), on every instruction set this
// CPU supports.
//
// Tolerance for one output: |fast - reference| <= 1e-6 * sqrt(cols) * Σ|w·x| (+ a tiny floor).
// Each float32 add or FMA rounds with relative error <= 2^-24 ≈ 6e-8 of a partial sum, and a
// partial sum never exceeds Σ|w·x|; the kernels split a dot product over several vector lanes and
// accumulators, so rounding errors add like a random walk over ~cols steps: ~6e-8 * sqrt(cols)
// * Σ|w·x| is typical, and 1e-6 leaves a 16x margin. A wrong index or a dropped element is an
// O(|w·x|) error, which for these shapes is far above the bound. bf16 weights widen exactly,
// so the same bound holds for them; dot uses it with cols = count.
@Suite(.serialized) struct KernelTests {
    /// The instruction-set levels this CPU can run, lowest first.
    static let levels = Array(0...Int(shoal_kernels_best_isa()))

    /// Runs `body` once per supported instruction set, then restores the best one.
    func forEachISA(_ body: (String) throws -> Void) rethrows {
        defer { _ = shoal_kernels_set_thread_isa(-1) }
        for level in Self.levels {
            #expect(Int(shoal_kernels_set_thread_isa(Int32(level))) == level)
            try body(Kernels.isa)
        }
    }

    /// A level forced for one test's thread must not change what other threads compute.
    @Test func forcedLevelStaysOnItsThread() {
        let best = String(cString: shoal_kernels_isa())
        _ = shoal_kernels_set_thread_isa(0)
        defer { _ = shoal_kernels_set_thread_isa(-1) }
        #expect(Kernels.isa == "generic")
        nonisolated(unsafe) var elsewhere = ""
        let thread = Thread { elsewhere = Kernels.isa }
        thread.start()
        while !thread.isFinished { usleep(1000) }
        #expect(elsewhere == best)
    }

    @Test func isaNames() {
        forEachISA { isa in
            #expect(["generic", "avx2", "avx512"].contains(isa))
        }
        #expect(Kernels.isa == ["generic", "avx2", "avx512"][Int(shoal_kernels_best_isa())])
    }

    @Test(arguments: [DType.f32, .bf16])
    func gemvRandomShapes(dtype: DType) {
        var rng = TestRNG(seed: 1)
        let colsList = [1, 7, 15, 16, 17, 31, 33, 64, 100, 129, 257, 1024]
        let pools = [ComputePool(threads: 1), ComputePool(threads: 2), ComputePool(threads: 3)]
        forEachISA { isa in
            for cols in colsList {
                let rows = rng.int(1...37)
                let W = TestMatrix(dtype, rows: rows, cols: cols, rng: &rng)
                let x = TestBuffer(random: cols, rng: &rng)
                for pool in pools {
                    let y = TestBuffer(filled: rows, with: .nan)
                    Kernels.gemv(MatVec(matrix: W.matrix, x: x.pointer, y: y.pointer), pool: pool)
                    expectClose(y, gemvReference(W, x), bound: gemvBound(W, x), cols: cols,
                                "\(isa) gemv \(dtype) \(rows)x\(cols) \(pool.threadCount)T")
                }
            }
        }
    }

    /// Large enough to split across threads (the pool runs small batches inline).
    @Test(arguments: [DType.f32, .bf16])
    func gemvLargeSplit(dtype: DType) {
        var rng = TestRNG(seed: 2)
        let pool = ComputePool(threads: 3)
        forEachISA { isa in
            let W = TestMatrix(dtype, rows: 301, cols: 515, rng: &rng)
            let x = TestBuffer(random: 515, rng: &rng)
            let y = TestBuffer(filled: 301, with: .nan)
            Kernels.gemv(MatVec(matrix: W.matrix, x: x.pointer, y: y.pointer), pool: pool)
            expectClose(y, gemvReference(W, x), bound: gemvBound(W, x), cols: 515, "\(isa) large gemv \(dtype)")
        }
    }

    @Test func gemvMixedBatch() {
        var rng = TestRNG(seed: 3)
        let pool = ComputePool(threads: 2)
        forEachISA { isa in
            // q, k, v-like shapes plus two bf16 "experts", in one dispatch.
            let shapes: [(DType, Int, Int)] = [(.f32, 64, 100), (.bf16, 13, 100), (.bf16, 300, 257),
                                               (.f32, 5, 7), (.bf16, 260, 600)]
            let Ws = shapes.map { TestMatrix($0.0, rows: $0.1, cols: $0.2, rng: &rng) }
            let xs = shapes.map { TestBuffer(random: $0.2, rng: &rng) }
            let ys = shapes.map { TestBuffer(filled: $0.1, with: .nan) }
            let jobs = (0..<shapes.count).map { MatVec(matrix: Ws[$0].matrix, x: xs[$0].pointer, y: ys[$0].pointer) }
            jobs.withUnsafeBufferPointer { Kernels.gemv($0, pool: pool) }
            for i in 0..<shapes.count {
                expectClose(ys[i], gemvReference(Ws[i], xs[i]), bound: gemvBound(Ws[i], xs[i]),
                            cols: shapes[i].2, "\(isa) batch gemv #\(i)")
            }
        }
    }

    @Test(arguments: [DType.f32, .bf16])
    func gemmRandomShapes(dtype: DType) {
        var rng = TestRNG(seed: 4)
        let colsList = [1, 7, 15, 16, 17, 33, 100, 1030]
        let pools = [ComputePool(threads: 1), ComputePool(threads: 2), ComputePool(threads: 3)]
        forEachISA { isa in
            for cols in colsList {
                for tokens in [1, 2, 5, 6, 7, 9, 33] {  // past 32 tokens the blocked GEMM runs
                    let rows = rng.int(1...37)
                    let pool = pools[rng.int(0...2)]
                    let W = TestMatrix(dtype, rows: rows, cols: cols, rng: &rng)
                    checkGEMM(W, tokens: tokens, padX: rng.int(0...3), padY: rng.int(0...3), pool: pool,
                              rng: &rng, "\(isa) gemm \(dtype) \(rows)x\(cols) n=\(tokens) \(pool.threadCount)T")
                }
            }
        }
    }

    /// Rows and K past one GEMM block (64 rows x 2048 cols), split across threads.
    @Test(arguments: [DType.f32, .bf16])
    func gemmLargeSplit(dtype: DType) {
        var rng = TestRNG(seed: 5)
        let pool = ComputePool(threads: 2)
        forEachISA { isa in
            let W = TestMatrix(dtype, rows: 75, cols: 2100, rng: &rng)
            for tokens in [13, 45] {  // the streamed and the blocked GEMM
                checkGEMM(W, tokens: tokens, padX: 5, padY: 3, pool: pool, rng: &rng,
                          "\(isa) large gemm \(dtype) n=\(tokens)")
            }
        }
    }

    @Test func gemmMixedBatch() {
        var rng = TestRNG(seed: 6)
        let pool = ComputePool(threads: 3)
        forEachISA { isa in
            let shapes: [(DType, Int, Int, Int)] = [(.bf16, 37, 100, 9), (.f32, 20, 33, 3), (.bf16, 200, 300, 8),
                                                    (.bf16, 3, 16, 1)]
            let Ws = shapes.map { TestMatrix($0.0, rows: $0.1, cols: $0.2, rng: &rng) }
            let xs = shapes.map { TestBuffer(random: $0.2 * $0.3, rng: &rng) }
            let ys = shapes.map { TestBuffer(filled: $0.1 * $0.3, with: .nan) }
            let jobs = (0..<shapes.count).map {
                MatMul(matrix: Ws[$0].matrix, x: xs[$0].pointer, ldx: shapes[$0].2, n: shapes[$0].3,
                       y: ys[$0].pointer, ldy: shapes[$0].1)
            }
            jobs.withUnsafeBufferPointer { Kernels.gemm($0, pool: pool) }
            for i in 0..<shapes.count {
                let (_, rows, cols, n) = shapes[i]
                for t in 0..<n {
                    let x = TestBuffer(copying: xs[i].pointer + t * cols, count: cols)
                    let y = TestBuffer(copying: ys[i].pointer + t * rows, count: rows)
                    expectClose(y, gemvReference(Ws[i], x), bound: gemvBound(Ws[i], x), cols: cols,
                                "\(isa) batch gemm #\(i) t=\(t)")
                }
            }
        }
    }

    /// A token's result must not depend on the batch it runs in: GEMM over n tokens gives, bit
    /// for bit, what GEMV gives each token alone, also past one K block (2048 columns) and with
    /// a ragged tail, on every instruction set and split across threads.
    @Test(arguments: [DType.f32, .bf16])
    func gemmEqualsGemvBitForBit(dtype: DType) {
        var rng = TestRNG(seed: 8)
        let pool = ComputePool(threads: 2)
        forEachISA { isa in
            for (rows, cols) in [(9, 100), (70, 2048), (37, 4100), (13, 6151)] {
                let W = TestMatrix(dtype, rows: rows, cols: cols, rng: &rng)
                for n in [2, 7, 17, 40] {  // streamed (<= 32 tokens) and blocked
                    let x = TestBuffer(random: n * cols, rng: &rng)
                    let batched = TestBuffer(filled: n * rows, with: .nan)
                    Kernels.gemm(MatMul(matrix: W.matrix, x: x.pointer, ldx: cols, n: n, y: batched.pointer, ldy: rows),
                                 pool: pool)
                    for t in 0..<n {
                        let alone = TestBuffer(filled: rows, with: .nan)
                        Kernels.gemv(MatVec(matrix: W.matrix, x: x.pointer + t * cols, y: alone.pointer), pool: pool)
                        let differing = (0..<rows).filter {
                            (batched.pointer + t * rows)[$0].bitPattern != alone.pointer[$0].bitPattern
                        }
                        #expect(differing.isEmpty, "\(isa) \(dtype) \(rows)x\(cols) n=\(n) t=\(t): rows \(differing)")
                    }
                }
            }
        }
    }

    /// The expert gate against silu(a)·b in Double, for gates from -120 to 120 (past where
    /// e^-a overflows a float) and lengths off the vector width. Below a = -87.3 the kernel
    /// gives 0 where the exact value is under 1e-35 (e^a is past the normal floats there).
    @Test func swigluMatchesDoubleReference() {
        var rng = TestRNG(seed: 11)
        forEachISA { isa in
            for count in [1, 7, 16, 37, 1000] {
                let a = TestBuffer(filled: count, with: 0), b = TestBuffer(random: count, rng: &rng)
                for i in 0..<count { a.pointer[i] = rng.float() * 120 }
                a.pointer[0] = count == 1 ? 0 : -103.5  // e^103.5 is past Float.greatestFiniteMagnitude
                let before = (0..<count).map { Double(a.pointer[$0]) }
                Kernels.swiglu(a.pointer, b.pointer, count: count)
                for i in 0..<count {
                    let x = before[i], expected = x / (1 + Foundation.exp(-x)) * Double(b.pointer[i])
                    let got = Double(a.pointer[i])
                    #expect(abs(got - expected) <= 1e-6 * abs(expected) + 1e-35,
                            "\(isa) swiglu n=\(count) i=\(i) a=\(x): \(got) vs \(expected)")
                }
            }
        }
    }

    /// Grouped attention at one position against a Double softmax, with head sizes off the
    /// vector width, a stride wider than one head, a window that starts past 0, groups of more
    /// than four heads, and scores spread over a hundred (`sharpness`: e^x down to underflow).
    @Test func attendMatchesDoubleReference() {
        var rng = TestRNG(seed: 9)
        forEachISA { isa in
            for (group, hd, positions, sharpness) in [
                (1, 16, 0..<1, Float(1)), (4, 64, 0..<77, 1), (3, 37, 5..<40, 1), (2, 100, 30..<31, 1),
                (6, 130, 3..<300, 1), (8, 80, 0..<513, 1), (4, 128, 0..<200, 60),
            ] {
                let stride = hd * 2 + 3, rows = positions.upperBound
                let q = TestBuffer(random: group * hd, rng: &rng)
                let keys = TestBuffer(random: rows * stride, rng: &rng)
                let values = TestBuffer(random: rows * stride, rng: &rng)
                let scores = TestBuffer(filled: group * positions.count, with: .nan)
                let out = TestBuffer(filled: group * hd, with: .nan)
                let scale = sharpness / Float(hd).squareRoot()
                Kernels.attend(q: q.pointer, group: group, headDim: hd, keys: keys.pointer, values: values.pointer,
                               stride: stride, positions: positions, scale: scale, scores: scores.pointer, out: out.pointer)
                for g in 0..<group {
                    var logits: [Double] = []
                    for j in positions {
                        var dot = 0.0
                        for i in 0..<hd { dot += Double(q.pointer[g * hd + i]) * Double(keys.pointer[j * stride + i]) }
                        logits.append(dot * Double(scale))
                    }
                    let top = logits.max()!, weights = logits.map { Foundation.exp($0 - top) }
                    let total = weights.reduce(0, +)
                    for i in 0..<hd {
                        var expected = 0.0, magnitude = 0.0
                        for (n, j) in positions.enumerated() {
                            expected += weights[n] / total * Double(values.pointer[j * stride + i])
                            magnitude += weights[n] / total * abs(Double(values.pointer[j * stride + i]))
                        }
                        let got = Double(out.pointer[g * hd + i])
                        #expect(abs(got - expected) <= 1e-5 * magnitude + 1e-30,
                                "\(isa) attend G=\(group) hd=\(hd) \(positions) head \(g) i=\(i): \(got) vs \(expected)")
                    }
                }
            }
        }
    }

    @Test func dotAndAxpy() {
        var rng = TestRNG(seed: 7)
        forEachISA { isa in
            for count in [0, 1, 3, 15, 16, 17, 31, 32, 33, 64, 100, 128] {
                let a = TestBuffer(random: count, rng: &rng), b = TestBuffer(random: count, rng: &rng)
                let fast = Kernels.dot(a.pointer, b.pointer, count: count)
                let reference = ReferenceKernels.dot(a.pointer, b.pointer, count: count)
                var magnitude: Float = 0
                for i in 0..<count { magnitude += abs(a.pointer[i] * b.pointer[i]) }
                #expect(abs(fast - reference) <= 1e-6 * Float(count).squareRoot() * magnitude + 1e-30,
                        "\(isa) dot n=\(count)")

                // One rounding per element either way: an FMA against Double-then-round.
                let alpha = rng.float()
                let y = TestBuffer(random: count, rng: &rng)
                let expected = TestBuffer(copying: y.pointer, count: count)
                Kernels.axpy(y.pointer, alpha, a.pointer, count: count)
                ReferenceKernels.axpy(expected.pointer, alpha, a.pointer, count: count)
                for i in 0..<count {
                    let scale = abs(expected.pointer[i]) + abs(alpha * a.pointer[i])
                    #expect(abs(y.pointer[i] - expected.pointer[i]) <= 2.5e-7 * scale, "\(isa) axpy n=\(count) i=\(i)")
                }
            }
        }
    }

    @Test func readSum() {
        var rng = TestRNG(seed: 8)
        forEachISA { isa in
            for count in [0, 1, 63, 64, 65, 1000] {
                let p = TestBuffer(random: count, rng: &rng)
                var expected = 0.0, magnitude = 0.0
                for i in 0..<count { expected += Double(p.pointer[i]); magnitude += Double(abs(p.pointer[i])) }
                let sum = Double(shoal_read_sum_f32(p.pointer, count))
                #expect(abs(sum - expected) <= 1e-6 * Double(count).squareRoot() * magnitude + 1e-30, "\(isa) n=\(count)")
            }
        }
    }

    // MARK: - Helpers

    func checkGEMM(_ W: TestMatrix, tokens n: Int, padX: Int, padY: Int, pool: ComputePool,
                   rng: inout TestRNG, _ label: String) {
        let rows = W.matrix.rows, cols = W.matrix.cols
        let ldx = cols + padX, ldy = rows + padY
        let X = TestBuffer(random: n * ldx, rng: &rng)
        let sentinel: Float = -12345
        let Y = TestBuffer(filled: n * ldy, with: sentinel)
        Kernels.gemm(MatMul(matrix: W.matrix, x: X.pointer, ldx: ldx, n: n, y: Y.pointer, ldy: ldy), pool: pool)
        for t in 0..<n {
            let x = TestBuffer(copying: X.pointer + t * ldx, count: cols)
            let y = TestBuffer(copying: Y.pointer + t * ldy, count: rows)
            expectClose(y, gemvReference(W, x), bound: gemvBound(W, x), cols: cols, "\(label) t=\(t)")
            for r in rows..<ldy {
                #expect(Y.pointer[t * ldy + r] == sentinel, "\(label): wrote padding t=\(t) r=\(r)")
            }
        }
    }

    func gemvReference(_ W: TestMatrix, _ x: TestBuffer) -> TestBuffer {
        let y = TestBuffer(filled: W.matrix.rows, with: 0)
        ReferenceKernels.gemv(MatVec(matrix: W.matrix, x: x.pointer, y: y.pointer))
        return y
    }

    /// Σ_c |W[r,c]·x[c]| per row: the reference run on |W| and |x|.
    func gemvBound(_ W: TestMatrix, _ x: TestBuffer) -> TestBuffer {
        let absX = TestBuffer(copying: x.pointer, count: x.count)
        for i in 0..<x.count { absX.pointer[i] = abs(absX.pointer[i]) }
        let y = TestBuffer(filled: W.matrix.rows, with: 0)
        let absW = W.absolute
        withExtendedLifetime(absW) {  // Matrix does not own its storage
            ReferenceKernels.gemv(MatVec(matrix: absW.matrix, x: absX.pointer, y: y.pointer))
        }
        return y
    }

    func expectClose(_ y: TestBuffer, _ reference: TestBuffer, bound: TestBuffer, cols: Int,
                     _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        var worst = 0
        var failures = 0
        for r in 0..<y.count {
            let tolerance = 1e-6 * Float(cols).squareRoot() * bound.pointer[r] + 1e-30
            let error = abs(y.pointer[r] - reference.pointer[r])
            if !(error <= tolerance) {
                failures += 1
                worst = r
            }
        }
        #expect(failures == 0,
                "\(label): \(failures) rows off, e.g. r=\(worst): \(y.pointer[worst]) vs \(reference.pointer[worst]) (bound \(bound.pointer[worst]))",
                sourceLocation: sourceLocation)
    }
}

@Suite struct ComputePoolTests {
    @Test(arguments: [1, 2, 3])
    func runsEveryIndexExactlyOnce(threads: Int) {
        let pool = ComputePool(threads: threads)
        #expect(pool.threadCount == threads)
        for count in [0, 1, 2, 3, 1000] {
            let hits = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: max(count, 1))
            for i in 0..<count { (hits + i).initialize(to: Atomic(0)) }
            pool.parallelFor(count) { i in hits[i].add(1, ordering: .relaxed) }
            var wrong = 0
            for i in 0..<count where hits[i].load(ordering: .relaxed) != 1 { wrong += 1 }
            #expect(wrong == 0, "count \(count), \(threads) threads")
            hits.deinitialize(count: count)
            hits.deallocate()
        }
    }

    @Test(arguments: [2, 3])
    func survivesRapidDispatches(threads: Int) {
        let pool = ComputePool(threads: threads)
        let total = Atomic<Int>(0)
        for round in 0..<10_000 {
            pool.parallelFor(1 + round % 5) { i in total.add(i + 1, ordering: .relaxed) }
        }
        // Σ over rounds of 1 + 2 + ... + (1 + round % 5): 2000 rounds each of 1, 3, 6, 10, 15.
        #expect(total.load(ordering: .relaxed) == 2000 * (1 + 3 + 6 + 10 + 15))
    }

    /// Workers that went to sleep between dispatches wake up and run chunks at the same time as
    /// the caller: every chunk waits at a barrier until all three have arrived.
    @Test func wakesSleepingWorkers() async throws {
        let pool = ComputePool(threads: 3)
        for _ in 0..<3 {
            try await Task.sleep(for: .milliseconds(5))  // well past the workers' spin
            let arrived = Atomic<Int>(0)
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(10)
            pool.parallelFor(3) { _ in
                arrived.add(1, ordering: .relaxed)
                while arrived.load(ordering: .relaxed) < 3 && clock.now < deadline {}
            }
            #expect(arrived.load(ordering: .relaxed) == 3)
            #expect(clock.now < deadline, "the three chunks never ran at once")
        }
    }

    @Test func poolsStartAndStop() {
        for threads in 1...4 {
            for _ in 0..<20 {
                let pool = ComputePool(threads: threads)
                let hits = Atomic<Int>(0)
                pool.parallelFor(threads * 2) { _ in hits.add(1, ordering: .relaxed) }
                #expect(hits.load(ordering: .relaxed) == threads * 2)
            }
        }
    }
}

// MARK: - Test data

/// Deterministic, so failures reproduce.
typealias TestRNG = SplitMix64

extension SplitMix64 {
    /// Uniform in [-1, 1).
    mutating func float() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }
}

/// An owned Float buffer (a class so it is freed when the test drops it).
final class TestBuffer {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    init(filled count: Int, with value: Float) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: value, count: count)
    }
    convenience init(random count: Int, rng: inout TestRNG) {
        self.init(filled: count, with: 0)
        for i in 0..<count { pointer[i] = rng.float() }
    }
    convenience init(copying source: UnsafePointer<Float>, count: Int) {
        self.init(filled: count, with: 0)
        pointer.update(from: source, count: count)
    }
    deinit { pointer.deallocate() }
}

/// A random matrix with owned storage in either dtype.
final class TestMatrix {
    let matrix: Matrix
    private let storage: UnsafeMutableRawPointer

    convenience init(_ dtype: DType, rows: Int, cols: Int, rng: inout TestRNG) {
        self.init(dtype, rows: rows, cols: cols) { _ in rng.float() }
    }

    private init(_ dtype: DType, rows: Int, cols: Int, value: (Int) -> Float) {
        let count = rows * cols
        // Odd byte offset from the allocation's alignment: kernels must not assume aligned rows.
        storage = .allocate(byteCount: dtype.rowBytes(count) + 64, alignment: 64)
        let base = storage + (dtype == .bf16 ? 2 : 4)
        for i in 0..<count {
            if dtype == .bf16 {
                base.storeBytes(of: floatToBF16(value(i)), toByteOffset: i * 2, as: UInt16.self)
            } else {
                base.storeBytes(of: value(i), toByteOffset: i * 4, as: Float.self)
            }
        }
        matrix = Matrix(dtype: dtype, rows: rows, cols: cols, base: UnsafeRawPointer(base))
    }

    /// |W|, element by element (exact in either dtype).
    var absolute: TestMatrix {
        let m = matrix
        return TestMatrix(m.dtype, rows: m.rows, cols: m.cols) { i in abs(m.element(i / m.cols, i % m.cols)) }
    }

    deinit { storage.deallocate() }
}
