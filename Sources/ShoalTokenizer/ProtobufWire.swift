// The few pieces of the protobuf wire format (proto2) that a SentencePiece
// `ModelProto` uses: varints, 32-bit floats and length-delimited fields.
// https://protobuf.dev/programming-guides/encoding/

/// The wire type in the low three bits of a field key.
enum WireType: UInt8 {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case startGroup = 3
    case endGroup = 4
    case fixed32 = 5
}

/// One field read from a message: its number and its raw value.
enum WireValue {
    case varint(UInt64)
    case fixed64(UInt64)
    case fixed32(UInt32)
    case bytes(ArraySlice<UInt8>)
}

/// Reads the fields of one message, in order, from a byte range.
///
/// Every read is bounds-checked; a malformed message throws
/// `TokenizerError.malformedModel` and never traps.
struct WireReader {
    private let bytes: ArraySlice<UInt8>
    private var position: Int
    /// Names the message in error messages ("ModelProto", "TrainerSpec", ...).
    private let context: String

    init(_ bytes: ArraySlice<UInt8>, context: String) {
        self.bytes = bytes
        self.position = bytes.startIndex
        self.context = context
    }

    /// The next field, or nil at the end of the message.
    mutating func next() throws(TokenizerError) -> (field: Int, value: WireValue)? {
        guard position < bytes.endIndex else { return nil }
        let key = try readVarint()
        let field = key >> 3
        guard field > 0, field <= 0x1FFF_FFFF else {
            throw malformed("field number \(field) out of range")
        }
        guard let type = WireType(rawValue: UInt8(key & 7)) else {
            throw malformed("unknown wire type \(key & 7) for field \(field)")
        }
        switch type {
        case .varint:
            return (Int(field), .varint(try readVarint()))
        case .fixed64:
            return (Int(field), .fixed64(try readLittleEndian(count: 8)))
        case .fixed32:
            return (Int(field), .fixed32(UInt32(try readLittleEndian(count: 4))))
        case .lengthDelimited:
            let length = try readVarint()
            guard length <= UInt64(bytes.endIndex - position) else {
                throw malformed("field \(field) claims \(length) bytes, \(bytes.endIndex - position) remain")
            }
            let end = position + Int(length)
            defer { position = end }
            return (Int(field), .bytes(bytes[position..<end]))
        case .startGroup, .endGroup:
            // ModelProto has no groups; meeting one means the bytes are something else.
            throw malformed("unexpected group (wire type \(type.rawValue)) for field \(field)")
        }
    }

    private mutating func readVarint() throws(TokenizerError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < bytes.endIndex else { throw malformed("truncated varint") }
            let byte = bytes[position]
            position += 1
            // The tenth byte may only carry the top bit of a 64-bit value.
            if shift == 63 && byte > 1 { throw malformed("varint longer than 64 bits") }
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return result }
            shift += 7
        }
    }

    private mutating func readLittleEndian(count: Int) throws(TokenizerError) -> UInt64 {
        guard bytes.endIndex - position >= count else { throw malformed("truncated fixed\(count * 8)") }
        var result: UInt64 = 0
        for k in 0..<count {
            result |= UInt64(bytes[position + k]) << (8 * UInt64(k))
        }
        position += count
        return result
    }

    private func malformed(_ what: String) -> TokenizerError {
        .malformedModel("\(context): \(what) at byte \(position - bytes.startIndex)")
    }
}

extension WireValue {
    /// The value of a `bool` field.
    func bool(field: Int, in context: String) throws(TokenizerError) -> Bool {
        guard case .varint(let v) = self else { throw mismatch(field, context, "bool") }
        return v != 0
    }

    /// The value of an `int32` or enum field; negative values arrive sign-extended to 64 bits.
    func int32(field: Int, in context: String) throws(TokenizerError) -> Int {
        guard case .varint(let v) = self else { throw mismatch(field, context, "int32") }
        return Int(Int32(truncatingIfNeeded: v))
    }

    /// The value of a `float` field.
    func float(field: Int, in context: String) throws(TokenizerError) -> Float {
        guard case .fixed32(let v) = self else { throw mismatch(field, context, "float") }
        return Float(bitPattern: v)
    }

    /// The payload of a `string`, `bytes` or embedded message field.
    func bytes(field: Int, in context: String) throws(TokenizerError) -> ArraySlice<UInt8> {
        guard case .bytes(let v) = self else { throw mismatch(field, context, "length-delimited") }
        return v
    }

    /// The value of a `string` field, which must be valid UTF-8.
    func string(field: Int, in context: String) throws(TokenizerError) -> String {
        let raw = try bytes(field: field, in: context)
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw .malformedModel("\(context): field \(field) is not valid UTF-8")
        }
        return text
    }

    private func mismatch(_ field: Int, _ context: String, _ expected: String) -> TokenizerError {
        .malformedModel("\(context): field \(field) should be \(expected), found another wire type")
    }
}

/// Appends protobuf fields to a byte buffer.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ field: Int, _ value: UInt64) {
        key(field, .varint)
        rawVarint(value)
    }

    mutating func bool(_ field: Int, _ value: Bool) {
        varint(field, value ? 1 : 0)
    }

    /// Writes an `int32`; negative values are sign-extended to ten bytes, as protobuf does.
    mutating func int32(_ field: Int, _ value: Int32) {
        varint(field, UInt64(bitPattern: Int64(value)))
    }

    mutating func float(_ field: Int, _ value: Float) {
        key(field, .fixed32)
        let bits = value.bitPattern
        for k in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt32(k)))) }
    }

    mutating func lengthDelimited(_ field: Int, _ payload: some Collection<UInt8>) {
        key(field, .lengthDelimited)
        rawVarint(UInt64(payload.count))
        bytes.append(contentsOf: payload)
    }

    mutating func string(_ field: Int, _ value: String) {
        lengthDelimited(field, Array(value.utf8))
    }

    private mutating func key(_ field: Int, _ type: WireType) {
        rawVarint(UInt64(field) << 3 | UInt64(type.rawValue))
    }

    private mutating func rawVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }
}
