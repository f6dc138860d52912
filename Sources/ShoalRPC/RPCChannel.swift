import CGRPCCore
import Foundation
import Synchronization

/// A client connection to one gRPC server, carrying unary, server-streaming and exchange
/// calls whose messages are opaque bytes.
///
/// The channel owns a `grpc_channel` and, from its first call that completes on neither an
/// `RPCCallerQueue` nor an exchange stream, a completion queue and that queue's polling thread.
/// (The gRPC core lets any thread polling any queue read any socket, so an idle polling thread
/// would take a caller's answers and then have to wake the caller: measured, four such threads
/// in a coordinator woke once per worker answer each.) Each
/// method is registered with the core on first use (`grpc_channel_register_call`), and its name
/// is kept until the channel is destroyed. `close()` (or `deinit`) cancels calls still running;
/// they then fail with `RPCStatus` `.cancelled`. Calls after `close()` fail with `.unavailable`.
public final class RPCChannel: @unchecked Sendable {
    /// The `host:port` this channel connects to.
    public let target: String
    private var ownQueue: CompletionQueue?  // under `lock`
    private let calls = CallRegistry<ClientCall>()
    // `lock` guards `raw` and `methods` (the core's registered-call handles; the names they were
    // registered with are interned by `GRPCLibrary` and outlive the channel).
    private let lock = NSLock()
    private var raw: OpaquePointer?  // grpc_channel*
    private var methods: [String: UnsafeMutableRawPointer] = [:]
    private let sentMetadata: SentMetadata?

    /// Creates a channel to `target` (`"host:port"`). Connecting is lazy: an unreachable server
    /// shows up as calls failing with `.unavailable`.
    /// - Parameter maxReceiveBytes: the largest response message accepted (default 64 MiB);
    ///   a larger one fails the call with `.resourceExhausted`.
    /// - Parameter metadata: sent with every call (lowercase names), e.g. `authorization`.
    public init(target: String, security: RPCSecurity = .insecure, maxReceiveBytes: Int = 64 << 20,
                metadata: [(name: String, value: String)] = []) {
        GRPCLibrary.retain()
        self.target = target
        sentMetadata = metadata.isEmpty ? nil : SentMetadata(metadata)
        let credentials = security.makeChannelCredentials()
        raw = withChannelArguments(maxReceiveBytes: maxReceiveBytes) {
            grpc_channel_create(target, credentials, $0)
        }
        grpc_channel_credentials_release(credentials)
    }

    deinit { close() }

    /// Cancels the calls still running, destroys the channel and joins its completion-queue
    /// thread. Idempotent.
    public func close() {
        guard let (channel, queue) = lock.withLock({ () -> (OpaquePointer, CompletionQueue?)? in
            defer { raw = nil }
            return raw.map { ($0, ownQueue) }
        }) else { return }
        for call in calls.removeAll() { call.abandon() }
        grpc_channel_destroy(channel)
        queue?.shutdownAndJoin()
        GRPCLibrary.release()
    }

