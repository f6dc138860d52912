/// What the server's public API throws.
public enum HTTPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server could not listen on `host:port` (a name that does not resolve, a port in
    /// use, an address not of this host).
    case listenFailed(host: String, port: Int, reason: String)
    /// The HTTPS certificate or key did not load.
    case tlsFiles(String)
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
        case let .listenFailed(host, port, reason):
            "cannot listen on \(host):\(port): \(reason)"
        case let .tlsFiles(message):
            message
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
