import CGRPCCore
import Foundation

/// The calls of one channel that have not finished, so that closing the channel can cancel them.
final class CallRegistry<Call: AnyObject>: @unchecked Sendable {
    private let lock = NSLock()
    private var calls: [ObjectIdentifier: Call] = [:]

    func insert(_ call: Call) { lock.withLock { calls[ObjectIdentifier(call)] = call } }
    func remove(_ call: Call) { _ = lock.withLock { calls.removeValue(forKey: ObjectIdentifier(call)) } }
    func removeAll() -> [Call] { lock.withLock { defer { calls = [:] }; return Array(calls.values) } }
    func all() -> [Call] { lock.withLock { Array(calls.values) } }
}

/// One client `grpc_call` and the memory its batches write into.
///
/// Every pointer a batch writes through (received message, metadata arrays, status, details) is
/// allocated here and lives until `deinit`, which cannot run while a batch is in flight because
/// each batch's tag retains this object (docs/grpc-core.md: stable addresses). `lock` serializes
/// `grpc_call_start_batch`, cancel and unref; `@unchecked Sendable` rests on it and on the
/// completion queue delivering each tag once, on its one thread.
final class ClientCall: @unchecked Sendable {
    private let lock = NSLock()
    private var raw: OpaquePointer?  // grpc_call*; nil once unreferenced
    private var batchesInFlight = 0
    private var statusReceived = false
    private let registry: CallRegistry<ClientCall>

