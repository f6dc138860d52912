import CGRPCCore

/// A gRPC status code; the raw values are those of the C core's `grpc_status_code`.
public enum RPCStatusCode: Int32, Sendable, CaseIterable {
    /// Not an error.
    case ok = 0
    /// The operation was cancelled, typically by the caller.
    case cancelled = 1
    /// An error without a better code (also: a status the peer sent that this enum does not know).
    case unknown = 2
    /// The client specified an invalid argument.
    case invalidArgument = 3
    /// The deadline expired before the operation could complete.
    case deadlineExceeded = 4
    /// Some requested entity was not found.
    case notFound = 5
    /// The entity a client tried to create already exists.
    case alreadyExists = 6
    /// The caller may not execute the operation.
    case permissionDenied = 7
    /// A resource (quota, memory, message size) has been exhausted.
    case resourceExhausted = 8
    /// The system is not in a state required for the operation.
    case failedPrecondition = 9
    /// The operation was aborted, typically by a concurrency conflict.
    case aborted = 10
    /// The operation was attempted past the valid range.
    case outOfRange = 11
    /// The method is not implemented by the server.
    case unimplemented = 12
    /// An invariant of the underlying system is broken.
    case `internal` = 13
    /// The service is unavailable (peer unreachable, gone or shutting down); usually transient.
    case unavailable = 14
    /// Unrecoverable data loss or corruption.
    case dataLoss = 15
    /// The request lacks valid authentication credentials.
    case unauthenticated = 16

    init(grpc code: grpc_status_code) {
        self = RPCStatusCode(rawValue: code.rawValue) ?? .unknown
    }

    var grpc: grpc_status_code { grpc_status_code(rawValue: rawValue) }
}

/// The status a call ended with. Client calls throw it for every non-OK outcome; a server handler
/// throws it to send exactly this code and message.
public struct RPCStatus: Error, Sendable, Hashable, CustomStringConvertible {
    /// The gRPC status code.
    public var code: RPCStatusCode
    /// The human-readable message that travels with the code.
    public var message: String

    /// A status with `code` and `message`.
    public init(code: RPCStatusCode, message: String = "") {
        self.code = code
        self.message = message
    }

    /// `RPCStatus(code): message`.
    public var description: String {
        message.isEmpty ? "RPCStatus(\(code))" : "RPCStatus(\(code)): \(message)"
    }
}

/// Failures of the transport itself, as opposed to the status of a call.
public enum RPCError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The server could not listen on this address (in use, malformed, or not permitted).
    case bindFailed(address: String)
    /// `.tls` for a server needs both a private key and a certificate chain.
    case serverTLSNeedsKeyAndCertificate
    /// A streaming handler called `send` while its previous `send` had not finished.
    case concurrentSend

    /// A one-line explanation.
    public var description: String {
        switch self {
        case .bindFailed(let address): "cannot listen on \(address)"
        case .serverTLSNeedsKeyAndCertificate: "server TLS needs a private key and a certificate chain"
        case .concurrentSend: "a stream writer's send started while another send was in flight"
        }
    }
}
