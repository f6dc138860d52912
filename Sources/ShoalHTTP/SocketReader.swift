#if canImport(Glibc)
import Glibc
#endif

/// Why a request could not be read in full.
enum RequestFailure: Error {
    /// Close without answering: the client left, or an idle connection timed out.
    case quiet
    /// Answer with this error, then close.
    case reject(RequestRejection)

    static let timedOut = RequestFailure.reject(RequestRejection(408, "the request was not received in time"))
}

/// Why the socket gave no more bytes.
enum ReadFailure: Error {
    /// The peer finished sending (end of stream: it closed, or half-closed and still reads).
    case ended
    /// The connection broke: reset by the peer, or shut down by the server.
    case broken
    /// The deadline passed.
    case timedOut

    /// The failure in the middle of a request: a client that stopped sending part-way gets a
    /// 400 (it may still be reading, having half-closed), a slow one 408; a broken connection
    /// has no one to answer.
    var midRequest: RequestFailure {
        switch self {
        case .ended: .reject(RequestRejection(400, "the request ended before it was complete"))
        case .broken: .quiet
        case .timedOut: .timedOut
        }
    }
}

/// Buffered reads from one connection, each bounded by a deadline.
struct SocketReader {
    let fd: Int32
    private var buffer: [UInt8] = []
    /// The first byte not yet consumed.
    private var start = 0
    private var scratch = [UInt8](repeating: 0, count: 64 << 10)

    init(fd: Int32) { self.fd = fd }

    private var buffered: Int { buffer.count - start }

    /// Appends what the socket has, at least one byte.
    private mutating func fill(until deadline: ContinuousClock.Instant) throws(ReadFailure) {
        if start > 0 {
            buffer.removeFirst(start)
            start = 0
        }
        while true {
            guard waitReadable(fd, until: deadline) else { throw .timedOut }
            let n = recv(fd, &scratch, scratch.count, Int32(MSG_DONTWAIT))
            if n > 0 {
                buffer.append(contentsOf: scratch[..<n])
                return
            }
            if n == 0 { throw .ended }
            guard errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK else { throw .broken }
        }
    }

    /// The request line and headers, each line with its CRLF, without the empty line that ends
    /// them; CRLFs before the request line are skipped.
    mutating func readHead(maxBytes: Int, until deadline: ContinuousClock.Instant) throws(RequestFailure) -> ArraySlice<UInt8> {
        var scanned = 0
        while true {
            while scanned == 0, buffered >= 2, buffer[start] == cr, buffer[start + 1] == lf { start += 2 }
            if let (headEnd, next) = findHeadEnd(from: start + scanned) {
                guard headEnd - start <= maxBytes else { throw tooLarge(maxBytes) }
                defer { start = next }
                return buffer[start..<headEnd]
            }
            guard buffered <= maxBytes else { throw tooLarge(maxBytes) }
            scanned = max(0, buffered - 2)
            do {
                try fill(until: deadline)
            } catch {
                // Nothing of a request yet: an idle keep-alive connection ends quietly.
                throw buffered > 0 ? error.midRequest : .quiet
            }
        }
    }

    private func tooLarge(_ maxBytes: Int) -> RequestFailure {
        .reject(RequestRejection(431, "the request line and headers are larger than \(maxBytes) bytes"))
    }

    /// Where the head ends: after the LF that ends its last line, and where the next part begins
    /// (after the empty line). A bare LF also counts, for the parser to refuse.
    private func findHeadEnd(from offset: Int) -> (headEnd: Int, next: Int)? {
        var index = offset
        while let found = buffer[index...].firstIndex(of: lf) {
            if found + 1 < buffer.count, buffer[found + 1] == lf { return (found + 1, found + 2) }
            if found + 2 < buffer.count, buffer[found + 1] == cr, buffer[found + 2] == lf { return (found + 1, found + 3) }
            index = found + 1
        }
        return nil
    }

    /// Exactly `count` bytes.
    mutating func read(count: Int, until deadline: ContinuousClock.Instant) throws(ReadFailure) -> ArraySlice<UInt8> {
        while buffered < count { try fill(until: deadline) }
        defer { start += count }
        return buffer[start..<(start + count)]
    }

    /// One line ending in CRLF, without it; a longer line or a bare LF is a 400.
    mutating func readLine(maxBytes: Int, until deadline: ContinuousClock.Instant) throws(RequestFailure) -> ArraySlice<UInt8> {
        var scanned = 0
        while true {
            if let end = buffer[(start + scanned)...].firstIndex(of: lf) {
                guard end > start, buffer[end - 1] == cr, end - 1 - start <= maxBytes else {
                    throw .reject(RequestRejection(400, "malformed chunked body"))
                }
                defer { start = end + 1 }
                return buffer[start..<(end - 1)]
            }
            guard buffered <= maxBytes + 1 else { throw .reject(RequestRejection(400, "malformed chunked body")) }
            scanned = buffered
            do { try fill(until: deadline) } catch { throw error.midRequest }
        }
    }
}
