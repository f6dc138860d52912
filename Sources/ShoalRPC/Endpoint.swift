#if canImport(Glibc)
import Glibc
#endif

/// A `HOST:PORT` address, as the command line, the cluster protocol and the gRPC core write
/// it: the one parser for every address Shoal listens on, dials, or is told by a peer.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The host without brackets (`::1`, not `[::1]`); empty for `:PORT`, every interface.
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[IPV6]:PORT` or `:PORT` (every interface): a port in 0...65535,
    /// printable ASCII only, at most 255 bytes (a peer's address is checked by the same rule).
    public init?(_ text: String) {
        guard text.utf8.count <= 255, text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }),
              let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port)
        else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("[") || host.hasSuffix("]") {
            guard host.count >= 2, host.hasPrefix("["), host.hasSuffix("]") else { return nil }
            host = host.dropFirst().dropLast()
        }
        self.init(host: String(host), port: port)
    }

    /// `HOST:PORT`, an IPv6 literal in brackets: what `init?(_:)` reads back.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The same host on another port: a listener asked for port 0 learns the one it got.
    public func with(port: Int) -> Endpoint { Endpoint(host: host, port: port) }

    /// Every interface (`0.0.0.0`, `::` or no host): something to listen on, not to dial.
    public var isWildcard: Bool { ["", "0.0.0.0", "::"].contains(host) }

    /// An address another process can dial: a host that is not a wildcard, a port that is not 0.
    public var isDialable: Bool { !isWildcard && port > 0 }

    /// Reachable only from this machine: `localhost`, 127.0.0.0/8, `::1`.
    public var isLoopback: Bool { Self.isLoopback(host: host) }

    /// Whether `host` can only be reached from this machine: `localhost`, 127.0.0.0/8, `::1`.
    public static func isLoopback(host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        var v4 = in_addr()
        guard inet_pton(AF_INET, host, &v4) == 1 else { return false }
        return UInt32(bigEndian: v4.s_addr) >> 24 == 127
    }

    /// The host of a peer as the gRPC core names it: `ipv4:203.0.113.7:51234` → `203.0.113.7`,
    /// `ipv6:[::1]:51234` → `::1`; anything else whole.
    public static func host(ofPeer peer: String) -> String {
        var rest = Substring(peer)
        if let colon = rest.firstIndex(of: ":"), ["ipv4", "ipv6"].contains(rest[..<colon]) {
            rest = rest[rest.index(after: colon)...]
        }
        return Endpoint(String(rest))?.host ?? String(rest)
    }
}
