import Foundation

/// Writes a GGUF v3 file: the header first (metadata, then every tensor's record with its
/// offset, known up front from its type and shape), then each tensor's bytes in record order,
/// each padded to the alignment. Tensors are streamed, so a file larger than memory can be
/// written a few rows at a time.
public final class GGUFWriter {
    /// A metadata value with its GGUF type.
    public enum Value {
        case u32(UInt32), i32(Int32), f32(Float), bool(Bool), string(String), u64(UInt64)
        case strings([String]), f32s([Float]), i32s([Int32])
    }

    /// A tensor to be written: `dims` in GGUF order (`dims[0]` is a row's length).
    public struct Tensor {
        public let name: String
        public let type: DType
        public let dims: [Int]
        public init(name: String, type: DType, dims: [Int]) {
            self.name = name
            self.type = type
            self.dims = dims
        }
        public var byteCount: Int { type.rowBytes(dims[0]) * dims.dropFirst().reduce(1, *) }
    }

    public static let alignment = 32
    public let path: String
    public let tensors: [Tensor]
    private let handle: FileHandle
    private var next = 0  // index of the tensor being written
    private var writtenOfCurrent = 0
    private var buffer = Data()

    /// Creates `path` and writes the header.
    public init(path: String, metadata: [(String, Value)], tensors: [Tensor]) throws {
        self.path = path
        self.tensors = tensors
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path)
        else { throw GGUFError.unreadable(file: path, reason: "cannot create the file") }
        self.handle = handle
        var h = Data("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { h.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { h.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); h.append(contentsOf: Array(s.utf8)) }
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, value) in metadata {
            string(key)
            switch value {
            case let .u32(v): u32(4); u32(v)
            case let .i32(v): u32(5); u32(UInt32(bitPattern: v))
            case let .f32(v): u32(6); u32(v.bitPattern)
            case let .bool(v): u32(7); h.append(v ? 1 : 0)
            case let .string(v): u32(8); string(v)
            case let .u64(v): u32(10); u64(v)
            case let .strings(v): u32(9); u32(8); u64(UInt64(v.count)); v.forEach(string)
            case let .f32s(v): u32(9); u32(6); u64(UInt64(v.count)); v.forEach { u32($0.bitPattern) }
            case let .i32s(v): u32(9); u32(5); u64(UInt64(v.count)); v.forEach { u32(UInt32(bitPattern: $0)) }
            }
        }
        var offset = 0
        for t in tensors {
            string(t.name)
            u32(UInt32(t.dims.count))
            t.dims.forEach { u64(UInt64($0)) }
            u32(GGMLType.id(t.type))
            u64(UInt64(offset))
            offset += Self.padded(t.byteCount)
        }
        h.append(contentsOf: [UInt8](repeating: 0, count: Self.padded(h.count) - h.count))
        try handle.write(contentsOf: h)
    }

    static func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Appends bytes of the current tensor; when they complete it, pads and moves to the next.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(next < tensors.count, "every tensor has been written")
        let t = tensors[next]
        precondition(writtenOfCurrent + bytes.count <= t.byteCount, "more bytes than \(t.name) holds")
        buffer.append(contentsOf: bytes)
        writtenOfCurrent += bytes.count
        if writtenOfCurrent == t.byteCount {
            buffer.append(contentsOf: [UInt8](repeating: 0, count: Self.padded(t.byteCount) - t.byteCount))
            next += 1
            writtenOfCurrent = 0
        }
        if buffer.count >= 8 << 20 || next == tensors.count { try flush() }
    }

    private func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Checks that every tensor was written whole and closes the file.
    public func finish() throws {
        precondition(next == tensors.count, "tensor \(tensors[min(next, tensors.count - 1)].name) was not written")
        try flush()
        try handle.close()
    }
}
