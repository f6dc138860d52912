#if canImport(Glibc)
import Glibc
#endif

/// What the server's public API throws.
public enum HTTPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `host` did not resolve to an address (getaddrinfo's message).
    case addressResolution(host: String, message: String)
    /// No address of `host` could be bound to `port`; `errno` is from the last attempt.
    case bindFailed(host: String, port: Int, errno: Int32)
    /// A socket call other than bind failed while starting the server.
    case socketCall(String, errno: Int32)
    /// The peer closed or reset the connection, or the server shut the connection down.
    case clientGone
    /// The peer stopped reading for longer than `HTTPLimits.writeTimeout`.
    case writeTimedOut
    /// The responder already sent its response (or started a stream).
    case alreadyResponded
    /// `write` or `finishStream` without a stream started by `startStream`.
    case notStreaming

    /// A sentence for logs.
    public var description: String {
        switch self {
        case let .addressResolution(host, message):
            "cannot resolve '\(host)': \(message)"
        case let .bindFailed(host, port, code):
            "cannot listen on \(host):\(port): \(String(cString: strerror(code)))"
        case let .socketCall(call, code):
            "\(call) failed: \(String(cString: strerror(code)))"
        case .clientGone:
            "the client went away"
        case .writeTimedOut:
            "the client stopped reading"
        case .alreadyResponded:
            "the response was already sent"
        case .notStreaming:
            "no streaming response was started"
        }
    }
}

/// A request the server refuses before any handler sees it: the status, and a message for
/// the OpenAI-shaped error body.
struct RequestRejection: Error {
    var status: Int
    var message: String

    init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
}
