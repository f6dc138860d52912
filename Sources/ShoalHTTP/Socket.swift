#if canImport(Glibc)
import Glibc
#endif

// The POSIX socket calls the server makes, each turned into a Swift result or error.

/// Binds and listens on `host:port` (port 0: any free port), trying each address getaddrinfo
/// gives; returns the descriptor (non-blocking, close-on-exec) and the bound port.
func listeningSocket(host: String, port: Int, backlog: Int32 = 128) throws(HTTPError) -> (fd: Int32, port: Int) {
    // "[::1]" is how URLs write IPv6 literals; getaddrinfo wants "::1".
    let name = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
    var list: UnsafeMutablePointer<addrinfo>?
    let status = name.isEmpty
        ? getaddrinfo(nil, String(port), &hints, &list)
        : getaddrinfo(name, String(port), &hints, &list)
    guard status == 0, let first = list else {
        throw .addressResolution(host: host, message: String(cString: gai_strerror(status)))
    }
    defer { freeaddrinfo(first) }

    var lastError: Int32 = EADDRNOTAVAIL
    for info in sequence(first: first, next: { $0.pointee.ai_next }) {
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { lastError = errno; continue }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, backlog) == 0 else {
            lastError = errno
            close(fd)
            continue
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return (fd, boundPort(fd))
    }
    throw .bindFailed(host: host, port: port, errno: lastError)
}

/// The local port of a bound socket.
private func boundPort(_ fd: Int32) -> Int {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
    }
    let family = Int32(storage.ss_family)
    return withUnsafeBytes(of: storage) { raw in
        family == AF_INET6
            ? Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
            : Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port))
    }
}

/// Sets up an accepted connection: close-on-exec, no Nagle delay (streamed tokens are small
/// writes), and a send timeout so a client that stops reading cannot hold a handler forever.
func configureConnection(_ fd: Int32, writeTimeout: Duration) {
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    var on: Int32 = 1
    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    let (seconds, attoseconds) = writeTimeout.components
    var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
}

/// Writes all of `bytes`, without SIGPIPE.
func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(HTTPError) {
    var sent = 0
    while sent < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
        if n >= 0 { sent += n; continue }
        switch errno {
        case EINTR: continue
        case EAGAIN, EWOULDBLOCK: throw .writeTimedOut  // SO_SNDTIMEO ran out
        default: throw .clientGone  // EPIPE, ECONNRESET, or shut down by the server
        }
    }
}

/// Whether the peer closed, reset or half-closed the connection, without blocking and
/// without consuming anything it sent.
func peerIsGone(_ fd: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&entry, 1, 0) > 0 else { return false }
    if entry.revents & (Int16(POLLHUP) | Int16(POLLERR)) != 0 { return true }
    var byte: UInt8 = 0
    let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
    // n == 0 is an end of stream: the client shut down its writing side, which a client that
    // sent its whole request may do and still read the answer (HTTP/1.1 allows it). Only a
    // reset or an error says nobody will read; a client that closed outright is found at the
    // next write, whose bytes it answers with a reset.
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
}

/// Waits until `fd` is readable or `deadline` passes; returns false on timeout.
func waitReadable(_ fd: Int32, until deadline: ContinuousClock.Instant) -> Bool {
    while true {
        let left = deadline - .now
        guard left > .zero else { return false }
        let (seconds, attoseconds) = left.components
        let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&entry, 1, milliseconds)
        if n > 0 { return true }
        if n < 0 && errno != EINTR { return true }  // let the read report the error
    }
}

/// Stops writing and reads (discarding) what the client still sends for up to a second, so
/// that closing afterwards does not reset the connection before the client reads the response.
func halfCloseAndDrain(_ fd: Int32) {
    shutdown(fd, Int32(SHUT_WR))
    let deadline = ContinuousClock.now + .seconds(1)
    var scratch = [UInt8](repeating: 0, count: 16 << 10)
    var discarded = 0
    while discarded < 16 << 20, waitReadable(fd, until: deadline) {
        let n = recv(fd, &scratch, scratch.count, Int32(MSG_DONTWAIT))
        if n > 0 { discarded += n } else if n == 0 || (errno != EAGAIN && errno != EINTR) { break }
    }
}

/// The peer's address of a connected socket, as `"203.0.113.7"` or `"::1"`; "" if unknown.
func peerAddress(_ fd: Int32) -> String {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let got = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
    }
    guard got == 0 else { return "" }
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    switch Int32(storage.ss_family) {
    case AF_INET:
        withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                var raw = address.pointee.sin_addr
                _ = inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
            }
        }
    case AF_INET6:
        withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                var raw = address.pointee.sin6_addr
                _ = inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
            }
        }
    default:
        return ""
    }
    return String(cString: text)
}
