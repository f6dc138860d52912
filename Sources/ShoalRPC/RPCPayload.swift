import CGRPCCore

/// The bytes of one message, held in a reference-counted gRPC slice.
///
/// Sending makes a new `grpc_byte_buffer` that takes one more reference on the same slice, so one
/// payload can go to several channels at once without a copy. A received payload keeps a
/// reference on the slice the transport delivered when the message arrived in one slice (the
/// common case) and is copied once only when it spans several.
///
/// `Sendable` is sound because the slice is never written after the initializer returns, and its
/// reference count is atomic in the C core: copies of a payload on different threads only read it.
public struct RPCPayload: Sendable {
    let storage: SliceStorage

    /// The number of bytes.
    public var count: Int { storage.count }

    /// A payload holding a copy of `bytes` (one copy, into a new slice).
    public init(_ bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count) { destination in
            if let base = bytes.baseAddress { destination.baseAddress!.copyMemory(from: base, byteCount: bytes.count) }
        }
    }

    /// A payload holding a copy of `bytes`.
    public init(_ bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { RPCPayload($0) }
    }

    /// A payload of `count` bytes that `initializer` writes in place, directly into the new
    /// slice. Every byte should be written: the memory starts uninitialized.
    public init(count: Int, initializingWith initializer: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        precondition(count >= 0, "negative payload size")
        let storage = SliceStorage(taking: grpc_slice_malloc(count))
        try initializer(UnsafeMutableRawBufferPointer(start: cgrpc_slice_start(storage.slice), count: count))
        self.storage = storage
    }

    /// Calls `body` with the bytes, which are valid only during the call.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(storage) {
            try body(UnsafeRawBufferPointer(start: cgrpc_slice_start(storage.slice), count: storage.count))
        }
    }

    /// A new byte buffer that references this payload's slice; a send consumes it.
    func makeByteBuffer() -> UnsafeMutablePointer<grpc_byte_buffer> {
        grpc_raw_byte_buffer_create(storage.slice, 1)
    }

    /// Takes the message out of `byteBuffer` and destroys the buffer.
    init(consuming byteBuffer: UnsafeMutablePointer<grpc_byte_buffer>) {
        defer { grpc_byte_buffer_destroy(byteBuffer) }
        let reader = UnsafeMutablePointer<grpc_byte_buffer_reader>.allocate(capacity: 1)
        defer { reader.deallocate() }
        guard grpc_byte_buffer_reader_init(reader, byteBuffer) != 0 else {
            // Only a compressed buffer that fails to decompress gets here; we never enable compression.
            storage = SliceStorage(taking: grpc_empty_slice())
            return
        }
        defer { grpc_byte_buffer_reader_destroy(reader) }

        // Peek at the slices without copying; they stay valid while the reader and buffer live.
        var slices: [UnsafeMutablePointer<grpc_slice>] = []
        var next: UnsafeMutablePointer<grpc_slice>?
        while grpc_byte_buffer_reader_peek(reader, &next) != 0, let slice = next {
            slices.append(slice)
        }
        switch slices.count {
        case 0:
            storage = SliceStorage(taking: grpc_empty_slice())
        case 1:
            storage = SliceStorage(taking: grpc_slice_ref(slices[0].pointee))
        default:
            let total = slices.reduce(0) { $0 + cgrpc_slice_length($1) }
            let joined = SliceStorage(taking: grpc_slice_malloc(total))
            var destination = UnsafeMutableRawPointer(cgrpc_slice_start(joined.slice))!
            for slice in slices {
                let length = cgrpc_slice_length(slice)
                destination.copyMemory(from: cgrpc_slice_start(slice), byteCount: length)
                destination += length
            }
            storage = joined
        }
    }
}

/// Owns one reference on a `grpc_slice`, kept at a fixed heap address: a slice of at most 23
/// bytes stores its bytes inline in the struct, so its start pointer is only as stable as the
/// struct itself.
final class SliceStorage: @unchecked Sendable {
    let slice: UnsafeMutablePointer<grpc_slice>
    let count: Int

    init(taking slice: grpc_slice) {
        self.slice = .allocate(capacity: 1)
        self.slice.initialize(to: slice)
        count = cgrpc_slice_length(self.slice)
    }

    deinit {
        grpc_slice_unref(slice.pointee)
        slice.deinitialize(count: 1)
        slice.deallocate()
    }
}
