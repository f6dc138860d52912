// The process-wide gRPC runtime and the completion-queue threads that resume Swift code.
import CGRPCCore
import Foundation

/// Counts the channels and servers alive so that `grpc_init` runs before the first and
/// `grpc_shutdown_blocking` after the last, once each of them has destroyed its calls,
/// drained its completion queue and joined its polling thread (docs/grpc-core.md: shutdown order).
enum GRPCLibrary {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var users = 0
    nonisolated(unsafe) private static var methodNames: [String: UnsafeMutablePointer<CChar>] = [:]

    static func retain() {
        lock.withLock {
            if users == 0 { grpc_init() }
            users += 1
        }
    }

    static func release() {
        lock.withLock {
            users -= 1
            guard users == 0 else { return }
            grpc_shutdown_blocking()
            for name in methodNames.values { free(name) }
            methodNames = [:]
        }
    }

    /// The C string for a method name, for `grpc_channel_register_call` and
    /// `grpc_server_register_method`, which keep the pointer without copying it. The core may
    /// still touch it while a cancelled call winds down after its channel or server is destroyed,
    /// so each distinct name is kept until the library itself shuts down. Call between `retain`
    /// and `release`.
    static func methodName(_ name: String) -> UnsafeMutablePointer<CChar> {
        lock.withLock {
            if let interned = methodNames[name] { return interned }
            let interned = strdup(name)!
            methodNames[name] = interned
            return interned
        }
    }
}

/// The work to do when the operation a completion-queue tag names completes.
///
/// A tag is passed to C as a retained pointer (`retainedOpaque`); the polling thread takes that
/// retain back when the event arrives. If the C call that would have queued it fails, the caller
/// must give the retain back with `releaseUnqueued` (docs/grpc-core.md: each tag holds a retain).
final class CompletionTag: @unchecked Sendable {
    let onComplete: @Sendable (_ success: Bool) -> Void

    init(_ onComplete: @escaping @Sendable (_ success: Bool) -> Void) {
        self.onComplete = onComplete
    }

    var retainedOpaque: UnsafeMutableRawPointer {
        Unmanaged.passRetained(self).toOpaque()
    }

    static func releaseUnqueued(_ tag: UnsafeMutableRawPointer) {
        Unmanaged<CompletionTag>.fromOpaque(tag).release()
    }
}

/// Starts a batch of `ops` on `call` (nil once the call is unreferenced) with `tag`; false,
/// with the tag's retain given back, when there is no call or the core refuses the batch.
/// Callers hold their call's lock and count the batch in flight when this succeeds.
func startCallBatch(_ call: OpaquePointer?, _ ops: [grpc_op], _ tag: CompletionTag) -> Bool {
    guard let call else { return false }
    let opaque = tag.retainedOpaque
    let result = ops.withUnsafeBufferPointer { grpc_call_start_batch(call, $0.baseAddress, $0.count, opaque, nil) }
    guard result == GRPC_CALL_OK else {
        CompletionTag.releaseUnqueued(opaque)
        return false
    }
    return true
}

/// One `grpc_completion_queue` and the one thread that polls it.
///
/// `@unchecked Sendable` is sound because the queue pointer never changes, the polling thread is
/// the only caller of `grpc_completion_queue_next`, and every tag it pops is owned by exactly one
/// `CompletionTag` whose handler runs on that thread alone.
final class CompletionQueue: @unchecked Sendable {
    /// The `grpc_completion_queue*`, created for `next` polling.
    let raw: OpaquePointer
    private let drained = DispatchSemaphore(value: 0)
    private let stateLock = NSLock()
    private var isShutDown = false

    init(name: String) {
        raw = grpc_completion_queue_create_for_next(nil)
        // The thread keeps `self` alive until it has seen GRPC_QUEUE_SHUTDOWN.
        let thread = Thread { [self] in poll() }
        thread.name = name
        thread.start()
    }

    private func poll() {
        while true {
            let event = grpc_completion_queue_next(raw, gpr_inf_future(GPR_CLOCK_REALTIME), nil)
            switch event.type {
            case GRPC_OP_COMPLETE:
                let tag = Unmanaged<CompletionTag>.fromOpaque(event.tag).takeRetainedValue()
                tag.onComplete(event.success != 0)
            case GRPC_QUEUE_SHUTDOWN:
                drained.signal()
                return
            default:
                continue
            }
        }
    }

