import CGRPCCore
import Foundation
import Synchronization

/// What a handler may know about the call it serves.
public final class RPCServerContext: Sendable {
    /// The full method name, `"/package.Service/Method"`.
    public let method: String
    /// When the client stops waiting, or nil when it set no deadline.
    public let deadline: ContinuousClock.Instant?
    /// The request metadata, names in lowercase, in the order sent.
    public let metadata: [(name: String, value: String)]
    /// The client's address as the core names it (`ipv4:127.0.0.1:50312`).
    public let peer: String
    private let cancelled = Atomic<Bool>(false)

    /// The first value of metadata `name` (lowercase).
    public func metadata(_ name: String) -> String? {
        metadata.first { $0.name == name }?.value
    }

    /// True once the client cancelled the call, its deadline passed, the connection broke or the
    /// server is shutting down. The handler's task is cancelled at the same moment, so
    /// `Task.isCancelled` and `Task.checkCancellation()` see it too.
    public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }

    init(method: String, deadline: gpr_timespec, metadata: [(name: String, value: String)] = [], peer: String = "") {
        self.method = method
        self.deadline = Self.instant(deadline)
        self.metadata = metadata
        self.peer = peer
    }

    func markCancelled() { cancelled.store(true, ordering: .releasing) }

    /// The C deadline as an instant of the continuous clock; nil for "infinite future".
    private static func instant(_ deadline: gpr_timespec) -> ContinuousClock.Instant? {
        if deadline.tv_sec == Int64.max { return nil }
        let now = gpr_now(GPR_CLOCK_MONOTONIC)
        let left = gpr_time_sub(gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC), now)
        return .now + .seconds(left.tv_sec) + .nanoseconds(left.tv_nsec)
    }
}

/// Sends the messages of one server-streaming call.
public final class RPCStreamWriter: Sendable {
    private let call: ServerCall

    init(call: ServerCall) { self.call = call }

    /// Sends one message and returns when the transport has taken it. Start the next send only
    /// after this one returns.
    /// - Throws: `RPCStatus` `.cancelled` when the call has already ended (client cancelled,
    ///   deadline, server shutdown); `RPCError.concurrentSend` when a send is still in flight.
    public func send(_ payload: RPCPayload) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            call.sendMessage(payload, continuation)
        }
    }
}
