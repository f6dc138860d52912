#if canImport(Glibc)
import Glibc
#endif

/// A blocking HTTP/1.1 client for one request per connection (`Connection: close`): enough
/// for load generators and tests, which want the body as it streams.
public enum HTTPClient {
    /// Sends `method path` to `host:port` with a JSON `body` and calls `onBody` with the body's
    /// bytes as they arrive (chunked transfer decoded). Returns the status code once the server
    /// has closed the connection.
    /// - Throws: `HTTPClientError` when the connection fails, times out or the response
    ///   is not HTTP/1.x; whatever `onBody` throws.
    public static func send(
        host: String, port: Int, method: String, path: String, body: [UInt8],
        timeoutSeconds: Int = 300, onBody: ([UInt8]) throws -> Void
    ) throws -> Int {
        let fd = try connectSocket(host: host, port: port, timeoutSeconds: timeoutSeconds)
        defer { close(fd) }
        let head = "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        var request = Array(head.utf8) + body
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HTTPClientError("send failed: errno \(errno)") }
            sent += n
        }
        request = []

        var buffer: [UInt8] = []
        var status: Int?
        var chunked = false
        var decoder = ChunkDecoder()
        var scratch = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n >= 0 else { throw HTTPClientError("receive failed: errno \(errno)") }
            if n == 0 { break }
            buffer += scratch[0..<n]
            if status == nil {
                guard let end = buffer.firstRange(of: [13, 10, 13, 10]) else { continue }
                let lines = String(decoding: buffer[..<end.lowerBound], as: UTF8.self).split(separator: "\r\n")
                let first = lines.first?.split(separator: " ") ?? []
                guard first.count >= 2, first[0].hasPrefix("HTTP/1."), let code = Int(first[1]) else {
                    throw HTTPClientError("not an HTTP/1.x response")
                }
                status = code
                chunked = lines.dropFirst().contains {
                    $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked")
                }
                buffer.removeSubrange(..<end.upperBound)
            }
            if chunked {
                let data = try decoder.feed(&buffer)
                if !data.isEmpty { try onBody(data) }
                if decoder.done { break }
            } else if !buffer.isEmpty {
                try onBody(buffer)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        guard let status else { throw HTTPClientError("the server closed without a response") }
        return status
    }

    /// A connected TCP socket with send and receive timeouts.
    private static func connectSocket(host: String, port: Int, timeoutSeconds: Int) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let name = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        guard getaddrinfo(name, String(port), &hints, &list) == 0, let first = list else {
            throw HTTPClientError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(first) }
        for info in sequence(first: first, next: { $0.pointee.ai_next }) {
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            close(fd)
        }
        throw HTTPClientError("cannot connect to \(host):\(port): errno \(errno)")
    }
}

/// Decodes a chunked body incrementally: `feed` takes what is complete from the buffer.
struct ChunkDecoder {
    private(set) var done = false
    private var remaining = 0  // bytes left in the current chunk, then its CRLF
    private var inChunk = false

    mutating func feed(_ buffer: inout [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while !done {
            if inChunk {
                let take = min(remaining, buffer.count - i)
                out += buffer[i..<i + take]
                i += take
                remaining -= take
                guard remaining == 0, buffer.count - i >= 2 else { break }
                i += 2  // CRLF after the data
                inChunk = false
            } else {
                guard let end = buffer[i...].firstRange(of: [13, 10]) else { break }
                let line = String(decoding: buffer[i..<end.lowerBound], as: UTF8.self)
                guard let size = Int(line.split(separator: ";").first ?? "", radix: 16), size >= 0 else {
                    throw HTTPClientError("bad chunk size line '\(line)'")
                }
                i = end.upperBound
                if size == 0 { done = true } else { remaining = size; inChunk = true }
            }
        }
        buffer.removeSubrange(..<i)
        return out
    }
}

/// Why a client request failed.
public struct HTTPClientError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
