import CGRPCCore
import Foundation

/// One server-side `grpc_call`: its close notification, the handler's task and its replies.
///
/// As for `ClientCall`, everything a batch writes into is allocated here and each batch's tag
/// retains this object; `lock` serializes batches, cancellation and unref, which with the single
/// polling thread per queue is what makes `@unchecked Sendable` sound.
final class ServerCall: @unchecked Sendable {
    let context: RPCServerContext
    private let registry: CallRegistry<ServerCall>
    private let lock = NSLock()
    private var raw: OpaquePointer?  // grpc_call*; nil once unreferenced
    private var batchesInFlight = 0
    private var closeReceived = false
    private var initialMetadataSent = false
    private var sendInFlight = false
    private var handlerTask: Task<Void, Never>?

    /// For an exchange stream: waiting for the client's next message (no handler running), and
    /// the status to end with at the next chance once the server is shutting down.
    private var exchangeIdle = false
    private var exchangeEnding: RPCStatus?

    private let cancelled = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    private let statusDetails = UnsafeMutablePointer<grpc_slice>.allocate(capacity: 1)
    private let received = UnsafeMutablePointer<UnsafeMutablePointer<grpc_byte_buffer>?>.allocate(capacity: 1)
    // Owned by the one send or status batch in flight (at most one of each at a time).
    private var messageBuffer: UnsafeMutablePointer<grpc_byte_buffer>?

    init(raw: OpaquePointer, context: RPCServerContext, registry: CallRegistry<ServerCall>) {
        self.raw = raw
        self.context = context
        self.registry = registry
        cancelled.initialize(to: 0)
        statusDetails.initialize(to: grpc_empty_slice())
        received.initialize(to: nil)
        registry.insert(self)
        startReceiveClose()
    }

    deinit {
        if let messageBuffer { grpc_byte_buffer_destroy(messageBuffer) }
        if let message = received.pointee { grpc_byte_buffer_destroy(message) }
        grpc_slice_unref(statusDetails.pointee)
        statusDetails.deallocate()
        cancelled.deallocate()
        received.deallocate()
    }

    /// Runs `body` in a new task that is cancelled when the call is.
    func startHandler(_ body: @escaping @Sendable () async -> Void) {
        let task = Task { await body() }
        let alreadyCancelled = lock.withLock { () -> Bool in
            handlerTask = task
            return context.isCancelled
        }
        if alreadyCancelled { task.cancel() }
    }

    /// The close notification: after the status went out, or on cancellation of any kind.
    private func startReceiveClose() {
        var ops = [grpc_op()]
        ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER
        ops[0].data.recv_close_on_server.cancelled = cancelled
        _ = startBatch(ops, CompletionTag { [self] _ in
            let task = lock.withLock { () -> Task<Void, Never>? in
                closeReceived = true
                batchesInFlight -= 1
                return cancelled.pointee != 0 ? handlerTask : nil
            }
            if cancelled.pointee != 0 {
                context.markCancelled()
                task?.cancel()
            }
            finishIfDone()
        })
    }

    /// Sends one streamed message; resumes `continuation` when the core has taken it.
    func sendMessage(_ payload: RPCPayload, _ continuation: CheckedContinuation<Void, Error>) {
        let refusal = lock.withLock { () -> Error? in
            guard !sendInFlight else { return RPCError.concurrentSend }
            guard raw != nil, !closeReceived else { return RPCStatus(code: .cancelled, message: "call ended") }
            sendInFlight = true
            return nil
        }
        if let refusal { return continuation.resume(throwing: refusal) }
        let started = startSend(payload) { [self] success in
            lock.withLock { sendInFlight = false }
            finishIfDone()
            if success {
                continuation.resume()
            } else {
                continuation.resume(throwing: RPCStatus(code: .cancelled, message: "call ended"))
            }
        }
        if !started {
            lock.withLock { sendInFlight = false }
            continuation.resume(throwing: RPCStatus(code: .cancelled, message: "call ended"))
        }
    }

    /// Starts the batch that sends `payload` (with the initial metadata if not yet sent);
    /// `completion` runs once the batch is done and counted out. False if it could not start.
    private func startSend(_ payload: RPCPayload, _ completion: @escaping @Sendable (_ success: Bool) -> Void) -> Bool {
        messageBuffer = payload.makeByteBuffer()
        var ops = [grpc_op](repeating: grpc_op(), count: 2)
        ops[0].op = GRPC_OP_SEND_MESSAGE
        ops[0].data.send_message.send_message = messageBuffer
        ops[1].op = GRPC_OP_SEND_INITIAL_METADATA
        let includeMetadata = lock.withLock { defer { initialMetadataSent = true }; return !initialMetadataSent }
        let started = startBatch(includeMetadata ? ops : [ops[0]], CompletionTag { [self] success in
            releaseMessageBuffer()
            lock.withLock { batchesInFlight -= 1 }
            completion(success)
        })
        if !started { releaseMessageBuffer() }
        return started
    }

