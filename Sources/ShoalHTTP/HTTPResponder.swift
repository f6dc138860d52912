import Dispatch
import Foundation
import NIOCore

/// Writes the response to one request: either one whole response, or a stream of chunks.
///
/// Used only on the handler's thread (`@unchecked Sendable`: it is handed to that thread once
/// and never touched elsewhere). Each call hands its part to the connection's event loop
/// and waits until it is written (or the client is found gone, or `HTTPLimits.writeTimeout`
/// passes), so a client that reads slowly slows only its own handler. `Content-Length`,
/// `Transfer-Encoding`, `Connection` and `Server` are the server's to set; passing them is a
/// programmer error.
public final class HTTPResponder: @unchecked Sendable {
    enum State {
        case pending
        case streaming
        case done
    }

    private let parts: AsyncStream<ResponsePart>.Continuation
    private let channel: any Channel
    private let writeTimeout: Duration
    private(set) var state = State.pending
    /// Headers every response of this request carries besides its own (CORS, for one).
    public var commonHeaders: [(String, String)] = []

    init(parts: AsyncStream<ResponsePart>.Continuation, channel: any Channel, writeTimeout: Duration) {
        self.parts = parts
        self.channel = channel
        self.writeTimeout = writeTimeout
    }

    /// Sends a whole response with a `Content-Length`.
    /// - Throws: `HTTPError.alreadyResponded`, `.clientGone`, `.writeTimedOut`.
    public func respond(status: Int, headers: [(String, String)] = [], body: [UInt8]) throws(HTTPError) {
        guard case .pending = state else { throw .alreadyResponded }
        state = .done
        try send(.whole(status: status, headers: checked(headers), body: body))
    }

    /// Sends the status and headers of a response whose body follows in `write` calls
    /// (chunked; for an HTTP/1.0 client, delimited by closing the connection).
    /// - Throws: `HTTPError.alreadyResponded`, `.clientGone`, `.writeTimedOut`.
    public func startStream(status: Int, headers: [(String, String)]) throws(HTTPError) {
        guard case .pending = state else { throw .alreadyResponded }
        state = .streaming
        try send(.head(status: status, headers: checked(headers)))
    }

    /// Sends `bytes` as one chunk of the stream; empty `bytes` send nothing.
    /// - Throws: `HTTPError.notStreaming`, `.clientGone` when the peer is gone or the server
    ///   shut the connection down, `.writeTimedOut` when the peer stopped reading.
    public func write(_ bytes: [UInt8]) throws(HTTPError) {
        guard case .streaming = state else { throw .notStreaming }
        guard !bytes.isEmpty else { return }
        try send(.chunk(bytes))
    }

    /// Ends the stream (the empty last chunk).
    /// - Throws: as `write`.
    public func finishStream() throws(HTTPError) {
        guard case .streaming = state else { throw .notStreaming }
        state = .done
        try send(.end)
    }

    /// Whether the connection was reset or closed; never blocks. For a handler that waits
    /// without writing, to notice that nobody awaits the answer. A client that only shut down
    /// its sending side after its request (a half-close) is not gone: it still reads the
    /// answer. One that closed outright is seen as gone once a write draws its reset.
    public var clientIsGone: Bool { !channel.isActive }

    /// Hands `part` to the event loop and waits until it is written.
    private func send(_ part: ResponsePart.Kind) throws(HTTPError) {
        let written = WriteResult()
        parts.yield(ResponsePart(kind: part, written: written))
        guard let result = written.wait(timeout: writeTimeout) else {
            channel.close(promise: nil)
            throw .writeTimedOut
        }
        if let error = result { throw error }
    }

    private func checked(_ headers: [(String, String)]) -> [(String, String)] {
        let all = commonHeaders + headers
        for (name, value) in all {
            precondition(!name.isEmpty && name.utf8.allSatisfy(isTokenByte), "invalid response header name '\(name)'")
            precondition(value.utf8.allSatisfy { $0 == 0x09 || $0 >= 0x20 && $0 != 0x7F }, "invalid value of response header \(name)")
            precondition(!serverHeaders.contains(name.lowercased()), "the server sets \(name) itself")
        }
        return all
    }

    /// Tells the event loop's side that the handler returned: whatever it did not answer is
    /// answered (500) or cut short there.
    func handlerReturned() {
        parts.yield(ResponsePart(kind: .handlerReturned, written: WriteResult()))
        parts.finish()
    }
}

/// One step of a response, from the handler's thread to the connection's task.
struct ResponsePart: Sendable {
    enum Kind: Sendable {
        case whole(status: Int, headers: [(String, String)], body: [UInt8])
        case head(status: Int, headers: [(String, String)])
        case chunk([UInt8])
        case end
        case handlerReturned
    }

    var kind: Kind
    /// Signalled once the part is written (nil) or cannot be (the error).
    var written: WriteResult
}

/// A one-shot result the handler's thread waits for.
final class WriteResult: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    /// Set once, before `semaphore` is signalled; read after the wait returns.
    private var error: HTTPError?

    func complete(_ error: HTTPError?) {
        self.error = error
        semaphore.signal()
    }

    /// nil when `timeout` passed first; otherwise .some(the error, or nil when written).
    func wait(timeout: Duration) -> HTTPError?? {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
        guard semaphore.wait(timeout: .now() + .nanoseconds(Int(min(nanoseconds, 1e15)))) == .success else { return nil }
        return .some(error)
    }
}

/// The server's own answers: an OpenAI-shaped error object.
func errorBody(status: Int, message: String) -> [UInt8] {
    let error: [String: Any] = [
        "message": message,
        "type": status >= 500 ? "server_error" : "invalid_request_error",
        "param": NSNull(), "code": NSNull(),
    ]
    return (try? JSONSerialization.data(withJSONObject: ["error": error])).map { [UInt8]($0) } ?? []
}

private let serverHeaders: Set<String> = ["content-length", "transfer-encoding", "connection", "server"]

/// `tchar` of RFC 9110: the characters of methods and header names.
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        true
    default:
        "!#$%&'*+-.^_`|~".utf8.contains(byte)
    }
}

func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 100: "Continue"
    case 200: "OK"
    case 204: "No Content"
    case 400: "Bad Request"
    case 401: "Unauthorized"
    case 403: "Forbidden"
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
