import Crypto
import Foundation
import ShoalRPC
import Synchronization

/// The API keys that open the prompt APIs, from a file (one key per line; blank lines and
/// `#` comments ignored) re-read when it changes, and/or a fixed list (`SHOAL_API_KEYS`,
/// comma- or newline-separated). A client is known by which key it presented.
public final class APIKeys: Sendable {
    private struct State {
        var fileKeys: [[UInt8]] = []
        var modified: Date?
        var checked = ContinuousClock.Instant.now
    }

    private let file: String?
    private let fixed: [[UInt8]]
    private let state = Mutex(State())
    /// How often, at most, the file's modification time is looked at.
    static let recheckInterval = Duration.seconds(1)

    /// Keys from `file` and `list`; nil when neither gives one.
    /// - Throws: `ServeError.apiKeys` when the file cannot be read or holds no key.
    public static func load(file: String?, list: String?) throws(ServeError) -> APIKeys? {
        let fixed = (list ?? "").split(whereSeparator: { $0 == "," || $0.isNewline })
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard file != nil || !fixed.isEmpty else { return nil }
        let keys = APIKeys(file: file, fixed: fixed.map { Array($0.utf8) })
        if let file {
            let loaded = try Self.read(file)
            guard !loaded.isEmpty else { throw .apiKeys("\(file): no key in it (one key per line)") }
            keys.state.withLock {
                $0.fileKeys = loaded
                $0.modified = Self.modified(file)
            }
        }
        return keys
    }

    private init(file: String?, fixed: [[UInt8]]) {
        self.file = file
        self.fixed = fixed
    }

    /// The client a bearer token belongs to (`key-<first 8 hex digits of its SHA-256>`), or
    /// nil when it is no key. Every key is compared in full, in time independent of where
    /// they differ.
    public func client(presenting token: String) -> String? {
        let presented = Array(token.utf8)
        var match: [UInt8]?
        for key in currentKeys() where constantTimeEqual(key, presented) { match = key }
        return match.map { "key-" + SHA256.hash(data: $0).prefix(4).map { String(format: "%02x", $0) }.joined() }
    }

    /// The keys now, the file re-read if it changed since last looked at (a file that became
    /// unreadable or empty keeps the last good keys: an editor's half-written save must not
    /// lock everyone out).
    private func currentKeys() -> [[UInt8]] {
        guard let file else { return fixed }
        let (keys, due) = state.withLock { state -> ([[UInt8]], Bool) in
            let due = ContinuousClock.now - state.checked >= Self.recheckInterval
            if due { state.checked = .now }
            return (state.fileKeys, due)
        }
        guard due, let modified = Self.modified(file), modified != state.withLock({ $0.modified }) else {
            return fixed + keys
        }
        guard let reloaded = try? Self.read(file), !reloaded.isEmpty else { return fixed + keys }
        state.withLock {
            $0.fileKeys = reloaded
            $0.modified = modified
        }
        return fixed + reloaded
    }

    private static func read(_ file: String) throws(ServeError) -> [[UInt8]] {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw .apiKeys("\(file): cannot read it")
        }
        return text.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
            .map { Array($0.utf8) }
    }

    private static func modified(_ file: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: file))?[.modificationDate] as? Date
    }
}

/// Whether `a == b`, looking at every byte of the longer whatever they hold.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
    for i in 0..<max(a.count, b.count) {
        difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
    }
    return difference == 0
}

/// The token of an `Authorization: Bearer TOKEN` value, nil for any other scheme.
func bearerToken(_ authorization: String?) -> String? {
    guard let authorization else { return nil }
    let parts = authorization.split(separator: " ", maxSplits: 1)
    guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
    return parts[1].trimmingCharacters(in: .whitespaces)
}

/// Who may reach the HTTP API, and from which web pages.
public struct HTTPAccess: Sendable {
    /// Nil: no key needed.
    public var keys: APIKeys?
    /// Host names (without port) a request's `Host` may carry; nil: any.
    public var allowedHosts: Set<String>?
    /// Web origins (`https://app.example`) whose pages may call the API from a browser;
    /// `*` for any. Empty: only same-origin pages.
    public var corsOrigins: [String] = []

    public init(keys: APIKeys? = nil, allowedHosts: Set<String>? = nil, corsOrigins: [String] = []) {
        self.keys = keys
        self.allowedHosts = allowedHosts
        self.corsOrigins = corsOrigins
    }

    /// The hosts a listener on `host` answers to by default: the loopback names when it is
    /// on loopback, plus the listen address itself and `extra`; nil (any) for a wildcard
    /// listener without `extra`, where the API keys (required there) are the gate.
    public static func defaultHosts(listening host: String, extra: [String]) -> Set<String>? {
        let wildcard = host.isEmpty || host == "0.0.0.0" || host == "::"
        if wildcard && extra.isEmpty { return nil }
        var hosts = Set(extra.map { $0.lowercased() })
        if !wildcard { hosts.insert(host.lowercased()) }
        if Endpoint.isLoopback(host: host) {
            hosts.formUnion(["localhost", "127.0.0.1", "::1"])
        }
        return hosts
    }

    /// `Host: name[:port]` → `name` (lowercase, IPv6 brackets off).
    static func hostName(_ header: String) -> String {
        var name = header.lowercased()
        if name.hasPrefix("[") {
            name = String(name.dropFirst().prefix { $0 != "]" })
        } else if let colon = name.lastIndex(of: ":") {
            name = String(name[..<colon])
        }
        return name
    }

    /// Whether a page of `origin` may call the API when the request came for `host`: the
    /// same origin always, others when listed.
    func allows(origin: String, host: String?) -> Bool {
        if corsOrigins.contains("*") || corsOrigins.contains(origin) { return true }
        guard let host else { return false }
        return origin == "http://\(host)" || origin == "https://\(host)"
    }

    /// Whether a cross-origin page of `origin` gets CORS headers (listed, not same-origin).
    func corsHeaders(origin: String?) -> [(String, String)] {
        guard let origin, corsOrigins.contains("*") || corsOrigins.contains(origin) else { return [] }
        return [("Access-Control-Allow-Origin", corsOrigins.contains("*") ? "*" : origin), ("Vary", "Origin")]
    }
}
