import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Every way a safetensors file can be unusable. Each message names the file, and the tensor
/// where one is involved.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened or mapped.
    case unreadable(file: String, reason: String)
    /// The file is shorter than its 8-byte header length, or than the header it announces.
    case truncated(file: String, detail: String)
    /// The JSON header does not parse, or an entry lacks `dtype`, `shape` or `data_offsets`.
    case malformedHeader(file: String, detail: String)
    /// A dtype this reader does not know.
    case unsupportedDType(file: String, tensor: String, dtype: String)
    /// `shape × dtype size` differs from the entry's byte range.
    case sizeMismatch(file: String, tensor: String, expected: Int, actual: Int)
    /// A byte range reaches outside the data section, or overlaps another tensor's.
    case badOffsets(file: String, tensor: String, detail: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason): return "\(file): cannot read: \(reason)"
        case let .truncated(file, detail): return "\(file): truncated: \(detail)"
        case let .malformedHeader(file, detail): return "\(file): malformed safetensors header: \(detail)"
        case let .unsupportedDType(file, tensor, dtype): return "\(file): tensor \(tensor) has unsupported dtype \(dtype)"
        case let .sizeMismatch(file, tensor, expected, actual):
            return "\(file): tensor \(tensor) needs \(expected) bytes for its shape but its data_offsets span \(actual)"
        case let .badOffsets(file, tensor, detail): return "\(file): tensor \(tensor): \(detail)"
        }
    }
}

/// Element types a safetensors file may hold. Only the float ones are model weights.
public enum ElementType: String, Sendable {
    case f32 = "F32", bf16 = "BF16", f16 = "F16", f64 = "F64"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    public var size: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .bf16, .f16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// The compute dtype of a weight stored as this type, if it is a float.
    public var weightDType: DType? {
        switch self {
        case .f32: return .f32
        case .bf16: return .bf16
        case .f16: return .f16
        default: return nil
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let type: ElementType
    public let shape: [Int]
    /// Byte range inside the data section (after the header).
    public let range: Range<Int>

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file whose header has been validated in full: every tensor's
/// dtype is known, its shape matches its byte range, ranges lie inside the file and do not
/// overlap. Tensor data stays mapped; nothing is copied.
///
/// `@unchecked Sendable`: the mapping is read-only and lives until `deinit`.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    private let mapping: UnsafeMutableRawPointer
    private let mappedLength: Int
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let name = (path as NSString).lastPathComponent
        let (p, length): (UnsafeMutableRawPointer, Int)
        switch mapFile(path) {
        case let .success(m): (p, length) = m
        case .failure(.empty): throw SafetensorsError.truncated(file: name, detail: "0 bytes, shorter than the 8-byte header length")
        case let .failure(.unreadable(reason)): throw SafetensorsError.unreadable(file: name, reason: reason)
        }
        guard length >= 8 else {
            munmap(p, length)
            throw SafetensorsError.truncated(file: name, detail: "\(length) bytes, shorter than the 8-byte header length")
        }
        mapping = p
        mappedLength = length
        do {
            let headerLength = Int(min(UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)), UInt64(Int.max)))
            guard headerLength <= length - 8 else {
                throw SafetensorsError.truncated(file: name, detail: "header announces \(headerLength) bytes, file has \(length - 8) after the length")
            }
            dataStart = 8 + headerLength
            let header = Data(bytes: p + 8, count: headerLength)
            (tensors, metadata) = try Self.parseHeader(header, file: name, dataLength: length - dataStart)
        } catch {
            munmap(p, length)
            throw error
        }
    }

    deinit { munmap(mapping, mappedLength) }

    /// The raw bytes of a tensor, valid as long as this file object lives.
    public func data(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mapping + dataStart + info.range.lowerBound, count: info.range.count)
    }


    /// Float32 copy of a tensor of any float or integer type (for tests and small tensors).
    public func floats(_ name: String) throws -> [Float] {
        guard let info = tensors[name] else {
            throw SafetensorsError.malformedHeader(file: (path as NSString).lastPathComponent, detail: "no tensor \(name)")
        }
        let raw = data(info)
        let n = info.elementCount
        return (0..<n).map { i in
            switch info.type {
            case .f32: return raw.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
            case .bf16: return bf16ToFloat(raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
            case .f16: return Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
            case .f64: return Float(raw.loadUnaligned(fromByteOffset: i * 8, as: Double.self))
            case .i64: return Float(raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))
            case .i32: return Float(raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))
            case .i16: return Float(raw.loadUnaligned(fromByteOffset: i * 2, as: Int16.self))
            case .i8: return Float(raw.loadUnaligned(fromByteOffset: i, as: Int8.self))
            case .u8, .bool: return Float(raw.loadUnaligned(fromByteOffset: i, as: UInt8.self))
            }
        }
    }

    private static func parseHeader(_ header: Data, file: String, dataLength: Int) throws
        -> ([String: TensorInfo], [String: String])
    {
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: header) } catch {
            throw SafetensorsError.malformedHeader(file: file, detail: "header is not JSON")
        }
        guard let object = json as? [String: Any] else {
            throw SafetensorsError.malformedHeader(file: file, detail: "header is not a JSON object")
        }
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { metadata[k] = v as? String ?? "\(v)" }
                continue
            }
            tensors[name] = try parseEntry(name, value, file: file, dataLength: dataLength)
        }
        // Ranges sorted by start must not overlap.
        let sorted = tensors.values.filter { !$0.range.isEmpty }.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.range.lowerBound < a.range.upperBound {
            throw SafetensorsError.badOffsets(file: file, tensor: b.name, detail: "its bytes overlap tensor \(a.name)")
        }
        return (tensors, metadata)
    }

    private static func parseEntry(_ name: String, _ value: Any, file: String, dataLength: Int) throws -> TensorInfo {
        guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
              let shapeValues = entry["shape"] as? [Any], let offsetValues = entry["data_offsets"] as? [Any]
        else {
            throw SafetensorsError.malformedHeader(file: file, detail: "entry \(name) needs dtype, shape and data_offsets")
        }
        guard let type = ElementType(rawValue: dtypeName) else {
            throw SafetensorsError.unsupportedDType(file: file, tensor: name, dtype: dtypeName)
        }
        let shape = shapeValues.compactMap { ($0 as? NSNumber)?.intValue }
        let offsets = offsetValues.compactMap { ($0 as? NSNumber)?.intValue }
        guard shape.count == shapeValues.count, shape.allSatisfy({ $0 >= 0 }), offsets.count == 2 else {
            throw SafetensorsError.malformedHeader(file: file, detail: "entry \(name) has a bad shape or data_offsets")
        }
        guard offsets[0] >= 0, offsets[0] <= offsets[1] else {
            throw SafetensorsError.badOffsets(file: file, tensor: name, detail: "data_offsets \(offsets) are not an ascending pair")
        }
        guard offsets[1] <= dataLength else {
            throw SafetensorsError.truncated(file: file, detail: "tensor \(name) ends at byte \(offsets[1]) of a \(dataLength)-byte data section")
        }
        var expected = type.size
        for d in shape {
            let (product, overflow) = expected.multipliedReportingOverflow(by: d)
            guard !overflow else { throw SafetensorsError.malformedHeader(file: file, detail: "entry \(name) shape overflows") }
            expected = product
        }
        guard expected == offsets[1] - offsets[0] else {
            throw SafetensorsError.sizeMismatch(file: file, tensor: name, expected: expected, actual: offsets[1] - offsets[0])
        }
        return TensorInfo(name: name, type: type, shape: shape, range: offsets[0]..<offsets[1])
    }
}

