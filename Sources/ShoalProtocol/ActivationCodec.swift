import Foundation
import ShoalTensor

/// Converts activations between `Float` and their wire bytes: row-major, little-endian on
/// every host, in f32 (bit-exact) or bf16 (round to nearest even: `floatToBF16`, the same
/// rounding the checkpoints' bf16 weights get).
///
/// Decoding writes straight into a caller's buffer, so a worker's run state receives a
/// request's activations with no intermediate array.
public enum ActivationCodec {
    // MARK: - Encode

    /// Writes `values` into `out` as `dtype`; `out.count` must be `values.count × dtype.byteWidth`.
    ///
    /// The size is the caller's own arithmetic, not network input, so a mismatch traps.
    public static func encode(
        _ values: UnsafeBufferPointer<Float>, as dtype: WireDType, into out: UnsafeMutableRawBufferPointer
    ) {
        precondition(out.count == values.count * dtype.byteWidth,
                     "encode: \(out.count) bytes for \(values.count) \(dtype) values")
        switch dtype {
        case .f32:
            for (i, x) in values.enumerated() {
                out.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        case .bf16:
            for (i, x) in values.enumerated() {
                out.storeBytes(of: floatToBF16(x).littleEndian, toByteOffset: i * 2, as: UInt16.self)
            }
        }
    }

    /// `values` as wire bytes in `dtype`.
    public static func encode(_ values: UnsafeBufferPointer<Float>, as dtype: WireDType) -> Data {
        var data = Data(count: values.count * dtype.byteWidth)
        data.withUnsafeMutableBytes { encode(values, as: dtype, into: $0) }
        return data
    }

    /// `values` as wire bytes in `dtype`.
    public static func encode(_ values: [Float], as dtype: WireDType) -> Data {
        values.withUnsafeBufferPointer { encode($0, as: dtype) }
    }

    // MARK: - Decode

    /// Decodes wire bytes in `dtype` into `out`, which receives `bytes.count / dtype.byteWidth`
    /// activations.
    ///
    /// - Throws: `ProtocolError.activationSize` when `bytes` is not exactly `out.count`
    ///   activations long (the bytes came from the network; nothing is written then).
    public static func decode(
        _ bytes: UnsafeRawBufferPointer, as dtype: WireDType, into out: UnsafeMutableBufferPointer<Float>
    ) throws(ProtocolError) {
        let expected = out.count * dtype.byteWidth
        guard bytes.count == expected else {
            throw .activationSize(expected: expected, actual: bytes.count)
        }
        switch dtype {
        case .f32:
            for i in out.indices {
                let bits = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
                out[i] = Float(bitPattern: bits)
            }
        case .bf16:
            for i in out.indices {
                let bits = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
                out[i] = bf16ToFloat(bits)
            }
        }
    }

    /// Decodes wire bytes in `dtype` into `out`; see `decode(_:as:into:)` for raw bytes.
    public static func decode(
        _ bytes: Data, as dtype: WireDType, into out: UnsafeMutableBufferPointer<Float>
    ) throws(ProtocolError) {
        // Data's closure API is not typed-throws; carry the error out by hand.
        let result: Result<Void, ProtocolError> = bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) {
                try decode(raw, as: dtype, into: out)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Wire bytes decoded into a new array; for tests and cold paths.
    public static func decode(_ bytes: Data, as dtype: WireDType) throws(ProtocolError) -> [Float] {
        guard bytes.count % dtype.byteWidth == 0 else {
            throw .activationSize(expected: bytes.count / dtype.byteWidth * dtype.byteWidth, actual: bytes.count)
        }
        var values = [Float](repeating: 0, count: bytes.count / dtype.byteWidth)
        try values.withUnsafeMutableBufferPointer { (out) throws(ProtocolError) in
            try decode(bytes, as: dtype, into: out)
        }
        return values
    }
}
