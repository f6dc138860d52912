#if canImport(Glibc)
import Glibc
#endif

/// An HTTP/1.1 server: a thread per connection, strict parsing, keep-alive, chunked
/// streaming responses.
///
/// The handler runs on the connection's thread and may block for as long as its response
/// takes; it answers through the `HTTPResponder` exactly once (a handler that does not is
/// answered 500 for). Requests the server refuses (malformed, too large, too slow) never
/// reach it and get an OpenAI-shaped JSON error. Call `shutdown(grace:)` when done;
/// dropping the last reference shuts the server down at once.
public final class HTTPServer: Sendable {
    /// Answers one request.
    public typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void

    private let core: ServerCore

    /// The port the server listens on (the one the system chose when asked for port 0).
    public var port: Int { core.port }

    private init(core: ServerCore) { self.core = core }

    deinit { core.stop(grace: .zero) }

    /// Listens on `host:port` and starts serving.
    ///
    /// `host` is an IPv4 or IPv6 literal (`"::1"` or `"[::1]"`), a name such as `"localhost"`,
    /// or `""` for every interface; the first address of the name that binds is used.
    /// - Throws: `HTTPError.addressResolution`, `.bindFailed`, `.socketCall`.
    public static func start(host: String, port: Int, limits: HTTPLimits = HTTPLimits(),
                             handler: @escaping Handler) throws(HTTPError) -> HTTPServer {
        // Writes use MSG_NOSIGNAL; this covers any other write to a closed socket in the process.
        signal(SIGPIPE, SIG_IGN)
        let core = try ServerCore(host: host, port: port, limits: limits, handler: handler)
        core.startAccepting()
        return HTTPServer(core: core)
    }

    /// Stops accepting (the listener closes at once) and closes idle connections; requests in
    /// flight may finish for up to `grace`, then their sockets are shut down so that the
    /// handlers' writes fail and `clientIsGone` turns true. Returns when every connection
    /// thread is done, or two seconds after `grace` at most. Idempotent.
    public func shutdown(grace: Duration) {
        core.stop(grace: grace)
    }
}
