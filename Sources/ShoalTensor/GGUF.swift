// A reader of GGUF v2/v3 files, the container of llama.cpp's models (the layout documented at
// the top of llama.cpp's `ggml/include/gguf.h`; docs/gguf.md in this repository says what Shoal
// reads of it). Everything is validated before a single weight is used.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Every way a GGUF file can be unusable. Each message names the file, and the key or tensor
/// where one is involved.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened or mapped.
    case unreadable(file: String, reason: String)
    /// The file does not start with `GGUF`.
    case notGGUF(file: String)
    /// A container version other than 2 or 3.
    case unsupportedVersion(file: String, version: UInt32)
    /// The file ends inside its header, or before a tensor's last byte.
    case truncated(file: String, detail: String)
    /// A count, a length, a value type or a shape that cannot be right.
    case malformed(file: String, detail: String)
    /// A tensor type Shoal has no kernel for.
    case unsupportedType(file: String, tensor: String, type: String)
    /// A tensor whose offset is misaligned, or whose bytes overlap another tensor's.
    case badOffset(file: String, tensor: String, detail: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason): return "\(file): cannot read: \(reason)"
        case let .notGGUF(file): return "\(file): not a GGUF file (it does not start with the bytes GGUF)"
        case let .unsupportedVersion(file, version): return "\(file): GGUF version \(version); Shoal reads versions 2 and 3"
        case let .truncated(file, detail): return "\(file): truncated: \(detail)"
        case let .malformed(file, detail): return "\(file): malformed GGUF: \(detail)"
        case let .unsupportedType(file, tensor, type):
            return "\(file): tensor \(tensor) has type \(type); Shoal computes with \(DType.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .badOffset(file, tensor, detail): return "\(file): tensor \(tensor): \(detail)"
        }
    }
}

/// A metadata value (`gguf_type`); integers of every width are widened, floats to Double.
public enum GGUFValue: Sendable, Equatable {
    case unsigned(UInt64)
    case signed(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])

    /// A non-negative integer value of any width.
    public var int: Int? {
        switch self {
        case let .unsigned(v): return v <= UInt64(Int.max) ? Int(v) : nil
        case let .signed(v): return v >= 0 ? Int(v) : nil
        default: return nil
        }
    }

    public var double: Double? {
        switch self {
        case let .float(v): return v
        case let .unsigned(v): return Double(v)
        case let .signed(v): return Double(v)
        default: return nil
        }
    }

    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var array: [GGUFValue]? { if case let .array(a) = self { return a } else { return nil } }
}

/// One tensor record of a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: DType
    /// `ne`: `dims[0]` is the contiguous dimension (a row's length); a 2-D `[in, out]` tensor is
    /// the row-major matrix `[out][in]`, a 3-D `[in, out, n]` is `n` such matrices.
    public let dims: [Int]
    /// Absolute position of the first byte in the file.
    public let offset: Int
    public let byteCount: Int

    /// The PyTorch-order shape: `dims` reversed.
    public var shape: [Int] { dims.reversed() }
}

/// A memory-mapped GGUF file whose header has been validated in full: magic, version, counts,
/// every string and array length against the file, every tensor's type, shape, size and
/// alignment, and that no two tensors overlap. Tensor bytes stay mapped; nothing is copied.
///
/// `@unchecked Sendable`: the mapping is read-only and lives until `deinit`.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Tensor records in file order.
    public let tensorList: [GGUFTensorInfo]
    public let tensors: [String: GGUFTensorInfo]
    /// `general.alignment`, or 32 when absent.
    public let alignment: Int
    /// Absolute position of the tensor data section.
    public let dataOffset: Int
    public let fileSize: Int
    private let mapping: UnsafeMutableRawPointer

    /// Whether `path` starts with the GGUF magic (without validating the rest).
    public static func looksLikeGGUF(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    public init(path: String) throws {
        self.path = path
        let name = (path as NSString).lastPathComponent
        let (p, length): (UnsafeMutableRawPointer, Int)
        switch mapFile(path) {
        case let .success(m): (p, length) = m
        case .failure(.empty): throw GGUFError.truncated(file: name, detail: "the file is empty")
        case let .failure(.unreadable(reason)): throw GGUFError.unreadable(file: name, reason: reason)
        }
        mapping = p
        fileSize = length
        do {
            let header = try GGUFHeader(UnsafeRawBufferPointer(start: p, count: length), file: name)
            version = header.version
            metadata = header.metadata
            tensorList = header.tensors
            tensors = Dictionary(uniqueKeysWithValues: header.tensors.map { ($0.name, $0) })  // names checked unique
            alignment = header.alignment
            dataOffset = header.dataOffset
        } catch {
            munmap(p, length)
            throw error
        }
    }

    deinit { munmap(mapping, fileSize) }

    /// The raw bytes of a tensor, valid as long as this file object lives.
    public func data(_ info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mapping + info.offset, count: info.byteCount)
    }

    /// A metadata value by key.
    public subscript(key: String) -> GGUFValue? { metadata[key] }
}

