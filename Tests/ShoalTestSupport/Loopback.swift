import ShoalTensor
#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket connected to 127.0.0.1:`port`, reads and writes timing out after `seconds`,
/// for the tests' raw HTTP clients.
public func connectToLoopback(port: Int, timeoutSeconds seconds: Int = 5, from source: String? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw LoopbackError(description: "socket: errno \(errno)") }
    if let source {
        // Another loopback address (127.0.0.2, …): the server sees another client.
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            close(fd)
            throw LoopbackError(description: "bind to \(source): errno \(errno)")
        }
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else {
        close(fd)
        throw LoopbackError(description: "connect to port \(port): errno \(errno)")
    }
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Why a loopback connection failed.
public struct LoopbackError: Error, CustomStringConvertible {
    public let description: String
}

/// `bytes` with 1 to 4 random edits (a byte changed, a run cut, random bytes inserted): the
/// mutations the decoder fuzz tests send.
public func mutated(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
    var bytes = bytes
    for _ in 0...(rng.next() % 4) {
        let at = Int(rng.next() % UInt64(max(1, bytes.count)))
        switch rng.next() % 3 {
        case 0 where !bytes.isEmpty: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
        case 1 where !bytes.isEmpty: bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(rng.next() % 8)))
        default: bytes.insert(contentsOf: (0..<(1 + rng.next() % 6)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
        }
    }
    return bytes
}
