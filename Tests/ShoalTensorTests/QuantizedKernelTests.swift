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
    static let types = DType.allCases.filter(\.isQuantized)

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
            // Float32 accumulation errs by a few ulps of the terms' magnitudes, Σ|w·x|, not of
            // the sum, which cancels: Q3_K's symmetric levels gave a row of 0.0207 from terms
            // summing to 169 in magnitude. Measured over every block type and ISA: at most
            // 4.3e-8 of Σ|w·x|; one misread weight is ~1/512 of it (2e-3), a misread block more.
            let worst = (0..<29).map { r in
                let magnitude = (0..<512).reduce(0.0) { $0 + abs(Double(W.matrix.element(r, $1)) * Double(x.pointer[$1])) }
                return Double(abs(y.pointer[r] - reference.pointer[r])) / magnitude
            }.max()!
            #expect(worst < 1e-6, "\(isa) \(dtype): worst error \(worst) of the terms' magnitude")
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

    /// Where the new formats keep each part of a weight, from ggml-common.h's structs and
    /// dequantize_row_*: blocks with one or two known weights, d = 1 (binary16 0x3C00).
    @Test func layoutsOfTheOtherFormats() {
        func weight(_ dtype: DType, _ bytes: [Int: UInt8], _ j: Int) -> Float {
            var block = [UInt8](repeating: 0, count: dtype.blockBytes)
            for (i, b) in bytes { block[i] = b }
            return block.withUnsafeBytes { BlockFormat.weight(dtype, block: $0, index: j) }
        }
        // Q4_1: d, m = 0.5 (0x3800), qs[16]; weight 16 + 3 is byte 3's high nibble: 7·1 + 0.5.
        #expect(weight(.q4_1, [1: 0x3C, 3: 0x38, 4 + 3: 0x70], 16 + 3) == 7.5)
        // Q5_0: d, qh (bit j: weight j's fifth bit), qs; weight 17 = byte 1's high nibble 2 plus
        // bit 17 of qh (byte 2 of qh, bit 1), minus 16: 2 + 16 − 16 = 2. Without the bit: −14.
        #expect(weight(.q5_0, [1: 0x3C, 2 + 2: 0x02, 6 + 1: 0x20], 17) == 2)
        #expect(weight(.q5_0, [1: 0x3C, 6 + 1: 0x20], 17) == -14)
        // Q5_1: d, m = 0.5, qh, qs; weight 17 as Q5_0's without the −16: 18 + 0.5.
        #expect(weight(.q5_1, [1: 0x3C, 3: 0x38, 4 + 2: 0x02, 8 + 1: 0x20], 17) == 18.5)
        // Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin = 0.5. Weight
        // 128 + 64 + 20 (second half, plane 2, sub-block 8 + 4 + 1) is bits 4-5 of qs[32 + 20]:
        // 3·scale 2 − 0.5·min 3.
        #expect(weight(.q2_K, [13: 0x32, 16 + 32 + 20: 0x30, 81: 0x3C, 83: 0x38], 128 + 64 + 20) == 4.5)
        // Q3_K: hmask[32], qs[64], scales[12], d. Weight 128 + 32 + 5 (second half, plane 1,
        // sub-block 8 + 2 = 10): bits 2-3 of qs[32 + 5], minus 4 unless bit 4 + 1 of hmask[5] is
        // set. Scale 10: low nibble the high nibble of byte 2, top bits 4-5 of byte 8 + 2;
        // 0x25 − 32 = 5.
        let q3 = [96 + 2: UInt8(0x50), 96 + 10: 0x20, 32 + 32 + 5: 0x08, 109: 0x3C]
        #expect(weight(.q3_K, q3, 128 + 32 + 5) == 5 * (2 - 4))
        #expect(weight(.q3_K, q3.merging([5: 0x20]) { $1 }, 128 + 32 + 5) == 5 * 2)
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
        case .q8_0, .q4_0, .q5_0: [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: [0, 2]
        case .q2_K: [80, 82]
        case .q3_K: [108]
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
