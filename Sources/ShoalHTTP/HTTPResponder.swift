import Foundation

/// Writes the response to one request: either one whole response, or a stream of chunks.
///
/// Used only on the connection's thread (the handler's). `Content-Length`,
/// `Transfer-Encoding`, `Connection` and `Server` are the server's to set; passing them is
/// a programmer error.
public final class HTTPResponder {
    enum State {
        case pending
        /// Chunked for HTTP/1.1; for HTTP/1.0 the body is raw and the close ends it.
        case streaming(chunked: Bool)
        case done
    }

    private let fd: Int32
    private let minorVersion: Int
    /// Whether the connection is kept for another request after this response.
    private(set) var keepAlive: Bool
    private(set) var state = State.pending
    /// A write failed: the connection cannot carry anything more.
    private(set) var broken = false
    /// Headers every response of this request carries besides its own (CORS, for one).
    public var commonHeaders: [(String, String)] = []

    init(fd: Int32, minorVersion: Int, keepAlive: Bool) {
        self.fd = fd
        self.minorVersion = minorVersion
        self.keepAlive = keepAlive
    }

    /// Sends a whole response with a `Content-Length`.
    /// - Throws: `HTTPError.alreadyResponded`, `.clientGone`, `.writeTimedOut`.
    public func respond(status: Int, headers: [(String, String)] = [], body: [UInt8]) throws(HTTPError) {
        guard case .pending = state else { throw .alreadyResponded }
        state = .done
        try send(head(status: status, headers: headers, framing: "Content-Length: \(body.count)\r\n") + body)
    }

    /// Sends the status and headers of a response whose body follows in `write` calls
    /// (chunked; for an HTTP/1.0 client, delimited by closing the connection).
    /// - Throws: `HTTPError.alreadyResponded`, `.clientGone`, `.writeTimedOut`.
    public func startStream(status: Int, headers: [(String, String)]) throws(HTTPError) {
        guard case .pending = state else { throw .alreadyResponded }
        let chunked = minorVersion == 1
        if !chunked { keepAlive = false }
        state = .streaming(chunked: chunked)
        try send(head(status: status, headers: headers, framing: chunked ? "Transfer-Encoding: chunked\r\n" : ""))
    }

    /// Sends `bytes` as one chunk of the stream; empty `bytes` send nothing.
    /// - Throws: `HTTPError.notStreaming`, `.clientGone` when the peer is gone or the server
    ///   shut the connection down, `.writeTimedOut` when the peer stopped reading.
    public func write(_ bytes: [UInt8]) throws(HTTPError) {
        guard case .streaming(let chunked) = state else { throw .notStreaming }
        guard !bytes.isEmpty else { return }
        try send(chunked ? Array("\(String(bytes.count, radix: 16))\r\n".utf8) + bytes + [cr, lf] : bytes)
    }

    /// Ends the stream (the empty last chunk).
    /// - Throws: as `write`.
    public func finishStream() throws(HTTPError) {
        guard case .streaming(let chunked) = state else { throw .notStreaming }
        state = .done
        if chunked { try send(Array("0\r\n\r\n".utf8)) }
    }

    /// Whether the connection was reset or failed; never blocks. For a handler that waits
    /// without writing, to notice that nobody awaits the answer. A client that only shut down
    /// its sending side after its request (a half-close) is not gone: it still reads the
    /// answer. One that closed outright is seen as gone once a write draws its reset.
    public var clientIsGone: Bool { peerIsGone(fd) }

    /// The server's own answer to a refused request, an OpenAI-shaped error object.
    func respondError(_ rejection: RequestRejection) throws(HTTPError) {
        let error: [String: Any] = [
            "message": rejection.message,
            "type": rejection.status >= 500 ? "server_error" : "invalid_request_error",
            "param": NSNull(), "code": NSNull(),
        ]
        let body = (try? JSONSerialization.data(withJSONObject: ["error": error])).map { [UInt8]($0) } ?? []
        try respond(status: rejection.status, headers: [("Content-Type", "application/json")], body: body)
    }

    private func send(_ bytes: [UInt8]) throws(HTTPError) {
        do {
            try sendAll(fd, bytes)
        } catch {
            broken = true
            throw error
        }
    }

    private func head(status: Int, headers: [(String, String)], framing: String) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(reasonPhrase(status))\r\nServer: shoal\r\n"
        for (name, value) in commonHeaders + headers {
            precondition(!name.isEmpty && name.utf8.allSatisfy(isTokenByte), "invalid response header name '\(name)'")
            precondition(value.utf8.allSatisfy { $0 == tab || $0 >= sp && $0 != 0x7F }, "invalid value of response header \(name)")
            precondition(!serverHeaders.contains(name.lowercased()), "the server sets \(name) itself")
            text += "\(name): \(value)\r\n"
        }
        text += framing
        if !keepAlive {
            text += "Connection: close\r\n"
        } else if minorVersion == 0 {
            text += "Connection: keep-alive\r\n"
        }
        return Array((text + "\r\n").utf8)
    }
}

private let serverHeaders: Set<String> = ["content-length", "transfer-encoding", "connection", "server"]

private func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 200: "OK"
    case 204: "No Content"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 400: "Bad Request"
    case 404: "Not Found"
    case 405: "Method Not Allowed"
    case 408: "Request Timeout"
    case 413: "Content Too Large"
    case 417: "Expectation Failed"
    case 429: "Too Many Requests"
    case 431: "Request Header Fields Too Large"
    case 500: "Internal Server Error"
    case 501: "Not Implemented"
    case 503: "Service Unavailable"
    case 505: "HTTP Version Not Supported"
    default: "Status \(status)"
    }
}
