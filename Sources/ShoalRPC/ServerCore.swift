import CGRPCCore
import Foundation

/// The `grpc_server`, its completion queue and polling thread, and the requests kept armed for
/// new calls. Request tags retain this object, never the public `RPCServer`, so dropping the
/// `RPCServer` can shut the core down.
final class ServerCore: @unchecked Sendable {
    let port: Int
    private let queue: CompletionQueue
    private let calls = CallRegistry<ServerCall>()
    private let unary: [String: RPCServer.UnaryHandler]
    private let inline: [String: RPCServer.InlineHandler]
    private let streaming: [String: RPCServer.StreamingHandler]
    private let exchange: [String: RPCServer.ExchangeHandler]
    private let methods: [RegisteredMethod]

    // `lock` guards `raw`, `accepting` and `notified`.
    private let lock = NSLock()
    private var raw: OpaquePointer?  // grpc_server*
    private var accepting = true
    private var notified = false
    private let notifiedSignal = DispatchSemaphore(value: 0)

    /// Requests kept outstanding per method, so that concurrent calls need not queue in the core.
    private static let requestsPerMethod = 4

    init(
        listen: String, security: RPCSecurity, maxReceiveBytes: Int,
        unary: [String: RPCServer.UnaryHandler], inline: [String: RPCServer.InlineHandler],
        serverStreaming: [String: RPCServer.StreamingHandler], exchange: [String: RPCServer.ExchangeHandler]
    ) throws(RPCError) {
        let names = [Array(unary.keys), Array(inline.keys), Array(serverStreaming.keys), Array(exchange.keys)]
        precondition(
            Set(names.joined()).count == names.reduce(0) { $0 + $1.count },
            "a method name has more than one handler")
        let credentials = try security.makeServerCredentials()
        GRPCLibrary.retain()
        self.unary = unary
        self.inline = inline
        streaming = serverStreaming
        self.exchange = exchange
        queue = CompletionQueue(name: "shoal.rpc.server")
        let server = withChannelArguments(maxReceiveBytes: maxReceiveBytes, forServer: true) { grpc_server_create($0, nil)! }
        grpc_server_register_completion_queue(server, queue.raw, nil)
        let bound = grpc_server_add_http2_port(server, listen, credentials)
        grpc_server_credentials_release(credentials)
        guard bound > 0 else {
            grpc_server_destroy(server)
            queue.shutdownAndJoin()
            GRPCLibrary.release()
            throw .bindFailed(address: listen)
        }
        port = Int(bound)
        var methods: [RegisteredMethod] = []
        for name in names.joined() {
            // An exchange stream reads its messages itself; every other call arrives with its one
            // request.
            let readsPayload = exchange[name] == nil
            let payload = readsPayload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER : GRPC_SRM_PAYLOAD_NONE
            guard let handle = grpc_server_register_method(server, GRPCLibrary.methodName(name), nil, payload, 0)
            else { preconditionFailure("the core refused to register method \(name)") }
            methods.append(RegisteredMethod(name: name, handle: handle, readsPayload: readsPayload))
        }
        self.methods = methods
        raw = server
        grpc_server_start(server)
        for method in methods {
            for _ in 0..<Self.requestsPerMethod { requestCall(method) }
        }
        for _ in 0..<2 { requestUnknownCall() }
    }

    // MARK: Accepting calls

    /// Arms one request for a call to a registered method; on arrival, re-arms and dispatches.
    private func requestCall(_ method: RegisteredMethod) {
        let slot = RegisteredRequest()
        let tag = CompletionTag { [self] success in
            guard success, let call = slot.call.pointee else { return }
            requestCall(method)
            let request = slot.payload.pointee.map { RPCPayload(consuming: $0) }
            slot.payload.pointee = nil
            dispatch(method.name, call: call, deadline: slot.deadline.pointee, metadata: receivedMetadata(slot.metadata),
                     request: request)
        }
        lock.withLock {
            guard accepting, let server = raw else { return }
            let opaque = tag.retainedOpaque
            let result = grpc_server_request_registered_call(
                server, method.handle, slot.call, slot.deadline, slot.metadata,
                method.readsPayload ? slot.payload : nil, queue.raw, queue.raw, opaque)
            if result != GRPC_CALL_OK { CompletionTag.releaseUnqueued(opaque) }
        }
    }

    private func dispatch(_ method: String, call raw: OpaquePointer, deadline: gpr_timespec,
                          metadata: [(name: String, value: String)], request: RPCPayload?) {
        var peer = ""
        if let name = grpc_call_get_peer(raw) {
            peer = String(cString: name)
            gpr_free(name)
        }
        let context = RPCServerContext(method: method, deadline: deadline, metadata: metadata, peer: peer)
        let call = ServerCall(raw: raw, context: context, registry: calls)
        if let handler = exchange[method] {
            return call.serveExchange({ try handler($0, context) }, status: Self.status(for:))
        }
        guard let request else {
            return call.finish(RPCStatus(code: .invalidArgument, message: "the request carried no message"))
        }
        if let handler = inline[method] {
            do {
                call.finish(RPCStatus(code: .ok), response: try handler(request, context))
            } catch {
                call.finish(Self.status(for: error))
            }
        } else if let handler = unary[method] {
            call.startHandler {
                do {
                    let response = try await handler(request, context)
                    call.finish(RPCStatus(code: .ok), response: response)
                } catch {
                    call.finish(Self.status(for: error))
                }
            }
        } else if let handler = streaming[method] {
            let writer = RPCStreamWriter(call: call)
            call.startHandler {
                do {
                    try await handler(request, context, writer)
                    call.finish(RPCStatus(code: .ok))
                } catch {
                    call.finish(Self.status(for: error))
                }
            }
        }
    }

