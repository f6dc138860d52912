import Foundation

/// One long-lived bidirectional stream on which each request message gets one response
/// message: a unary call's exchange without a call's setup, headers and trailers per message.
///
/// For a caller that sends the same peer many small requests in a row and waits for each
/// answer, such as a coordinator sending a worker one request per layer. Made by
/// `RPCChannel.openExchange(_:on:)`; every completion runs inside the `RPCCallerQueue`'s `run`,
/// on the thread that waits. One exchange at a time per stream.
///
/// A stream that has ended (the server answered with a status, the peer went away, it was
/// cancelled) fails every later exchange at once with that status: open a new one. Drop or
/// `cancel` every exchange before its queue is released, or close its channel: an open stream
/// keeps one operation pending on the queue until it ends.
///
/// `@unchecked Sendable`: `lock` guards the state, which the completions (on the queue's
/// thread) and `cancel` share.
public final class RPCExchange: @unchecked Sendable {
    private let call: ClientCall?
    private let lock = NSLock()
    private var opened = false
    /// The stream's status, once it has ended.
    private var status: RPCStatus?
    /// Why the caller cancelled the stream, reported instead of the core's CANCELLED.
    private var cancelReason: RPCStatus?
    private var pending: Pending?

    /// The exchange in flight: it ends when both its send and its receive have completed and,
    /// for a stream that ended instead of answering, its status has arrived.
    private struct Pending {
        let completion: @Sendable (Result<RPCPayload, Error>) -> Void
        var sent = false
        var received = false
        var response: RPCPayload?
    }

    init(call: ClientCall?) {
        self.call = call
        if call == nil { status = RPCStatus(code: .unavailable, message: "channel closed") }
    }

    deinit { call?.cancel() }

    /// Whether the stream has ended (or been cancelled): every exchange on it now fails.
    public var hasEnded: Bool { lock.withLock { status != nil || cancelReason != nil } }

    /// Sends `request` and hands the response, or the status that ended the stream, to
    /// `completion`, once: inside the queue's `run`, or at once, on this thread, when the stream
    /// has already ended.
    ///
    /// - Precondition: no other exchange of this stream is in flight.
    public func exchange(_ request: RPCPayload, completion: @escaping @Sendable (Result<RPCPayload, Error>) -> Void) {
        let (first, failure) = lock.withLock { () -> (Bool, RPCStatus?) in
            precondition(pending == nil, "one exchange at a time on a stream")
            if let ended = cancelReason ?? status { return (false, ended) }
            pending = Pending(completion: completion)
            defer { opened = true }
            return (!opened, nil)
        }
        if let failure { return completion(.failure(failure)) }
        guard let call else { preconditionFailure("a stream without a call has a status") }
        if first, !call.startReceiveStatus({ [weak self] in self?.ended(with: $0) }) {
            ended(with: RPCStatus(code: .unavailable, message: "channel closed"))
        }
        if !call.startSend(request, withInitialMetadata: first, { [weak self] _ in self?.sent() }) { sent() }
        if !call.startReceive(withInitialMetadata: first, { [weak self] in self?.received($0) }) { received(nil) }
    }

    /// Ends the stream; an exchange in flight fails with `reason` (for example
    /// `.deadlineExceeded` when the caller stopped waiting), as does every later one.
    public func cancel(_ reason: RPCStatus) {
        lock.withLock { if cancelReason == nil && status == nil { cancelReason = reason } }
        call?.cancel()
    }

    private func sent() {
        settle { $0.sent = true }
    }

    private func received(_ response: RPCPayload?) {
        settle {
            $0.received = true
            $0.response = response
        }
    }

    private func ended(with status: RPCStatus) {
        settle(stream: status) { _ in }
    }

    /// Applies `update` to the exchange in flight and completes it if it is over.
    private func settle(stream ended: RPCStatus? = nil, _ update: (inout Pending) -> Void) {
        let finished = lock.withLock { () -> (Pending, Result<RPCPayload, Error>)? in
            if let ended, status == nil { status = ended }
            guard var exchange = pending else { return nil }
            update(&exchange)
            pending = exchange
            guard exchange.sent, exchange.received else { return nil }
            let result: Result<RPCPayload, Error>
            if let response = exchange.response {
                result = .success(response)
            } else if let failure = cancelReason ?? status {
                result = .failure(failure.code == .ok
                    ? RPCStatus(code: .internal, message: "the server ended the stream without an answer") : failure)
            } else {
                return nil  // the stream ended without an answer: wait for its status
            }
            pending = nil
            return (exchange, result)
        }
        if let (exchange, result) = finished { exchange.completion(result) }
    }
}