/// ggml type ids (`enum ggml_type`) by name, for the ones Shoal reads and for naming the others.
enum GGMLType {
    /// The Shoal type of ggml type `id`, if Shoal reads it (the inverse of `id(_:)`).
    static func dtype(_ id: UInt32) -> DType? { DType.allCases.first { Self.id($0) == id } }

    static func id(_ dtype: DType) -> UInt32 {
        switch dtype {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q5_0: return 6
        case .q5_1: return 7
        case .q8_0: return 8
        case .q2_K: return 10
        case .q3_K: return 11
        case .q4_K: return 12
        case .q5_K: return 13
        case .q6_K: return 14
        case .bf16: return 30
        }
    }

    static func name(_ id: UInt32) -> String {
        let names: [UInt32: String] = [
            9: "Q8_1", 15: "Q8_K",
            16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
            23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
            34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
        ]
        return dtype(id)?.rawValue ?? names[id] ?? "type id \(id)"
    }
}

/// The parse of everything before the tensor data, checked against the file's length.
struct GGUFHeader {
    var version: UInt32 = 0
    var metadata: [String: GGUFValue] = [:]
    var tensors: [GGUFTensorInfo] = []
    var alignment = 32
    var dataOffset = 0

    /// ggml's limit on dimensions.
    static let maxDims = 4

    init(_ bytes: UnsafeRawBufferPointer, file: String) throws {
        var r = Reader(bytes: bytes, file: file)
        guard bytes.count >= 4 else { throw GGUFError.truncated(file: file, detail: "\(bytes.count) bytes, shorter than the magic") }
        guard bytes[0] == 0x47, bytes[1] == 0x47, bytes[2] == 0x55, bytes[3] == 0x46 else { throw GGUFError.notGGUF(file: file) }
        r.position = 4
        version = try r.u32("the version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(file: file, version: version) }
        let tensorCount = try r.count("the tensor count", minimumBytesEach: 8 + 4 + 8 + 4 + 8)
        let kvCount = try r.count("the metadata count", minimumBytesEach: 8 + 4 + 1)

        for _ in 0..<kvCount {
            let key = try r.string("a metadata key")
            let value = try r.value(type: try r.u32("the type of \(key)"), key: key, nested: false)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw GGUFError.malformed(file: file, detail: "metadata key \(key) appears twice")
            }
        }
        if let a = metadata["general.alignment"] {
            guard case let .unsigned(v) = a, v > 0, v <= 1 << 20, v & (v - 1) == 0 else {
                throw GGUFError.malformed(file: file, detail: "general.alignment must be a power of two up to 1 MiB, not \(a)")
            }
            alignment = Int(v)
        }

        var records: [(name: String, type: DType, dims: [Int], offset: UInt64, bytes: Int)] = []
        var seen = Set<String>()
        for _ in 0..<tensorCount {
            let name = try r.string("a tensor name")
            guard seen.insert(name).inserted else { throw GGUFError.malformed(file: file, detail: "tensor \(name) appears twice") }
            let nDims = try r.u32("the dimensions of \(name)")
            guard nDims >= 1, nDims <= Self.maxDims else {
                throw GGUFError.malformed(file: file, detail: "tensor \(name) has \(nDims) dimensions (1 to \(Self.maxDims))")
            }
            var dims: [Int] = []
            var elements = 1
            for _ in 0..<nDims {
                let d = try r.u64("a dimension of \(name)")
                guard d > 0, d <= UInt64(Int32.max) else {
                    throw GGUFError.malformed(file: file, detail: "tensor \(name) has dimension \(d)")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
                guard !overflow, product <= 1 << 48 else { throw GGUFError.malformed(file: file, detail: "tensor \(name) is too large") }
                elements = product
                dims.append(Int(d))
            }
            let typeId = try r.u32("the type of \(name)")
            guard let type = GGMLType.dtype(typeId) else {
                throw GGUFError.unsupportedType(file: file, tensor: name, type: GGMLType.name(typeId))
            }
            guard dims[0] % type.blockWeights == 0 else {
                throw GGUFError.malformed(file: file, detail: "tensor \(name): rows of \(dims[0]) weights do not hold whole \(type.rawValue) blocks of \(type.blockWeights)")
            }
            let offset = try r.u64("the offset of \(name)")
            records.append((name, type, dims, offset, elements / type.blockWeights * type.blockBytes))
        }

        let end = r.position
        let (padded, overflow) = end.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw GGUFError.malformed(file: file, detail: "header too large") }
        dataOffset = padded / alignment * alignment
        let dataLength = bytes.count - min(dataOffset, bytes.count)
        for t in records {
            guard t.offset % UInt64(alignment) == 0 else {
                throw GGUFError.badOffset(file: file, tensor: t.name, detail: "offset \(t.offset) is not a multiple of the alignment \(alignment)")
            }
            guard t.offset <= UInt64(dataLength), t.bytes <= dataLength - Int(t.offset) else {
                throw GGUFError.truncated(file: file, detail: "tensor \(t.name) needs bytes \(t.offset)..<\(t.offset + UInt64(t.bytes)) of the data section, which holds \(dataLength)")
            }
            tensors.append(GGUFTensorInfo(name: t.name, type: t.type, dims: t.dims, offset: dataOffset + Int(t.offset), byteCount: t.bytes))
        }
        let sorted = tensors.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.offset < a.offset + a.byteCount {
            throw GGUFError.badOffset(file: file, tensor: b.name, detail: "its bytes overlap tensor \(a.name)")
        }
    }