    /// Calls `method` (`"/package.Service/Method"`) with one request and returns the one
    /// response.
    ///
    /// - Throws: `RPCStatus` for every non-OK end: `.deadlineExceeded` when `timeout` passes,
    ///   `.unavailable` when the server cannot be reached or the channel is closed,
    ///   `.cancelled` when the calling task is cancelled, otherwise what the server sent.
    public func unary(_ method: String, request: RPCPayload, timeout: Duration) async throws -> RPCPayload {
        guard let call = makeCall(method, timeout: timeout) else {
            throw RPCStatus(code: .unavailable, message: "channel closed")
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                call.startUnary(request) { continuation.resume(with: $0) }
            }
        } onCancel: {
            call.cancel()
        }
    }

    /// Calls `method` with one request and hands the response, or the `RPCStatus` that ended
    /// the call (as for the async `unary`), to `completion`, once, on the channel's completion
    /// queue thread: `completion` must be quick and must not block.
    ///
    /// For callers that are not async, such as a forward pass fanning one layer out to several
    /// workers and waiting for all of them: no task is created per call.
    public func unary(
        _ method: String, request: RPCPayload, timeout: Duration,
        completion: @escaping @Sendable (Result<RPCPayload, Error>) -> Void
    ) {
        guard let call = makeCall(method, timeout: timeout) else {
            completion(.failure(RPCStatus(code: .unavailable, message: "channel closed")))
            return
        }
        call.startUnary(request, completion)
    }

    /// The same call for a thread that may block (a command, a membership loop): returns the
    /// response or throws the `RPCStatus` that ended the call. Never from a Swift
    /// concurrency thread: it waits.
    public func unaryWaiting(_ method: String, request: RPCPayload, timeout: Duration) throws -> RPCPayload {
        let answer = Mutex<Result<RPCPayload, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        unary(method, request: request, timeout: timeout) { result in
            answer.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try answer.withLock { $0! }.get()
    }

    /// The same call with its completion on `queue`: `completion` runs inside the
    /// `queue.run(until:)` of the thread that waits for it.
    public func unary(
        _ method: String, request: RPCPayload, timeout: Duration, on queue: RPCCallerQueue,
        completion: @escaping @Sendable (Result<RPCPayload, Error>) -> Void
    ) {
        guard let call = makeCall(method, timeout: timeout, queue: queue.raw) else {
            completion(.failure(RPCStatus(code: .unavailable, message: "channel closed")))
            return
        }
        call.startUnary(request, completion)
    }

    /// Calls `method` with one request and returns the server's stream of responses.
    ///
    /// The stream finishes normally when the server ends with OK, and throws `RPCStatus`
    /// otherwise (see `unary`). Cancelling the consuming task, or dropping the stream, cancels
    /// the call; `AsyncThrowingStream` then ends the iteration (it returns nil rather than
    /// throwing).
    public func serverStreaming(
        _ method: String, request: RPCPayload, timeout: Duration
    ) -> AsyncThrowingStream<RPCPayload, Error> {
        let (stream, continuation) = AsyncThrowingStream<RPCPayload, Error>.makeStream()
        guard let call = makeCall(method, timeout: timeout) else {
            continuation.finish(throwing: RPCStatus(code: .unavailable, message: "channel closed"))
            return stream
        }
        continuation.onTermination = { termination in
            if case .cancelled = termination { call.cancel() }
        }
        call.startServerStreaming(request, continuation)
        return stream
    }

    /// Opens an exchange stream to `method`, a bidirectional streaming method whose server
    /// answers each request message with one response message (`RPCServer`'s `exchange`
    /// handlers). The stream has no deadline of its own: its caller bounds each exchange. Its
    /// completions run inside `queue.run`. On a closed channel every exchange fails with
    /// `.unavailable`.
    public func openExchange(_ method: String, on queue: RPCCallerQueue) -> RPCExchange {
        RPCExchange(call: makeCall(method, timeout: nil, queue: queue.raw))
    }

    /// Whether this channel has started its own completion queue and thread (for tests).
    var hasOwnQueue: Bool { lock.withLock { ownQueue != nil } }

    /// This channel's own completion queue, started on first use. Call under `lock`.
    private func channelQueue() -> CompletionQueue {
        if let ownQueue { return ownQueue }
        let queue = CompletionQueue(name: "shoal.rpc.channel")
        ownQueue = queue
        return queue
    }

    /// A new call on `queue` (this channel's completion queue if nil), or nil once the channel
    /// is closed; `timeout` nil for none.
    private func makeCall(_ method: String, timeout: Duration?, queue: OpaquePointer? = nil) -> ClientCall? {
        let deadline = timeout.map { grpcDeadline(after: $0) } ?? gpr_inf_future(GPR_CLOCK_MONOTONIC)
        return lock.withLock { () -> ClientCall? in
            guard let channel = raw else { return nil }
            let handle: UnsafeMutableRawPointer
            if let registered = methods[method] {
                handle = registered
            } else {
                handle = grpc_channel_register_call(channel, GRPCLibrary.methodName(method), nil, nil)
                methods[method] = handle
            }
            let call = grpc_channel_create_registered_call(
                channel, nil, cgrpc_propagate_defaults(), queue ?? channelQueue().raw, handle, deadline, nil)!
            return ClientCall(raw: call, registry: calls, metadata: sentMetadata)
        }
    }
}