    private static func status(for error: Error) -> RPCStatus {
        (error as? RPCStatus) ?? RPCStatus(code: .internal, message: String(describing: error))
    }

    /// Arms one request for a call to an unregistered method, answered with UNIMPLEMENTED.
    private func requestUnknownCall() {
        let slot = UnregisteredRequest()
        let tag = CompletionTag { [self] success in
            guard success, let raw = slot.call.pointee else { return }
            requestUnknownCall()
            let method = string(from: &slot.details.pointee.method)
            let context = RPCServerContext(method: method, deadline: slot.details.pointee.deadline)
            ServerCall(raw: raw, context: context, registry: calls)
                .finish(RPCStatus(code: .unimplemented, message: "unknown method \(method)"))
        }
        lock.withLock {
            guard accepting, let server = raw else { return }
            let opaque = tag.retainedOpaque
            let result = grpc_server_request_call(
                server, slot.call, slot.details, slot.metadata, queue.raw, queue.raw, opaque)
            if result != GRPC_CALL_OK { CompletionTag.releaseUnqueued(opaque) }
        }
    }

    // MARK: Shutdown

    /// Stops accepting calls and asks the core to notify when running calls are done. False when
    /// shutdown had already begun.
    func beginShutdown() -> Bool {
        let began = lock.withLock { () -> Bool in
            guard accepting, let server = raw else { return false }
            accepting = false
            let tag = CompletionTag { [self] _ in
                lock.withLock { notified = true }
                notifiedSignal.signal()
            }
            grpc_server_shutdown_and_notify(server, queue.raw, tag.retainedOpaque)
            return true
        }
        guard began else { return false }
        // Exchange streams stay open between requests, and would hold the shutdown for its
        // whole grace: end each one once it is not computing.
        for call in calls.all() {
            call.endExchange(RPCStatus(code: .unavailable, message: "the server is shutting down"))
        }
        return true
    }

    var shutdownNotified: Bool { lock.withLock { notified } }

    /// Cancels the calls still running, waits for the core's notification, abandons every call,
    /// destroys the server, drains and joins the queue and releases the library.
    func completeShutdown() {
        guard let server = lock.withLock({ raw }) else { return }
        grpc_server_cancel_all_calls(server)
        notifiedSignal.wait()
        for call in calls.removeAll() { call.abandon() }
        lock.withLock { raw = nil }
        grpc_server_destroy(server)
        queue.shutdownAndJoin()
        GRPCLibrary.release()
    }

    /// `beginShutdown` + `completeShutdown` with no grace, blocking.
    func shutdownNow() {
        _ = beginShutdown()
        completeShutdown()
    }
}

/// A method name and the core's handle for it, valid while the server lives.
private struct RegisteredMethod: @unchecked Sendable {
    let name: String
    let handle: UnsafeMutableRawPointer
    /// Whether the core delivers the call with its first message (the core refuses a payload
    /// slot for a method registered without one).
    let readsPayload: Bool
}

/// Where the core writes a new call to a registered method (stable addresses until the tag).
private final class RegisteredRequest: @unchecked Sendable {
    let call = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: 1)
    let deadline = UnsafeMutablePointer<gpr_timespec>.allocate(capacity: 1)
    let metadata = UnsafeMutablePointer<grpc_metadata_array>.allocate(capacity: 1)
    let payload = UnsafeMutablePointer<UnsafeMutablePointer<grpc_byte_buffer>?>.allocate(capacity: 1)

    init() {
        call.initialize(to: nil)
        deadline.initialize(to: gpr_inf_future(GPR_CLOCK_REALTIME))
        grpc_metadata_array_init(metadata)
        payload.initialize(to: nil)
    }

    deinit {
        if let buffer = payload.pointee { grpc_byte_buffer_destroy(buffer) }
        grpc_metadata_array_destroy(metadata)
        call.deallocate()
        deadline.deallocate()
        metadata.deallocate()
        payload.deallocate()
    }
}

/// Where the core writes a new call to an unregistered method.
private final class UnregisteredRequest: @unchecked Sendable {
    let call = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: 1)
    let details = UnsafeMutablePointer<grpc_call_details>.allocate(capacity: 1)
    let metadata = UnsafeMutablePointer<grpc_metadata_array>.allocate(capacity: 1)

    init() {
        call.initialize(to: nil)
        grpc_call_details_init(details)
        grpc_metadata_array_init(metadata)
    }

    deinit {
        grpc_call_details_destroy(details)
        grpc_metadata_array_destroy(metadata)
        call.deallocate()
        details.deallocate()
        metadata.deallocate()
    }
}
