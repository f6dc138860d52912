/// One parsed request, its body read in full.
public struct HTTPRequest: Sendable {
    /// The method token as sent (`GET`, `POST`, …); methods are case-sensitive.
    public var method: String
    /// The request target exactly as sent, query included.
    public var target: String
    /// The target up to `?`, not decoded.
    public var path: String
    /// The query's `name=value` pairs, percent-decoded (`+` is a space); the last of a
    /// repeated name wins.
    public var query: [String: String]
    /// The header fields in order, names in lowercase, values without surrounding blanks.
    public var headers: [(name: String, value: String)]
    /// The body, de-chunked.
    public var body: [UInt8]
    /// The client's IP address ("" if unknown).
    public var peer: String

    init(method: String, target: String, query: [String: String], headers: [(name: String, value: String)],
         body: [UInt8], peer: String = "") {
        self.peer = peer
        self.method = method
        self.target = target
        self.path = String(target.prefix { $0 != "?" })
        self.query = query
        self.headers = headers
        self.body = body
    }

    /// The first value of header `name` (any case).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name == lower }?.value
    }

    /// The query's pairs, or nil when a `%` escape is malformed or decodes to invalid UTF-8.
    static func decodeQuery(_ query: Substring) -> [String: String]? {
        var result: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = percentDecoded(parts[0]),
                  let value = parts.count > 1 ? percentDecoded(parts[1]) : ""
            else { return nil }
            result[name] = value
        }
        return result
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var input = Array(text.utf8)[...]
        while let byte = input.popFirst() {
            switch byte {
            case UInt8(ascii: "+"):
                bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard input.count >= 2, let high = hexValue(input.removeFirst()),
                      let low = hexValue(input.removeFirst())
                else { return nil }
                bytes.append(high << 4 | low)
            default:
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

/// The value of an ASCII hex digit.
func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// The bounds a server puts on its clients.
public struct HTTPLimits: Sendable {
    /// Open connections at most (and fewer than the process may open files); one more is
    /// answered 503 and closed. An idle connection costs a socket and a few kilobytes, no
    /// thread.
    public var maxConnections: Int
    /// Open connections from one client address at most; one more from it is answered 503
    /// and closed, so no client can take every connection.
    public var maxConnectionsPerClient: Int
    /// The header timeout while more than half of `maxConnections` are open: a connection that
    /// has not sent a whole request head within it is closed, so connections held open
    /// without requests (slowloris) cannot lock others out.
    public var busyHeaderTimeout: Duration
    /// Requests whose handlers run at once (each on a thread of its own); one more is
    /// answered 503 at once, so a flood of requests cannot exhaust the process's threads.
    public var maxHandlers: Int
    /// The request line and headers together (also: a chunked body's trailers); past it, 431.
    public var maxHeaderBytes: Int
    /// The body after de-chunking; past it, 413.
    public var maxBodyBytes: Int
    /// From the end of one request (or the accept) to the end of the next request's headers:
    /// an idle keep-alive connection is closed quietly, a slow request gets 408.
    public var headerTimeout: Duration
    /// From the end of the headers to the end of the body; past it, 408.
    public var bodyTimeout: Duration
    /// How long one write may wait for a client that does not read; past it, the write
    /// throws `HTTPError.writeTimedOut`.
    public var writeTimeout: Duration

    /// Limits; the defaults suit an LLM API (bodies are prompts).
    public init(maxConnections: Int = 8192, maxConnectionsPerClient: Int = 64, maxHeaderBytes: Int = 32 << 10,
                maxBodyBytes: Int = 4 << 20, headerTimeout: Duration = .seconds(30),
                busyHeaderTimeout: Duration = .seconds(2), bodyTimeout: Duration = .seconds(30),
                writeTimeout: Duration = .seconds(60), maxHandlers: Int = 512) {
        self.maxHandlers = maxHandlers
        self.maxConnections = maxConnections
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.busyHeaderTimeout = busyHeaderTimeout
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.writeTimeout = writeTimeout
    }
}
