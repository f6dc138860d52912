import Foundation

/// Writes a safetensors file tensor by tensor, so that large checkpoints never sit in memory
/// whole: declare every tensor first (the header needs all offsets), then stream the bytes
/// in declaration order.
public final class SafetensorsWriter {
    public struct Declared { let name: String; let type: ElementType; let shape: [Int] }

    private let handle: FileHandle
    private let declared: [Declared]
    private var next = 0
    private var written = 0

    /// Creates the file at `path` and writes its header.
    public init(path: String, tensors: [Declared], metadata: [String: String] = ["format": "pt"]) throws {
        declared = tensors
        var entries: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            let bytes = t.shape.reduce(t.type.size, *)
            entries[t.name] = ["dtype": t.type.rawValue, "shape": t.shape, "data_offsets": [offset, offset + bytes]]
            offset += bytes
        }
        var header = try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys])
        // Pad with spaces so tensor data starts 8-byte aligned, as the reference writer does.
        while header.count % 8 != 0 { header.append(0x20) }
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let h = FileHandle(forWritingAtPath: path)
        else { throw SafetensorsError.unreadable(file: path, reason: "cannot create") }
        handle = h
        var length = UInt64(header.count).littleEndian
        try handle.write(contentsOf: Data(bytes: &length, count: 8))
        try handle.write(contentsOf: header)
    }

    /// Declares a tensor for `init(path:tensors:)`.
    public static func tensor(_ name: String, _ type: ElementType, _ shape: [Int]) -> Declared {
        Declared(name: name, type: type, shape: shape)
    }

    /// Appends the next declared tensor's bytes (or part of them; call again for the rest).
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        try handle.write(contentsOf: Data(bytes: bytes.baseAddress!, count: bytes.count))
        written += bytes.count
    }

    /// Checks that every declared byte was written, and closes the file.
    public func finish() throws {
        let total = declared.reduce(0) { $0 + $1.shape.reduce($1.type.size, *) }
        precondition(written == total, "wrote \(written) of \(total) declared bytes")
        try handle.close()
    }

    /// Writes a whole file of float32 tensors at once (small outputs such as `shoal logits`).
    public static func writeFloat32(path: String, tensors: [(name: String, shape: [Int], values: [Float])]) throws {
        let writer = try SafetensorsWriter(
            path: path, tensors: tensors.map { tensor($0.name, .f32, $0.shape) })
        for t in tensors { try t.values.withUnsafeBytes { try writer.append($0) } }
        try writer.finish()
    }
}
