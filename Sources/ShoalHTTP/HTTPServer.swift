import Foundation
import HTTPTypes
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// An HTTP/1.1 server (HTTPS with `tls`): Hummingbird's core on SwiftNIO's event loops, so
/// an idle or half-open connection costs a little memory and no thread.
///
/// The handler runs on a thread of its own for each request and may block for as long as
/// its response takes; it answers through the `HTTPResponder` exactly once (a handler that
/// does not is answered 500 for). Requests the server refuses (malformed, too large, too
/// slow, over a connection share) never reach it. Call `shutdown(grace:)` when done;
/// dropping the last reference shuts the server down at once.
public final class HTTPServer: Sendable {
    /// Answers one request.
    public typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void

    /// The port the server listens on (the one the system chose when asked for port 0).
    public let port: Int
    private let registry: ConnectionRegistry
    private let group: MultiThreadedEventLoopGroup
    private let stopServer: @Sendable () async -> Void
    private let stopped: Signal

    private init(port: Int, registry: ConnectionRegistry, group: MultiThreadedEventLoopGroup,
                 stopServer: @escaping @Sendable () async -> Void, stopped: Signal) {
        self.port = port
        self.registry = registry
        self.group = group
        self.stopServer = stopServer
        self.stopped = stopped
    }

    deinit { shutdown(grace: .zero) }

    /// Listens on `host:port` and starts serving.
    ///
    /// `host` is an IPv4 or IPv6 literal (`"::1"` or `"[::1]"`), a name such as `"localhost"`,
    /// or `""` for every interface.
    /// - Throws: `HTTPError.listenFailed`; `.tlsFiles` when `tls`'s files do not load.
    public static func start(host: String, port: Int, limits: HTTPLimits = HTTPLimits(), tls: HTTPServerTLS? = nil,
                             handler: @escaping Handler) throws(HTTPError) -> HTTPServer {
        var capped = limits
        // Connections beyond the descriptors this process may open would fail at accept: keep
        // the cap below them, with room for the model's files, the gRPC channels and listeners.
        capped.maxConnections = max(1, min(limits.maxConnections, raiseDescriptorLimit() - 256))
        let limits = capped
        let registry = ConnectionRegistry(limits: limits)
        var logger = Logger(label: "shoal.http")
        logger.logLevel = .error
        let bindHost = host.isEmpty ? "::" : host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let configuration = ServerConfiguration(address: .hostname(bindHost, port: port), serverName: nil)
        let http1 = HTTP1Channel(
            responder: { request, writer, channel in
                await respond(to: request, writer: writer, channel: channel, registry: registry, handler: handler)
            },
            configuration: .init(
                additionalChannelHandlers: [ConnectionGate(registry: registry)],
                httpDecoderConfiguration: .init(maxHeaderFieldSize: limits.maxHeaderBytes, maxHeaderListSize: limits.maxHeaderBytes)))
        // One event loop thread: it only moves bytes (handlers have threads of their own), and
        // connections are then admitted in the order they were accepted.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let started = StartResult()
        let stopped = Signal()
        let onRunning: @Sendable (any Channel) async -> Void = { started.set(.success($0.localAddress?.port ?? 0)) }
        let stopServer: @Sendable () async -> Void
        if let tls {
            let server = Server(childChannelSetup: try tls.wrap(http1), configuration: configuration, onServerRunning: onRunning,
                                eventLoopGroup: group, logger: logger)
            stopServer = run(server, started: started, stopped: stopped, host: host, port: port)
        } else {
            let server = Server(childChannelSetup: http1, configuration: configuration, onServerRunning: onRunning,
                                eventLoopGroup: group, logger: logger)
            stopServer = run(server, started: started, stopped: stopped, host: host, port: port)
        }
        let boundPort: Int
        do {
            boundPort = try started.wait().get()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        return HTTPServer(port: boundPort, registry: registry, group: group, stopServer: stopServer, stopped: stopped)
    }

    /// Runs `server` in a task of its own; returns how to stop it.
    private static func run<Child>(_ server: Server<Child>, started: StartResult, stopped: Signal, host: String, port: Int)
        -> @Sendable () async -> Void {
        Task.detached {
            do {
                try await server.run()
            } catch {
                started.set(.failure(.listenFailed(host: host, port: port, reason: "\(error)")))
            }
            stopped.set()
        }
        return { try? await server.shutdownGracefully() }
    }

    /// Stops accepting (the listener closes at once) and closes idle connections; requests in
    /// flight may finish for up to `grace`, then their connections are closed so that the
    /// handlers' writes fail and `clientIsGone` turns true. Returns when every connection is
    /// done, or two seconds after `grace` at most. Idempotent.
    public func shutdown(grace: Duration) {
        registry.stopAdmitting()
        let stopServer = self.stopServer
        Task.detached { await stopServer() }
        if !stopped.wait(timeout: grace) {
            registry.closeAll()
            guard stopped.wait(timeout: .seconds(2)) else { return }
        }
        try? group.syncShutdownGracefully()
    }
}

/// The certificate and key of an HTTPS listener, PEM files as a web server takes them.
public struct HTTPServerTLS: Sendable {
    /// The server's certificate, then any intermediates.
    public var certificateChainFile: String
    public var privateKeyFile: String

