import Foundation
import CShoalKernels
import ShoalTensor
import Testing

// The block-quantized kernels on every instruction set this CPU supports. The chain of trust:
// `BlockFormat` (plain Swift) is checked against gguf-py's dequantization of the fixtures
// (GGUFTests); here the C kernels' dequantization equals `BlockFormat` bit for bit, and a
// quantized product equals, bit for bit, the float32 kernel run over the dequantized matrix,
// which KernelTests checks against a Double reference. So a quantized matrix computes exactly
// the function of its dequantized weights.
@Suite(.serialized) struct QuantizedKernelTests {
    static let types: [DType] = [.q8_0, .q4_0, .q4_K, .q5_K, .q6_K]

    func forEachISA(_ body: (String) throws -> Void) rethrows {
        defer { _ = shoal_kernels_set_thread_isa(-1) }
        for level in 0...Int(shoal_kernels_best_isa()) {
            _ = shoal_kernels_set_thread_isa(Int32(level))
            try body(Kernels.isa)
        }
    }

    @Test(arguments: types)
    func dequantizationEqualsTheReference(dtype: DType) {
        var rng = TestRNG(seed: 21)
        let W = QuantizedMatrix(dtype, rows: 5, cols: 3 * 256, rng: &rng)
        forEachISA { isa in
            let row = TestBuffer(filled: W.matrix.cols, with: .nan)
            var differing = 0
            for r in 0..<W.matrix.rows {
                W.matrix.copyRow(r, into: row.pointer)
                for c in 0..<W.matrix.cols where row.pointer[c].bitPattern != W.matrix.element(r, c).bitPattern {
                    differing += 1
                }
            }
            #expect(differing == 0, "\(isa) \(dtype): \(differing) weights differ from BlockFormat")
        }
    }

    /// GEMV and GEMM (streamed and blocked, one and several K blocks, split across threads) over
    /// quantized weights give exactly the float32 kernel's result over the dequantized weights.
    @Test(arguments: types)
    func productsEqualTheFloatKernelOnDequantizedWeights(dtype: DType) {
        var rng = TestRNG(seed: 22)
        let pools = [ComputePool(threads: 1), ComputePool(threads: 2)]
        forEachISA { isa in
            for (rows, cols) in [(3, 256), (37, 512), (70, 2304)] {
                let W = QuantizedMatrix(dtype, rows: rows, cols: cols, rng: &rng)
                let F = W.dequantized
                for n in [1, 2, 7, 33] {
                    let pool = pools[rng.int(0...1)]
                    let x = TestBuffer(random: n * cols, rng: &rng)
                    let quantized = TestBuffer(filled: n * rows, with: .nan)
                    let float = TestBuffer(filled: n * rows, with: .nan)
                    Kernels.gemm(MatMul(matrix: W.matrix, x: x.pointer, ldx: cols, n: n, y: quantized.pointer, ldy: rows),
                                 pool: pool)
                    Kernels.gemm(MatMul(matrix: F.matrix, x: x.pointer, ldx: cols, n: n, y: float.pointer, ldy: rows),
                                 pool: pool)
                    let differing = (0..<(n * rows)).filter {
                        quantized.pointer[$0].bitPattern != float.pointer[$0].bitPattern
                    }
                    #expect(differing.isEmpty, "\(isa) \(dtype) \(rows)x\(cols) n=\(n): \(differing.count) outputs differ")
                }
            }
        }
    }

    /// And against the Double reference directly, which reads weights through `BlockFormat`.
    @Test(arguments: types)
    func gemvMatchesDoubleReference(dtype: DType) {
        var rng = TestRNG(seed: 23)
        let pool = ComputePool(threads: 2)
        forEachISA { isa in
            let W = QuantizedMatrix(dtype, rows: 29, cols: 512, rng: &rng)
            let x = TestBuffer(random: 512, rng: &rng)
            let y = TestBuffer(filled: 29, with: .nan)
            Kernels.gemv(MatVec(matrix: W.matrix, x: x.pointer, y: y.pointer), pool: pool)
            let reference = TestBuffer(filled: 29, with: 0)
            ReferenceKernels.gemv(MatVec(matrix: W.matrix, x: x.pointer, y: reference.pointer))
            let worst = (0..<29).map { abs(y.pointer[$0] - reference.pointer[$0]) / max(1e-3, abs(reference.pointer[$0])) }.max()!
            // Float32 accumulation over 512 products: relative error ~1e-6; a misread block is O(1).
            #expect(worst < 1e-4, "\(isa) \(dtype): worst relative error \(worst)")
        }
    }

    /// The weight layout the kernels read: a Q4_K block with one known weight. Scale 1 and min 0
    /// in sub-block 3 (the high nibbles of chunk 1), d = 1: weight 64 + 32 + 5 is its nibble.
    @Test func q4KNibbleOrder() {
        var block = [UInt8](repeating: 0, count: 144)
        block[0] = 0x00; block[1] = 0x3C  // d = 1.0 (binary16 0x3C00)
        block[4 + 3] = 1  // sub-block 3: scale 1, min 0
        block[16 + 32 * 1 + 5] = 0xA0  // chunk 1, byte 5: high nibble 10
        let value = block.withUnsafeBytes { BlockFormat.weight(.q4_K, block: $0, index: 64 + 32 + 5) }
        #expect(value == 10)
        let low = block.withUnsafeBytes { BlockFormat.weight(.q4_K, block: $0, index: 64 + 5) }
        #expect(low == 0)  // sub-block 2 has scale 0
    }
}

/// A matrix of random ggml blocks: random quantized bytes, with finite binary16 scales of a
/// realistic size (random bits there would make Inf and NaN).
final class QuantizedMatrix {
    let matrix: Matrix
    private let storage: UnsafeMutableRawPointer

    init(_ dtype: DType, rows: Int, cols: Int, rng: inout TestRNG) {
        let bytes = rows * dtype.rowBytes(cols)
        storage = .allocate(byteCount: bytes + 64, alignment: 64)
        let base = storage + 3  // kernels must not assume aligned blocks
        for i in 0..<bytes { base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        let scaleOffsets: [Int] = switch dtype {
        case .q8_0, .q4_0: [0]
        case .q4_K, .q5_K: [0, 2]
        case .q6_K: [208]
        default: []
        }
        for block in 0..<(bytes / dtype.blockBytes) {
            for offset in scaleOffsets {
                let scale = Float16(Float(rng.int(1...1000)) / 20000)
                base.storeBytes(of: scale.bitPattern, toByteOffset: block * dtype.blockBytes + offset, as: UInt16.self)
            }
        }
        matrix = Matrix(dtype: dtype, rows: rows, cols: cols, base: UnsafeRawPointer(base))
    }

    /// The same weights dequantized into a float32 matrix (by `BlockFormat`).
    var dequantized: FloatMatrix {
        FloatMatrix(rows: matrix.rows, cols: matrix.cols) { r, c in self.matrix.element(r, c) }
    }

    deinit { storage.deallocate() }
}

/// An owned float32 matrix.
final class FloatMatrix {
    let matrix: Matrix
    private let storage: UnsafeMutablePointer<Float>

    init(rows: Int, cols: Int, value: (Int, Int) -> Float) {
        storage = .allocate(capacity: rows * cols)
        for r in 0..<rows { for c in 0..<cols { storage[r * cols + c] = value(r, c) } }
        matrix = Matrix(dtype: .f32, rows: rows, cols: cols, base: UnsafeRawPointer(storage))
    }

    deinit { storage.deallocate() }
}
