import Foundation
import ShoalHTTP
import ShoalTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client for speaking raw HTTP to a test server; every read gives up after
/// `timeout`, so no test can hang.
final class RawClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// One response as read off the wire.
    struct Response {
        var status: Int
        /// Names lowercased.
        var headers: [String: String]
        var body: [UInt8]
        /// The chunks as they arrived, for a chunked response.
        var chunks: [[UInt8]] = []

        var text: String { String(decoding: body, as: UTF8.self) }
        /// The body as a JSON object.
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
    }

    let fd: Int32
    private var buffer: [UInt8] = []
    private var closed = false

    /// - Parameter source: the loopback address to connect from (127.0.0.2, …): another client.
    init(port: Int, timeout: Duration = .seconds(5), from source: String? = nil) throws {
        fd = try connectToLoopback(port: port, timeoutSeconds: Int(timeout.components.seconds), from: source)
    }

    deinit { if !closed { Glibc.close(fd) } }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send: errno \(errno)") }
            sent += n
        }
    }

    /// Stops sending and receiving; the server sees the connection end.
    func hangUp() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Shuts down only the sending side, as a client that sent its whole request may.
    func halfClose() { shutdown(fd, Int32(SHUT_WR)) }

    /// Resets the connection (SO_LINGER 0, then close): the server sees it gone at once.
    func reset() {
        resetConnection(fd)
        closed = true
    }

    /// Reads more bytes into the buffer; false at end of stream.
    private func fill() throws -> Bool {
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        let n = recv(fd, &scratch, scratch.count, 0)
        if n > 0 {
            buffer += scratch[..<n]
            return true
        }
        if n == 0 || errno == ECONNRESET { return false }
        throw Failure(description: "recv: errno \(errno) (timed out?)")
    }

    /// One CRLF-terminated line, without the CRLF.
    func readLine() throws -> String {
        while true {
            if let lf = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[..<lf].dropLast()
                buffer.removeFirst(lf + 1)
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else { throw Failure(description: "connection closed mid-line") }
        }
    }

    private func read(count: Int) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill() else { throw Failure(description: "connection closed mid-body") }
        }
        defer { buffer.removeFirst(count) }
        return Array(buffer[..<count])
    }

    /// The status line and headers of the next response (also an interim 100).
    func readHead() throws -> (status: Int, headers: [String: String]) {
        let statusLine = try readLine()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0] == "HTTP/1.1", let status = Int(parts[1]) else {
            throw Failure(description: "bad status line '\(statusLine)'")
        }
        var headers: [String: String] = [:]
        while case let line = try readLine(), !line.isEmpty {
            let colon = line.firstIndex(of: ":")!
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers)
    }

    /// One whole response: by Content-Length, chunked, or up to the close.
    func readResponse() throws -> Response {
        let (status, headers) = try readHead()
        var response = Response(status: status, headers: headers, body: [])
        if let length = headers["content-length"].flatMap({ Int($0) }) {
            response.body = try read(count: length)
        } else if headers["transfer-encoding"] == "chunked" {
            while let chunk = try readChunk() {
                response.chunks.append(chunk)
                response.body += chunk
            }
        } else {
            response.body = try readToEnd()
        }
        return response
    }

    /// The next chunk of a chunked body; nil for the last (empty) chunk.
    func readChunk() throws -> [UInt8]? {
        guard let size = Int(try readLine(), radix: 16) else { throw Failure(description: "bad chunk size") }
        // The last chunk is followed by the empty line that ends the (absent) trailers.
        let data = try read(count: size + 2)
        return size == 0 ? nil : Array(data.dropLast(2))
    }

    /// Everything until the server closes the connection.
    func readToEnd() throws -> [UInt8] {
        while try fill() {}
        defer { buffer.removeAll() }
        return buffer
    }
}

/// A flag a server thread sets and a test waits for.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }

    /// Waits up to `limit` for the flag; returns whether it was set.
    func wait(upTo limit: Duration) -> Bool {
        let end = ContinuousClock.now + limit
        while !isSet, ContinuousClock.now < end { usleep(5_000) }
        return isSet
    }
}

/// Runs `body` with a server on 127.0.0.1 and any free port, then shuts it down.
func withServer<T>(limits: HTTPLimits = HTTPLimits(), handler: @escaping HTTPServer.Handler,
                   body: (HTTPServer) throws -> T) throws -> T {
    let server = try HTTPServer.start(host: "127.0.0.1", port: 0, limits: limits, handler: handler)
    defer { server.shutdown(grace: .zero) }
    return try body(server)
}

/// Answers every request with its method, target, query and body, as JSON.
let echo: HTTPServer.Handler = { request, responder in
    let object: [String: Any] = [
        "method": request.method, "target": request.target, "path": request.path, "query": request.query,
        "body": String(decoding: request.body, as: UTF8.self), "host": request.header("HOST") ?? "",
    ]
    let body = try! JSONSerialization.data(withJSONObject: object)
    try? responder.respond(status: 200, headers: [("Content-Type", "application/json")], body: Array(body))
}

/// Closes `fd` with a reset rather than a FIN (SO_LINGER 0), as a client that crashed or was
/// killed leaves its connections.
func resetConnection(_ fd: Int32) {
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    Glibc.close(fd)
}