    /// Little-endian reads that throw `truncated` instead of running past the end.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        let file: String
        var position = 0

        mutating func take(_ n: Int, _ what: @autoclosure () -> String) throws -> Int {
            guard n >= 0, n <= bytes.count - position else {
                throw GGUFError.truncated(file: file, detail: "the file ends inside \(what()) (byte \(position) of \(bytes.count))")
            }
            defer { position += n }
            return position
        }

        mutating func u8(_ what: @autoclosure () -> String) throws -> UInt8 { bytes[try take(1, what())] }
        mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 {
            UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(4, what()), as: UInt32.self))
        }
        mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 {
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(8, what()), as: UInt64.self))
        }

        /// A count of items each at least `minimumBytesEach` long: more than the rest of the file
        /// could hold is malformed (so a damaged count cannot make us allocate or loop for long).
        mutating func count(_ what: String, minimumBytesEach: Int) throws -> Int {
            let n = try u64(what)
            guard n <= UInt64((bytes.count - position) / minimumBytesEach) else {
                throw GGUFError.malformed(file: file, detail: "\(what) is \(n), more than the file's \(bytes.count) bytes can hold")
            }
            return Int(n)
        }

        mutating func string(_ what: @autoclosure () -> String) throws -> String {
            let n = try u64(what())
            guard n <= UInt64(bytes.count - position) else {
                throw GGUFError.truncated(file: file, detail: "the file ends inside \(what()) of \(n) bytes (byte \(position) of \(bytes.count))")
            }
            let start = try take(Int(n), what())
            guard let s = String(validating: bytes[start..<(start + Int(n))], as: UTF8.self) else {
                throw GGUFError.malformed(file: file, detail: "\(what()) at byte \(start) is not UTF-8")
            }
            return s
        }

        /// A value of `gguf_type` `type`: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool,
        /// 8 string, 9 array (element type + count + elements; not of arrays), 10 u64, 11 i64, 12 f64.
        mutating func value(type: UInt32, key: String, nested: Bool) throws -> GGUFValue {
            func scalar<T: FixedWidthInteger>(_: T.Type) throws -> T {
                T(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(MemoryLayout<T>.size, "the value of \(key)"), as: T.self))
            }
            switch type {
            case 0: return .unsigned(UInt64(try scalar(UInt8.self)))
            case 1: return .signed(Int64(try scalar(Int8.self)))
            case 2: return .unsigned(UInt64(try scalar(UInt16.self)))
            case 3: return .signed(Int64(try scalar(Int16.self)))
            case 4: return .unsigned(UInt64(try scalar(UInt32.self)))
            case 5: return .signed(Int64(try scalar(Int32.self)))
            case 6: return .float(Double(Float(bitPattern: try scalar(UInt32.self))))
            case 7:
                let b = try scalar(UInt8.self)
                guard b <= 1 else { throw GGUFError.malformed(file: file, detail: "\(key) is a bool of value \(b)") }
                return .bool(b == 1)
            case 8: return .string(try string("the value of \(key)"))
            case 9:
                guard !nested else { throw GGUFError.malformed(file: file, detail: "\(key) is an array of arrays") }
                let elementType = try u32("the element type of \(key)")
                let minimum = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8]
                guard elementType < minimum.count else {
                    throw GGUFError.malformed(file: file, detail: "\(key) is an array of unknown type \(elementType)")
                }
                let n = try count("the length of \(key)", minimumBytesEach: minimum[Int(elementType)])
                var values: [GGUFValue] = []
                values.reserveCapacity(n)
                for _ in 0..<n { values.append(try value(type: elementType, key: key, nested: true)) }
                return .array(values)
            case 10: return .unsigned(try scalar(UInt64.self))
            case 11: return .signed(try scalar(Int64.self))
            case 12: return .float(Double(bitPattern: try scalar(UInt64.self)))
            default: throw GGUFError.malformed(file: file, detail: "\(key) has unknown value type \(type)")
            }
        }
    }
}
