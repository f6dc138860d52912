import ArgumentParser
import Foundation
import ShoalTensor

/// `shoal bench-kernels`: one matrix product (bf16, f32 or a block type) at several token
/// counts, for kernel work.
struct KernelBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-kernels",
        abstract: "Time the matrix product (GEMV for 1 token, GEMM for more) at several token counts.",
        discussion: """
            Each timing runs the product over --matrices distinct random matrices in turn, so
            their weights come from memory as in decode, and reports the median over --repeats
            of the time per product, the weight bytes streamed per second and the multiply-adds.
            The default shape is a Mixtral-mini expert's w1 (3584 x 1024).
            """)

    @Option(help: "Rows of each matrix.") var rows = 3584
    @Option(help: "Columns of each matrix.") var cols = 1024
    @Option(help: "Distinct matrices, used in turn.") var matrices = 8
    @Option(help: "Comma-separated token counts.") var tokens = "1,2,4,8,16,64"
    @Option(help: "Compute threads.") var threads = 1
    @Option(help: "Repeats; medians are reported.") var repeats = 5
    @Option(name: .customLong("type"), help: "Weight type: \(Self.typeNames).") var typeName = "bf16"

    /// Every type a matrix can hold in memory (f16 is widened to f32 at load).
    static let types = DType.allCases.filter { $0 != .f16 }
    static let typeNames = types.map { $0.rawValue.lowercased() }.joined(separator: ", ")
    var type: DType? { Self.types.first { $0.rawValue.lowercased() == typeName.lowercased() } }

    func validate() throws {
        guard rows >= 1, cols >= 1, matrices >= 1, threads >= 1, repeats >= 1 else {
            throw ValidationError("--rows, --cols, --matrices, --threads and --repeats must be at least 1")
        }
        _ = try parseCounts(tokens)
        guard let type else { throw ValidationError("--type \(typeName): expected one of \(Self.typeNames)") }
        guard cols % type.blockWeights == 0 else {
            throw ValidationError("--cols \(cols) is not a whole number of \(type.rawValue) blocks (\(type.blockWeights) weights)")
        }
    }

    func run() throws {
        try reportingErrors {
            let counts = try parseCounts(tokens)
            let n = counts.max()!
            let pool = ComputePool(threads: threads)
            let type = self.type!
            let elements = rows * cols, bytes = rows * type.rowBytes(cols)
            // Random values of a realistic size: f32 and bf16 near 1; blocks of random quanta
            // whose binary16 scales are small and finite.
            var rng = SplitMix64(seed: 1)
            let row = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { row.deallocate() }
            let weights = UnsafeMutableRawPointer.allocate(byteCount: matrices * bytes, alignment: 64)
            defer { weights.deallocate() }
            for r in 0..<(matrices * rows) {
                for c in 0..<cols { row[c] = 1 + Float(rng.next() & 0x7f) / 128 - 0.5 }
                Quantizer.quantize(type, row, count: cols, into: weights + r * type.rowBytes(cols))
            }
            let x = UnsafeMutablePointer<Float>.allocate(capacity: n * cols)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: n * rows)
            defer { x.deallocate(); y.deallocate() }
            for i in 0..<(n * cols) { x[i] = Float(i % 17) * 0.01 }
            let all = (0..<matrices).map {
                Matrix(dtype: type, rows: rows, cols: cols, base: UnsafeRawPointer(weights + $0 * bytes))
            }
            print("\(rows) x \(cols) \(type.rawValue), \(matrices) matrices, \(threads) thread(s), kernels: \(Kernels.isa)")
            print("tokens  us/product    GB/s  GFLOP/s")
            for count in counts {
                var times: [Double] = []
                for _ in 0..<repeats {
                    let start = ContinuousClock.now
                    for m in all { Kernels.gemm(MatMul(matrix: m, x: x, ldx: cols, n: count, y: y, ldy: rows), pool: pool) }
                    times.append((ContinuousClock.now - start).seconds / Double(matrices))
                }
                let t = median(times)
                print(String(format: "%6d  %10.1f  %6.1f  %7.1f", count, t * 1e6, Double(bytes) / t / 1e9,
                             2 * Double(elements * count) / t / 1e9))
            }
        }
    }
}