    /// Shuts the queue down, waits until every queued tag has been delivered, joins the polling
    /// thread and destroys the queue (before the owner releases the library). Every call and server using the queue must be finished or cancelled first,
    /// and this must not run on the polling thread itself.
    func shutdownAndJoin() {
        let first = stateLock.withLock { () -> Bool in
            defer { isShutDown = true }
            return !isShutDown
        }
        guard first else { return }
        grpc_completion_queue_shutdown(raw)
        drained.wait()
        // The polling thread has returned from its last `next`: nothing touches the queue now.
        grpc_completion_queue_destroy(raw)
    }
}

extension Duration {
    /// This duration in whole nanoseconds, saturating at `Int64.max`.
    var saturatingNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        if seconds >= Int64.max / 1_000_000_000 { return Int64.max }
        if seconds < 0 { return 0 }
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// The absolute gRPC deadline `timeout` from now, on the monotonic clock.
func grpcDeadline(after timeout: Duration) -> gpr_timespec {
    let ns = timeout.saturatingNanoseconds
    if ns == Int64.max { return gpr_inf_future(GPR_CLOCK_MONOTONIC) }
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(ns, GPR_TIMESPAN))
}

/// A string from a `grpc_slice` (status details).
func string(from slice: UnsafeMutablePointer<grpc_slice>) -> String {
    let count = cgrpc_slice_length(slice)
    guard count > 0 else { return "" }
    let bytes = UnsafeBufferPointer(start: cgrpc_slice_start(slice), count: count)
    return String(decoding: bytes, as: UTF8.self)
}

/// A completion queue that its owner's thread polls itself instead of a dedicated thread.
///
/// For a caller that starts several unary calls and then blocks until all have answered, such
/// as a forward pass fanning a layer out to its workers: the thread that waits is the one the
/// core wakes with each answer, which saves a thread handoff per answer (the channel's own
/// queue thread would otherwise take the answer and then wake the waiting thread).
/// Completions of calls started on this queue run inside `run(until:)`, on the calling thread.
/// One thread at a time may call `run`; every call started on the queue must have completed
/// before the queue is released (calls always end, at the latest at their deadline).
public final class RPCCallerQueue: @unchecked Sendable {
    let raw: OpaquePointer

    public init() {
        GRPCLibrary.retain()
        raw = grpc_completion_queue_create_for_next(nil)
    }

    deinit {
        grpc_completion_queue_shutdown(raw)
        while poll(timeout: nil) {}
        grpc_completion_queue_destroy(raw)
        GRPCLibrary.release()
    }

    /// Runs the completions of this queue's calls as they arrive until `done()` holds.
    public func run(until done: () -> Bool) {
        while !done() {
            // A bounded wait, so that a `done` made true by something other than this queue's
            // own events is still noticed.
            if !poll(timeout: .milliseconds(50)) { return }
        }
    }

    /// Runs completions as they arrive until `done()` holds or `deadline` passes; whether
    /// `done()` held.
    public func run(until done: () -> Bool, deadline: ContinuousClock.Instant) -> Bool {
        while !done() {
            let left = deadline - .now
            if left <= .zero { return false }
            if !poll(timeout: min(left, .milliseconds(50))) { return done() }
        }
        return true
    }

    /// Waits up to `timeout` (forever if nil) for one event and runs its completion; false
    /// once the queue has shut down.
    private func poll(timeout: Duration?) -> Bool {
        let deadline = timeout.map { grpcDeadline(after: $0) } ?? gpr_inf_future(GPR_CLOCK_REALTIME)
        let event = grpc_completion_queue_next(raw, deadline, nil)
        switch event.type {
        case GRPC_OP_COMPLETE:
            Unmanaged<CompletionTag>.fromOpaque(event.tag).takeRetainedValue().onComplete(event.success != 0)
            return true
        case GRPC_QUEUE_SHUTDOWN:
            return false
        default:  // GRPC_QUEUE_TIMEOUT
            return true
        }
    }
}
