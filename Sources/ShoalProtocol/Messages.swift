import Foundation
import ShoalRPC
import SwiftProtobuf

/// The one place Shoal's messages cross between protobuf and transport payloads (the cluster's
/// and the coordinator's prompt API).
extension RPCPayload {
    /// The payload's bytes parsed as `M`; throws SwiftProtobuf's decoding error.
    public func message<M: SwiftProtobuf.Message>(_ type: M.Type) throws -> M {
        try withUnsafeBytes { try M(serializedBytes: Data($0)) }
    }

    /// A message serialized into a new payload.
    public init<M: SwiftProtobuf.Message>(message: M) throws {
        let bytes: [UInt8] = try message.serializedBytes()
        self.init(bytes)
    }
}
