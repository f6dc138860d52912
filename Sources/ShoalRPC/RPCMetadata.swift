import CGRPCCore

/// Request metadata a client sends with every call of a channel (`authorization: Bearer …`),
/// held in the core's own array form for the calls' lifetime.
final class SentMetadata: @unchecked Sendable {
    let count: Int
    let entries: UnsafeMutablePointer<grpc_metadata>?

    /// `pairs`: lowercase names (gRPC requires them), values without line breaks.
    init(_ pairs: [(name: String, value: String)]) {
        count = pairs.count
        guard !pairs.isEmpty else { entries = nil; return }
        let entries = UnsafeMutablePointer<grpc_metadata>.allocate(capacity: pairs.count)
        for (i, pair) in pairs.enumerated() {
            var entry = grpc_metadata()
            entry.key = grpc_slice_from_copied_string(pair.name)
            entry.value = grpc_slice_from_copied_string(pair.value)
            (entries + i).initialize(to: entry)
        }
        self.entries = entries
    }

    deinit {
        guard let entries else { return }
        for i in 0..<count {
            grpc_slice_unref(entries[i].key)
            grpc_slice_unref(entries[i].value)
        }
        entries.deallocate()
    }

    /// Points a `GRPC_OP_SEND_INITIAL_METADATA` op at these entries.
    func attach(to op: inout grpc_op) {
        op.data.send_initial_metadata.count = count
        op.data.send_initial_metadata.metadata = entries
    }
}

/// The metadata the core received with a call, as strings (binary `-bin` values as raw bytes
/// decoded leniently; nothing here needs them).
func receivedMetadata(_ array: UnsafePointer<grpc_metadata_array>) -> [(name: String, value: String)] {
    var pairs: [(name: String, value: String)] = []
    for i in 0..<array.pointee.count {
        var key = array.pointee.metadata[i].key
        var value = array.pointee.metadata[i].value
        pairs.append((sliceString(&key), sliceString(&value)))
    }
    return pairs
}

private func sliceString(_ slice: inout grpc_slice) -> String {
    let start = cgrpc_slice_start(&slice)
    let length = cgrpc_slice_length(&slice)
    return String(decoding: UnsafeBufferPointer(start: start, count: length), as: UTF8.self)
}