/// Advice to the kernel about bytes of a read-only file mapping (a tensor, or a slice of one).
public enum MappedPages {
    /// Read these bytes ahead (a worker's or coordinator's share of a file).
    public static func willNeed(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let start = Int(bitPattern: base) / pageSize * pageSize
        _ = madvise(UnsafeMutableRawPointer(bitPattern: start), Int(bitPattern: base) + bytes.count - start, MADV_WILLNEED)
    }

    /// Unmap these bytes' pages from this process (they stay in the page cache), for weights
    /// that were copied, so they no longer count in its resident memory. Only whole pages
    /// inside the range are dropped, never a neighbour's.
    public static func dontNeed(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let start = (Int(bitPattern: base) + pageSize - 1) / pageSize * pageSize
        let end = (Int(bitPattern: base) + bytes.count) / pageSize * pageSize
        if end > start { _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED) }
    }

    /// Reads one byte of every page of these bytes, so they are in memory when this returns
    /// (a worker's `--preload`: the first requests then do not wait on the disk). Returns a
    /// sum of what it read, so the reads cannot be left out.
    @discardableResult
    public static func touch(_ bytes: UnsafeRawBufferPointer) -> UInt8 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        willNeed(bytes)
        var sum: UInt8 = 0
        var offset = 0
        while offset < bytes.count {
            sum &+= base.load(fromByteOffset: offset, as: UInt8.self)
            offset += pageSize
        }
        return sum &+ base.load(fromByteOffset: bytes.count - 1, as: UInt8.self)
    }

    /// Touches every page of `matrices` in order (`touch(_:)`), calling
    /// `progress(bytesDone, bytesTotal)` after each: `--preload`'s work.
    public static func touch(_ matrices: [Matrix], progress: (Int, Int) -> Void) {
        let total = matrices.reduce(0) { $0 + $1.byteCount }
        var done = 0
        for m in matrices {
            touch(UnsafeRawBufferPointer(start: m.base, count: m.byteCount))
            done += m.byteCount
            progress(done, total)
        }
    }

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Why `mapFile` could not map a file.
enum MapFailure: Error {
    case empty
    case unreadable(String)
}

/// Opens and maps `path` read-only (`mapHugeAligned`); the caller unmaps it.
func mapFile(_ path: String) -> Result<(UnsafeMutableRawPointer, Int), MapFailure> {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return .failure(.unreadable(String(cString: strerror(errno)))) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { return .failure(.unreadable(String(cString: strerror(errno)))) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { return .failure(.unreadable("not a regular file")) }
    let length = Int(st.st_size)
    guard length > 0 else { return .failure(.empty) }
    guard let p = mapHugeAligned(fd: fd, length: length) else {
        return .failure(.unreadable("mmap: " + String(cString: strerror(errno))))
    }
    return .success((p, length))
}

/// Maps a file read-only at a 2 MiB-aligned address and asks for huge pages: the kernel
/// can then back the mapping with 2 MiB page-cache folios, so streaming weights during
/// decode does not pay a TLB miss every 4 KiB.
func mapHugeAligned(fd: Int32, length: Int) -> UnsafeMutableRawPointer? {
    let huge = 2 << 20
    guard let reserved = mmap(nil, length + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
          reserved != MAP_FAILED
    else { return nil }
    let start = (Int(bitPattern: reserved) + huge - 1) / huge * huge
    let head = start - Int(bitPattern: reserved)
    if head > 0 { munmap(reserved, head) }
    let tail = huge - head
    if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: start + length), tail) }
    guard let p = mmap(UnsafeMutableRawPointer(bitPattern: start), length, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0),
          p != MAP_FAILED
    else {
        munmap(UnsafeMutableRawPointer(bitPattern: start), length)
        return nil
    }
    _ = madvise(p, length, 14)  // MADV_HUGEPAGE
    return p
}
