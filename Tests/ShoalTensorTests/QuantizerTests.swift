import Foundation
import ShoalTensor
import Testing

/// `Quantizer` on finite rows no trained model holds but an odd or damaged checkpoint can: all
/// zeros, subnormals, scales below what a block's fp16 header can hold, a lone spike. In C,
/// llama.cpp's quantizers turn a scale that underflows into `1/d = inf` and `0 · inf = NaN`
/// and convert that to an integer (undefined behaviour); Swift's conversions trap on it. Each
/// row must quantize, and dequantize to finite weights no further from the row than its largest
/// magnitude (a scale that underflows to zero gives zeros). Rows with NaN or infinities, and
/// rows too large for a block's fp16 scale, are the caller's to refuse (`GGUFExport`).
@Suite struct QuantizerTests {
    static let rows: [(String, [Float])] = {
        var rng = SplitMix64(seed: 9)
        func random(_ scale: Float) -> [Float] {
            (0..<512).map { _ in (Float(rng.next() >> 40) / Float(1 << 24) * 2 - 1) * scale }
        }
        var spike = [Float](repeating: 0, count: 512)
        spike[300] = -2.5
        return [
            ("zeros", [Float](repeating: 0, count: 512)),
            ("subnormals", random(1e-40)),
            ("the smallest subnormal", (0..<512).map { $0 % 3 == 0 ? Float.leastNonzeroMagnitude : 0 }),
            ("scales below fp16's", random(1e-12)),
            ("one spike", spike),
            ("large", random(3e3)),
        ]
    }()

    /// F16 is left out: weights never stay F16 in memory (widened to F32 at load).
    @Test(arguments: DType.allCases.filter { $0 != .f16 })
    func edgeRowsQuantizeAndStayClose(dtype: DType) {
        for (name, x) in Self.rows {
            let bytes = UnsafeMutableRawPointer.allocate(byteCount: dtype.rowBytes(x.count), alignment: 64)
            defer { bytes.deallocate() }
            x.withUnsafeBufferPointer { Quantizer.quantize(dtype, $0.baseAddress!, count: x.count, into: bytes) }
            var back = [Float](repeating: .nan, count: x.count)
            back.withUnsafeMutableBufferPointer {
                Matrix(dtype: dtype, rows: 1, cols: x.count, base: UnsafeRawPointer(bytes)).copyRow(0, into: $0.baseAddress!)
            }
            let largest = x.map(abs).max()!
            let worst = zip(x, back).map { abs($0 - $1) }.max()!
            #expect(back.allSatisfy(\.isFinite) && worst <= largest, "\(dtype) \(name): error \(worst), largest magnitude \(largest)")
        }
    }
}