    public init(certificateChainFile: String, privateKeyFile: String) {
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
    }

    /// Loads the files (so that a bad one fails at start, naming itself).
    func configuration() throws(HTTPError) -> TLSConfiguration {
        let chain: [NIOSSLCertificate], key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateChainFile)
            guard !chain.isEmpty else { throw HTTPError.tlsFiles("\(certificateChainFile) holds no PEM certificate") }
        } catch {
            throw .tlsFiles("cannot load the certificate chain \(certificateChainFile): \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(file: privateKeyFile, format: .pem)
        } catch {
            throw .tlsFiles("cannot load the private key \(privateKeyFile): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    func wrap(_ http1: HTTP1Channel) throws(HTTPError) -> TLSChannel<HTTP1Channel> {
        let configuration = try configuration()
        do {
            return try TLSChannel(http1, tlsConfiguration: configuration)
        } catch {
            throw .tlsFiles("the certificate and key do not make a TLS server: \(error)")
        }
    }
}

/// Lets one process hold as many connections as its hard limit allows (the soft limit of
/// open files is often 1024, which thousands of idle clients would exhaust); returns the
/// limit in force.
private func raiseDescriptorLimit() -> Int {
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    var limit = rlimit()
    guard getrlimit(resource, &limit) == 0 else { return 1024 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(resource, &raised) == 0 { limit = raised }
    }
    return Int(clamping: limit.rlim_cur)
}

/// The bound port, or why the server did not start; set once, waited for once.
private final class StartResult: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: Result<Int, HTTPError>?

    func set(_ value: Result<Int, HTTPError>) {
        condition.lock()
        if result == nil { result = value }
        condition.broadcast()
        condition.unlock()
    }

    func wait() -> Result<Int, HTTPError> {
        condition.lock()
        defer { condition.unlock() }
        while result == nil { condition.wait() }
        return result!
    }
}

/// A flag that is set once and waited for.
final class Signal: @unchecked Sendable {
    private let condition = NSCondition()
    private var isSet = false

    func set() {
        condition.lock()
        isSet = true
        condition.broadcast()
        condition.unlock()
    }

    /// Whether it was set within `timeout`.
    func wait(timeout: Duration) -> Bool {
        let (seconds, attoseconds) = timeout.components
        let deadline = Date(timeIntervalSinceNow: Double(seconds) + Double(attoseconds) / 1e18)
        condition.lock()
        defer { condition.unlock() }
        while !isSet {
            if !condition.wait(until: deadline) { return isSet }
        }
        return true
    }
}
