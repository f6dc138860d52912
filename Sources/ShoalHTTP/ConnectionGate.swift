import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// The open connections of one server: how many in all and per client address, for the
/// shares that `HTTPLimits` sets, and the channels themselves, so that a shutdown can cut
/// the ones still running when its grace is over.
final class ConnectionRegistry: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var perClient: [String: Int] = [:]
        var stopping = false
        var handlersRunning = 0
    }

    let limits: HTTPLimits
    private let state = NIOLockedValueBox(State())

    init(limits: HTTPLimits) { self.limits = limits }

    /// Why a new connection from `peer` is refused, or nil when it is admitted (and counted).
    func admit(_ channel: any Channel, peer: String) -> String? {
        state.withLockedValue { state in
            if state.stopping { return "the server is shutting down" }
            if state.channels.count >= limits.maxConnections { return "the server has no connection to spare; try again" }
            if state.perClient[peer, default: 0] >= limits.maxConnectionsPerClient {
                return "too many connections from \(peer) (at most \(limits.maxConnectionsPerClient))"
            }
            state.channels[ObjectIdentifier(channel)] = channel
            state.perClient[peer, default: 0] += 1
            return nil
        }
    }

    func remove(_ channel: any Channel, peer: String) {
        state.withLockedValue { state in
            guard state.channels.removeValue(forKey: ObjectIdentifier(channel)) != nil else { return }
            state.perClient[peer, default: 1] -= 1
            if state.perClient[peer] == 0 { state.perClient[peer] = nil }
        }
    }

    /// Counts a request whose handler is about to start on a thread of its own; false when
    /// `maxHandlers` already run (the request then gets 503, without a thread).
    func beginHandler() -> Bool {
        state.withLockedValue { state in
            guard state.handlersRunning < limits.maxHandlers else { return false }
            state.handlersRunning += 1
            return true
        }
    }

    func endHandler() { state.withLockedValue { $0.handlersRunning -= 1 } }

    /// Whether more than half of the connections are taken: heads must then come quickly.
    var isBusy: Bool { state.withLockedValue { $0.channels.count > limits.maxConnections / 2 } }

    /// Refuses every later connection.
    func stopAdmitting() { state.withLockedValue { $0.stopping = true } }

    /// Closes every open connection: running handlers' writes fail and their clients are gone.
    func closeAll() {
        for channel in state.withLockedValue({ Array($0.channels.values) }) { channel.close(promise: nil) }
    }
}

/// A connection's guard, in the pipeline after HTTP decoding: admits it against the shares
/// (one over gets 503 and is closed), and times what the client owes: a request head within
/// `headerTimeout` (`busyHeaderTimeout` while the server is over half full, chosen when the
/// wait starts) and its body within `bodyTimeout`; late, it gets 408 and is closed. While
/// the server answers nothing is timed: generation takes as long as it takes, and the writes
/// have their own timeout.
final class ConnectionGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let registry: ConnectionRegistry
    private var peer = ""
    private var admitted = false
    /// Answered and closing: whatever the client still sends is dropped.
    private var refused = false
    private var timer: Scheduled<Void>?
    /// Bytes arrived that are not yet a whole request head (a `BytesSeen` before the HTTP
    /// decoder sets it): a client that stops there is owed a 408 or 400; one that sent
    /// nothing since its last request is closed quietly.
    fileprivate var partialHead = false
    /// Between requests (the timer is the head's), not inside one (the body's).
    private var awaitingHead = false
    /// Requests read whose responses are not finished; more than one when a client pipelines.
    private var unanswered = 0

    init(registry: ConnectionRegistry) { self.registry = registry }

    func handlerAdded(context: ChannelHandlerContext) {
        let pipeline = context.pipeline.syncOperations
        if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) {
            try? pipeline.addHandler(BytesSeen(gate: self), position: .before(decoder))
        }
        if context.channel.isActive { admit(context: context) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed = event as? ChannelEvent, partialHead, !refused {
            refuse(context: context, status: .badRequest, message: "the request ended before it was complete")
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelActive(context: ChannelHandlerContext) {
        if !admitted { admit(context: context) }
        context.fireChannelActive()
    }

    private func admit(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress?.ipAddress ?? ""
        if let refusal = registry.admit(context.channel, peer: peer) {
            refuse(context: context, status: .serviceUnavailable, message: refusal)
            return
        }
        admitted = true
        awaitHead(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        if admitted { registry.remove(context.channel, peer: peer) }
        admitted = false
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refused { return }
        switch unwrapInboundIn(data) {
        case .head:
            partialHead = false
            awaitingHead = false
            unanswered += 1
            arm(context: context, registry.limits.bodyTimeout, "the request body did not arrive in time")
        case .end:
            partialHead = false
            timer?.cancel()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd = if case .end = unwrapOutboundIn(data) { true } else { false }
        context.write(data, promise: promise)
        guard isEnd else { return }
        unanswered = max(0, unanswered - 1)
        // A pipelined request already read keeps its own timer (its body's) or none.
        if unanswered == 0 { awaitHead(context: context) }
    }

    private func awaitHead(context: ChannelHandlerContext) {
        awaitingHead = true
        let limits = registry.limits
        arm(context: context, registry.isBusy ? limits.busyHeaderTimeout : limits.headerTimeout,
            "the request head did not arrive in time")
    }

    private func arm(context: ChannelHandlerContext, _ timeout: Duration, _ message: String) {
        timer?.cancel()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            let (gate, context) = loopBound.value
            if gate.awaitingHead && !gate.partialHead {
                gate.refused = true
                context.close(promise: nil)  // an idle keep-alive connection: closed quietly
            } else {
                gate.refuse(context: context, status: .requestTimeout, message: message)
            }
        }
    }

    /// Answers with an OpenAI-shaped error and closes the connection: our side at once (a
    /// FIN after the answer), all of it a second later. Closing outright while the client's
    /// bytes wait unread would send a reset, which can destroy the answer before it is read.
    private func refuse(context: ChannelHandlerContext, status: HTTPResponse.Status, message: String) {
        timer?.cancel()
        refused = true
        let body = errorBody(status: status.code, message: message)
        var head = HTTPResponse(status: status)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = "\(body.count)"
        head.headerFields[.connection] = "close"
        head.headerFields[.server] = "shoal"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: body))), promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            let context = loopBound.value
            context.close(mode: .output, promise: nil)
            context.eventLoop.scheduleTask(in: .seconds(1)) { loopBound.value.close(promise: nil) }
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Tells its gate that request bytes arrived, before the HTTP decoder makes anything of them.
private final class BytesSeen: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let gate: ConnectionGate

    init(gate: ConnectionGate) { self.gate = gate }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if unwrapInboundIn(data).readableBytes > 0 { gate.partialHead = true }
        context.fireChannelRead(data)
    }
}
