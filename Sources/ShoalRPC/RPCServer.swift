import CGRPCCore
import Foundation

/// A gRPC server whose handlers take and return opaque bytes.
///
/// Prefer `withServer`, which ties the server's life to a closure. Daemons use `start` and
/// `shutdown(grace:)`; dropping the last reference to a running server shuts it down at once.
/// Each handler runs in its own task, except inline handlers, which run on the polling thread;
/// a handler that throws harms no other call, and a slow one delays others only if inline.
public final class RPCServer: Sendable {
    /// Answers one request with one response.
    public typealias UnaryHandler = @Sendable (RPCPayload, RPCServerContext) async throws -> RPCPayload
    /// Answers one request with one response on the server's polling thread itself, without
    /// a task: for short, CPU-bound work on the critical path of a caller that waits for it
    /// (an expert worker's compute), which saves a thread handoff per call. While it runs the
    /// server processes no other event, so it must not wait on anything but the CPU.
    public typealias InlineHandler = @Sendable (RPCPayload, RPCServerContext) throws -> RPCPayload
    /// Answers one request with a stream of responses written through the writer.
    public typealias StreamingHandler = @Sendable (RPCPayload, RPCServerContext, RPCStreamWriter) async throws -> Void
    /// Answers each request message of an exchange stream (`RPCChannel.openExchange`) with one
    /// response message, on the polling thread as an `InlineHandler`. A stream carries one
    /// exchange at a time and ends when the client half-closes it (OK) or when the handler
    /// throws (that status; the client opens a new stream). A server shutting down ends each
    /// stream with `.unavailable` once its current answer has gone out.
    public typealias ExchangeHandler = InlineHandler

    private let core: ServerCore

    /// The port the server listens on (the one chosen by the system when asked for port 0).
    public var port: Int { core.port }

    private init(core: ServerCore) { self.core = core }

    deinit { core.shutdownNow() }

    /// Binds `listen` (`"host:port"`, port 0 for any free port) and starts serving.
    ///
    /// Methods are full names, `"/package.Service/Method"`; calls to any other method end with
    /// `.unimplemented`. A handler that throws `RPCStatus` sends exactly that status; any other
    /// error becomes `.internal` with the error's description.
    /// - Parameter maxReceiveBytes: the largest request accepted (default 64 MiB); a larger one
    ///   fails that call with `.resourceExhausted`.
    /// - Parameter inline: unary methods answered on the polling thread (`InlineHandler`).
    /// - Parameter exchange: bidirectional streaming methods answered message by message on
    ///   the polling thread (`ExchangeHandler`).
    /// - Throws: `RPCError.bindFailed` when the address cannot be bound,
    ///   `RPCError.serverTLSNeedsKeyAndCertificate` for incomplete TLS settings.
    public static func start(
        listen: String,
        security: RPCSecurity = .insecure,
        maxReceiveBytes: Int = 64 << 20,
        unary: [String: UnaryHandler] = [:],
        inline: [String: InlineHandler] = [:],
        serverStreaming: [String: StreamingHandler] = [:],
        exchange: [String: ExchangeHandler] = [:]
    ) throws -> RPCServer {
        RPCServer(core: try ServerCore(
            listen: listen, security: security, maxReceiveBytes: maxReceiveBytes,
            unary: unary, inline: inline, serverStreaming: serverStreaming, exchange: exchange))
    }

    /// Runs `body` with a started server and shuts the server down when `body` returns or
    /// throws, cancelling calls still running. Parameters as for `start`.
    @discardableResult
    public static func withServer<T>(
        listen: String = "127.0.0.1:0",
        security: RPCSecurity = .insecure,
        maxReceiveBytes: Int = 64 << 20,
        unary: [String: UnaryHandler] = [:],
        inline: [String: InlineHandler] = [:],
        serverStreaming: [String: StreamingHandler] = [:],
        exchange: [String: ExchangeHandler] = [:],
        body: (RPCServer) async throws -> T
    ) async throws -> T {
        let server = try start(
            listen: listen, security: security, maxReceiveBytes: maxReceiveBytes,
            unary: unary, inline: inline, serverStreaming: serverStreaming, exchange: exchange)
        do {
            let result = try await body(server)
            await server.shutdown(grace: .zero)
            return result
        } catch {
            await server.shutdown(grace: .zero)
            throw error
        }
    }

    /// Stops accepting calls, lets running calls finish for up to `grace`, then cancels the rest
    /// (their clients see `.cancelled`, their handlers see cancellation) and releases everything.
    /// Idempotent; returns when the server is gone.
    public func shutdown(grace: Duration = .seconds(5)) async {
        guard core.beginShutdown() else { return }
        let deadline = ContinuousClock.now + grace
        while !core.shutdownNotified, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(2))
        }
        core.completeShutdown()
    }
}