    private let initialMetadata = UnsafeMutablePointer<grpc_metadata_array>.allocate(capacity: 1)
    private let trailingMetadata = UnsafeMutablePointer<grpc_metadata_array>.allocate(capacity: 1)
    private let status = UnsafeMutablePointer<grpc_status_code>.allocate(capacity: 1)
    private let details = UnsafeMutablePointer<grpc_slice>.allocate(capacity: 1)
    private let errorString = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: 1)
    private let received = UnsafeMutablePointer<UnsafeMutablePointer<grpc_byte_buffer>?>.allocate(capacity: 1)
    // Touched only by the thread that starts the sending batch and then by its completion.
    private var sendBuffer: UnsafeMutablePointer<grpc_byte_buffer>?

    /// Sent with the call's initial metadata; kept until the call is gone.
    private let sentMetadata: SentMetadata?

    init(raw: OpaquePointer, registry: CallRegistry<ClientCall>, metadata: SentMetadata? = nil) {
        self.raw = raw
        self.registry = registry
        sentMetadata = metadata
        grpc_metadata_array_init(initialMetadata)
        grpc_metadata_array_init(trailingMetadata)
        status.initialize(to: GRPC_STATUS_UNKNOWN)
        details.initialize(to: grpc_empty_slice())
        errorString.initialize(to: nil)
        received.initialize(to: nil)
        registry.insert(self)
    }

    deinit {
        if let sendBuffer { grpc_byte_buffer_destroy(sendBuffer) }
        if let message = received.pointee { grpc_byte_buffer_destroy(message) }
        if let error = errorString.pointee { gpr_free(UnsafeMutableRawPointer(mutating: error)) }
        grpc_slice_unref(details.pointee)
        grpc_metadata_array_destroy(initialMetadata)
        grpc_metadata_array_destroy(trailingMetadata)
        for pointer in [initialMetadata, trailingMetadata] as [UnsafeMutablePointer<grpc_metadata_array>] {
            pointer.deallocate()
        }
        status.deallocate()
        details.deallocate()
        errorString.deallocate()
        received.deallocate()
    }

    // MARK: Unary

    /// Starts the whole unary exchange as one batch; calls `completion` once, on the completion
    /// queue's thread, with the response or the call's status.
    func startUnary(_ request: RPCPayload, _ completion: @escaping @Sendable (Result<RPCPayload, Error>) -> Void) {
        sendBuffer = request.makeByteBuffer()
        var ops = [grpc_op](repeating: grpc_op(), count: 6)
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA
        sentMetadata?.attach(to: &ops[0])
        ops[1].op = GRPC_OP_SEND_MESSAGE
        ops[1].data.send_message.send_message = sendBuffer
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA
        ops[3].data.recv_initial_metadata.recv_initial_metadata = initialMetadata
        ops[4].op = GRPC_OP_RECV_MESSAGE
        ops[4].data.recv_message.recv_message = received
        setReceiveStatus(&ops[5])
        let tag = CompletionTag { [self] _ in
            let result = takeUnaryResult()
            statusArrived()
            completion(result)
        }
        if !startBatch(ops, tag) {
            destroySendBuffer()
            completion(.failure(RPCStatus(code: .unavailable, message: "channel closed")))
        }
    }

    private func takeUnaryResult() -> Result<RPCPayload, Error> {
        destroySendBuffer()
        let message = received.pointee
        received.pointee = nil
        let code = RPCStatusCode(grpc: status.pointee)
        guard code == .ok else {
            if let message { grpc_byte_buffer_destroy(message) }
            return .failure(currentStatus())
        }
        guard let message else {
            return .failure(RPCStatus(code: .internal, message: "the server sent no response message"))
        }
        return .success(RPCPayload(consuming: message))
    }

    // MARK: Server streaming

    /// Sends the request, then reads messages one batch at a time into `continuation` until the
    /// stream ends, and finishes it with the call's status.
    func startServerStreaming(
        _ request: RPCPayload, _ continuation: AsyncThrowingStream<RPCPayload, Error>.Continuation
    ) {
        sendBuffer = request.makeByteBuffer()
        var send = [grpc_op](repeating: grpc_op(), count: 4)
        send[0].op = GRPC_OP_SEND_INITIAL_METADATA
        sentMetadata?.attach(to: &send[0])
        send[1].op = GRPC_OP_SEND_MESSAGE
        send[1].data.send_message.send_message = sendBuffer
        send[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT
        send[3].op = GRPC_OP_RECV_INITIAL_METADATA
        send[3].data.recv_initial_metadata.recv_initial_metadata = initialMetadata
        let sent = CompletionTag { [self] _ in
            destroySendBuffer()
            batchFinished()
        }
        guard startBatch(send, sent) else {
            destroySendBuffer()
            continuation.finish(throwing: RPCStatus(code: .unavailable, message: "channel closed"))
            return
        }
        let stream = StreamEnd(continuation)
        guard startReceiveStatus({ stream.statusArrived($0) }) else {
            cancel()
            continuation.finish(throwing: RPCStatus(code: .unavailable, message: "channel closed"))
            return
        }
        receiveNext(stream)
    }

    private func receiveNext(_ stream: StreamEnd) {
        let started = startReceive(withInitialMetadata: false) { [self] message in
            if let message {
                stream.continuation.yield(message)
                receiveNext(stream)
            } else {
                stream.messagesEnded()
            }
        }
        if !started { stream.messagesEnded() }
    }

    // MARK: Stream batches (server streaming and exchange streams)

    /// Starts the batch that waits for the call's status; `completion` gets it once the call
    /// has ended. False if the call is already gone.
    func startReceiveStatus(_ completion: @escaping @Sendable (RPCStatus) -> Void) -> Bool {
        var ops = [grpc_op](repeating: grpc_op(), count: 1)
        setReceiveStatus(&ops[0])
        return startBatch(ops, CompletionTag { [self] _ in
            let status = currentStatus()
            statusArrived()
            completion(status)
        })
    }

    /// Sends one message, preceded by the initial metadata if asked (an exchange stream's
    /// first send); `completion` says whether the core took it. False if the call is gone.
    func startSend(_ payload: RPCPayload, withInitialMetadata: Bool, _ completion: @escaping @Sendable (Bool) -> Void) -> Bool {
        sendBuffer = payload.makeByteBuffer()
        var ops = [grpc_op](repeating: grpc_op(), count: 2)
        ops[0].op = GRPC_OP_SEND_MESSAGE
        ops[0].data.send_message.send_message = sendBuffer
        ops[1].op = GRPC_OP_SEND_INITIAL_METADATA
        sentMetadata?.attach(to: &ops[1])
        let started = startBatch(withInitialMetadata ? ops : [ops[0]], CompletionTag { [self] success in
            destroySendBuffer()
            batchFinished()
            completion(success)
        })
        if !started { destroySendBuffer() }
        return started
    }

    /// Receives one message, with the server's initial metadata if asked (a stream's first
    /// receive); `completion` gets nil at the end of the messages. False if the call is gone.
    func startReceive(withInitialMetadata: Bool, _ completion: @escaping @Sendable (RPCPayload?) -> Void) -> Bool {
        var ops = [grpc_op](repeating: grpc_op(), count: 2)
        ops[0].op = GRPC_OP_RECV_MESSAGE
        ops[0].data.recv_message.recv_message = received
        ops[1].op = GRPC_OP_RECV_INITIAL_METADATA
        ops[1].data.recv_initial_metadata.recv_initial_metadata = initialMetadata
        return startBatch(withInitialMetadata ? ops : [ops[0]], CompletionTag { [self] success in
            let message = received.pointee
            received.pointee = nil
            batchFinished()
            if success, let message {
                completion(RPCPayload(consuming: message))
            } else {
                if let message { grpc_byte_buffer_destroy(message) }
                completion(nil)
            }
        })
    }

    // MARK: Cancellation and lifetime

    /// Cancels the call unless it has already ended; its status becomes CANCELLED.
    func cancel() {
        lock.withLock {
            if let raw, !statusReceived { _ = grpc_call_cancel(raw, nil) }
        }
    }

    /// Cancels the call and drops our reference now (the channel is closing). Batches in flight
    /// still complete on the completion queue; later batches are refused.
    func abandon() {
        lock.withLock {
            guard let call = raw else { return }
            if !statusReceived { _ = grpc_call_cancel(call, nil) }
            grpc_call_unref(call)
            raw = nil
        }
    }

    /// Starts a batch under the lock; false (and the tag's retain given back) if the call is
    /// already unreferenced or the core refuses it.
    private func startBatch(_ ops: [grpc_op], _ tag: CompletionTag) -> Bool {
        lock.withLock {
            guard startCallBatch(raw, ops, tag) else { return false }
            batchesInFlight += 1
            return true
        }
    }

    private func batchFinished() {
        finishIfDone { batchesInFlight -= 1 }
    }

    private func statusArrived() {
        finishIfDone {
            batchesInFlight -= 1
            statusReceived = true
        }
    }

    /// Applies `update`, then unreferences the call once its status is in and no batch is left.
    private func finishIfDone(_ update: () -> Void) {
        let finished = lock.withLock { () -> Bool in
            update()
            guard statusReceived, batchesInFlight == 0, let call = raw else { return false }
            grpc_call_unref(call)
            raw = nil
            return true
        }
        if finished { registry.remove(self) }
    }

    private func destroySendBuffer() {
        if let buffer = sendBuffer { grpc_byte_buffer_destroy(buffer) }
        sendBuffer = nil
    }

    private func setReceiveStatus(_ op: inout grpc_op) {
        op.op = GRPC_OP_RECV_STATUS_ON_CLIENT
        op.data.recv_status_on_client.trailing_metadata = trailingMetadata
        op.data.recv_status_on_client.status = status
        op.data.recv_status_on_client.status_details = details
        op.data.recv_status_on_client.error_string = errorString
    }

    private func currentStatus() -> RPCStatus {
        RPCStatus(code: RPCStatusCode(grpc: status.pointee), message: string(from: details))
    }
}

/// Finishes a client stream once both the end of the messages and the status have arrived, in
/// whichever order the completion queue delivers them (both on its one thread).
private final class StreamEnd: @unchecked Sendable {
    let continuation: AsyncThrowingStream<RPCPayload, Error>.Continuation
    private let lock = NSLock()
    private var messagesDone = false
    private var status: RPCStatus?

    init(_ continuation: AsyncThrowingStream<RPCPayload, Error>.Continuation) {
        self.continuation = continuation
    }

    func messagesEnded() { update { messagesDone = true } }
    func statusArrived(_ status: RPCStatus) { update { self.status = status } }

    private func update(_ change: () -> Void) {
        let end = lock.withLock { () -> RPCStatus? in
            change()
            return messagesDone ? status : nil
        }
        guard let end else { return }
        if end.code == .ok { continuation.finish() } else { continuation.finish(throwing: end) }
    }
}