    // MARK: Exchange streams

    /// Serves an exchange stream on the polling thread: receives one message, answers it with
    /// `handler`'s response, and receives the next once the answer has gone out. The client's
    /// half-close ends the call with OK; a handler that throws ends it with `status(error)`.
    func serveExchange(
        _ handler: @escaping @Sendable (RPCPayload) throws -> RPCPayload,
        status: @escaping @Sendable (Error) -> RPCStatus
    ) {
        let ending = lock.withLock { () -> RPCStatus? in
            if exchangeEnding == nil { exchangeIdle = true }
            return exchangeEnding
        }
        if let ending { return finish(ending) }
        var ops = [grpc_op()]
        ops[0].op = GRPC_OP_RECV_MESSAGE
        ops[0].data.recv_message.recv_message = received
        _ = startBatch(ops, CompletionTag { [self] success in
            let message = received.pointee
            received.pointee = nil
            let ending = lock.withLock { () -> RPCStatus? in
                batchesInFlight -= 1
                exchangeIdle = false
                return exchangeEnding
            }
            defer { finishIfDone() }
            guard ending == nil, success, let message else {
                if let message { grpc_byte_buffer_destroy(message) }
                // Ending already sent its status; otherwise the client half-closed (OK) or the
                // call is over, and a status is dropped.
                if ending == nil { finish(RPCStatus(code: .ok)) }
                return
            }
            let response: RPCPayload
            do {
                response = try handler(RPCPayload(consuming: message))
            } catch {
                return finish(status(error))
            }
            // The next message is received once this answer has gone out.
            _ = startSend(response) { [self] success in
                if success { serveExchange(handler, status: status) }
                finishIfDone()
            }
        })
    }

    /// For a server shutting down: ends an exchange stream with `status` now if it is waiting
    /// for the client, or else after the answer being computed has gone out. Nothing for
    /// other calls.
    func endExchange(_ status: RPCStatus) {
        let idle = lock.withLock { () -> Bool in
            guard exchangeEnding == nil else { return false }
            exchangeEnding = status
            return exchangeIdle
        }
        if idle { finish(status) }
    }

    /// Ends the call with `status`, preceded by `response` for a unary call. Dropped silently if
    /// the call already ended.
    func finish(_ status: RPCStatus, response: RPCPayload? = nil) {
        let includeMetadata = lock.withLock { defer { initialMetadataSent = true }; return !initialMetadataSent }
        grpc_slice_unref(statusDetails.pointee)
        statusDetails.pointee = status.message.isEmpty
            ? grpc_empty_slice() : grpc_slice_from_copied_string(status.message)
        var ops = [grpc_op()]
        ops[0].op = GRPC_OP_SEND_STATUS_FROM_SERVER
        ops[0].data.send_status_from_server.status = status.code.grpc
        ops[0].data.send_status_from_server.status_details = statusDetails
        if includeMetadata {
            var metadata = grpc_op()
            metadata.op = GRPC_OP_SEND_INITIAL_METADATA
            ops.append(metadata)
        }
        if let response {
            messageBuffer = response.makeByteBuffer()
            var message = grpc_op()
            message.op = GRPC_OP_SEND_MESSAGE
            message.data.send_message.send_message = messageBuffer
            ops.append(message)
        }
        let started = startBatch(ops, CompletionTag { [self] _ in
            releaseMessageBuffer()
            lock.withLock { batchesInFlight -= 1 }
            finishIfDone()
        })
        if !started { releaseMessageBuffer() }
    }

    /// The server is going away: cancel the handler and drop our reference now. Batches in flight
    /// still complete on the queue; later ones are refused.
    func abandon() {
        let task = lock.withLock { () -> Task<Void, Never>? in
            if let call = raw {
                if !closeReceived { _ = grpc_call_cancel(call, nil) }
                grpc_call_unref(call)
                raw = nil
            }
            return handlerTask
        }
        context.markCancelled()
        task?.cancel()
    }

    private func startBatch(_ ops: [grpc_op], _ tag: CompletionTag) -> Bool {
        lock.withLock {
            guard startCallBatch(raw, ops, tag) else { return false }
            batchesInFlight += 1
            return true
        }
    }

    /// Unreferences the call once it is closed and no batch of ours is left in flight.
    private func finishIfDone() {
        let finished = lock.withLock { () -> Bool in
            guard closeReceived, batchesInFlight == 0, let call = raw else { return false }
            grpc_call_unref(call)
            raw = nil
            handlerTask = nil
            return true
        }
        if finished { registry.remove(self) }
    }

    private func releaseMessageBuffer() {
        if let buffer = messageBuffer { grpc_byte_buffer_destroy(buffer) }
        messageBuffer = nil
    }
}
