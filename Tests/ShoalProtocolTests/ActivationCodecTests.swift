import Foundation
import ShoalProtocol
import ShoalTensor
import Testing

/// bf16 by a different route than the codec's bit trick: the two neighbouring bf16 values
/// compared by exact distance in Double, ties to the even mantissa.
func bf16Reference(_ x: Float) -> UInt16 {
    let toward0 = UInt16(truncatingIfNeeded: x.bitPattern >> 16)
    let low = Float(bitPattern: UInt32(toward0) << 16)
    if low == x { return toward0 }
    let away = toward0 &+ 1
    let highF = Float(bitPattern: UInt32(away) << 16)
    // Rounding up past the largest finite bf16 goes to infinity, which sits where 2^128 would.
    let high = highF.isInfinite ? (x < 0 ? -0x1p128 : 0x1p128) : Double(highF)
    let dLow = abs(Double(x) - Double(low)), dHigh = abs(Double(x) - high)
    if dLow != dHigh { return dLow < dHigh ? toward0 : away }
    return toward0 & 1 == 0 ? toward0 : away
}

@Suite struct ActivationCodecTests {
    static let specials: [Float] = [
        0, -0.0, 1, -1, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
        .leastNormalMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .pi, 1.00390625, 65504,
    ]

    @Test func f32IsBitExact() throws {
        var rng = SeededRNG(seed: 1)
        var values = Self.specials
        values += [Float(bitPattern: 0x7FC0_0001), Float(bitPattern: 0xFF80_0001)]  // NaN payloads
        values += (0..<10_000).map { _ in Float(bitPattern: UInt32.random(in: .min ... .max, using: &rng)) }
        let bytes = ActivationCodec.encode(values, as: .f32)
        #expect(bytes.count == values.count * 4)
        let back = try ActivationCodec.decode(bytes, as: .f32)
        #expect(back.map(\.bitPattern) == values.map(\.bitPattern))
    }

    @Test func littleEndianOnTheWire() {
        #expect(Array(ActivationCodec.encode([1.0], as: .f32)) == [0x00, 0x00, 0x80, 0x3F])
        #expect(Array(ActivationCodec.encode([1.0, -2.0], as: .bf16)) == [0x80, 0x3F, 0x00, 0xC0])
    }

    @Test func bf16TiesGoToEven() {
        // 1 + 2^-8 is halfway between 1.0 (0x3F80) and 1 + 2^-7 (0x3F81): even wins, down.
        #expect(floatToBF16(1.00390625) == 0x3F80)
        // 1 + 3·2^-8 is halfway between 0x3F81 and 0x3F82: even wins, up.
        #expect(floatToBF16(1.01171875) == 0x3F82)
        #expect(floatToBF16(-1.00390625) == 0xBF80)
        // Just above the tie rounds up.
        #expect(floatToBF16(Float(bitPattern: 0x3F80_8001)) == 0x3F81)
        #expect(floatToBF16(.greatestFiniteMagnitude) == 0x7F80)
        #expect(floatToBF16(-0.0) == 0x8000)
        #expect(floatToBF16(-.infinity) == 0xFF80)
    }

    @Test func bf16KeepsNaN() {
        // A NaN whose payload lives only in the low bits must not truncate into infinity.
        for bits: UInt32 in [0x7F80_0001, 0xFF80_0001, 0x7FC0_0000, 0x7FFF_FFFF, 0xFFFF_FFFF] {
            let encoded = floatToBF16(Float(bitPattern: bits))
            let decoded = bf16ToFloat(encoded)
            #expect(decoded.isNaN, "0x\(String(bits, radix: 16)) → 0x\(String(encoded, radix: 16))")
            #expect(decoded.sign == Float(bitPattern: bits).sign)
        }
    }

    @Test func bf16MatchesReference() throws {
        var rng = SeededRNG(seed: 2)
        var values = Self.specials
        values += (0..<50_000).map { _ in Float(bitPattern: UInt32.random(in: .min ... .max, using: &rng)) }
        values += (0..<10_000).map { _ in Float.random(in: -4...4, using: &rng) }
        values = values.filter { !$0.isNaN }
        let back = try ActivationCodec.decode(ActivationCodec.encode(values, as: .bf16), as: .bf16)
        for (x, y) in zip(values, back) where y.bitPattern != UInt32(bf16Reference(x)) << 16 {
            Issue.record("bf16(\(x)) = \(y), reference \(bf16ToFloat(bf16Reference(x)))")
            break
        }
    }

    @Test func decodesIntoCallerBufferFromSliceAndOddOffset() throws {
        let values: [Float] = [1.5, -0.0, .leastNonzeroMagnitude, -7]
        // A Data slice starting at an odd offset: unaligned, with a non-zero startIndex.
        let padded = Data([0xAA]) + ActivationCodec.encode(values, as: .f32) + Data([0xBB])
        let slice = padded[1..<(padded.count - 1)]
        var out = [Float](repeating: .nan, count: 4)
        try out.withUnsafeMutableBufferPointer { (buffer) throws(ProtocolError) in
            try ActivationCodec.decode(slice, as: .f32, into: buffer)
        }
        #expect(out.map(\.bitPattern) == values.map(\.bitPattern))
    }

    @Test func decodeRejectsWrongSizes() {
        var out = [Float](repeating: 0, count: 3)
        out.withUnsafeMutableBufferPointer { buffer in
            #expect(throws: ProtocolError.activationSize(expected: 12, actual: 11)) {
                try ActivationCodec.decode(Data(count: 11), as: .f32, into: buffer)
            }
            #expect(throws: ProtocolError.activationSize(expected: 6, actual: 8)) {
                try ActivationCodec.decode(Data(count: 8), as: .bf16, into: buffer)
            }
        }
        #expect(out == [0, 0, 0])  // nothing written on failure
        #expect(throws: ProtocolError.activationSize(expected: 4, actual: 5)) {
            try ActivationCodec.decode(Data(count: 5), as: .f32)
        }
    }
}
