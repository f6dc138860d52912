import Foundation
import ShoalRPC

/// Calls several channels at once and waits for all the answers, on a thread that is not
/// async (the forward pass). The calls complete on a queue this thread polls itself
/// (`RPCCallerQueue`), so each answer wakes the waiting thread directly. One thread at a time.
final class Fanout: @unchecked Sendable {
    /// Where the calls and exchange streams of this fan-out complete.
    let queue = RPCCallerQueue()

    /// One channel's answer and how long after the call began it arrived.
    struct Answer {
        var result: Result<RPCPayload, Error>
        var elapsed: Duration
    }

    /// Sends `requests[i]` (nil: nothing for that channel) to `channels[i]` as unary calls and
    /// returns each answer in channel order; nil where nothing was sent.
    func call(_ channels: [RPCChannel], _ method: String, _ requests: [RPCPayload?],
              timeout: Duration) -> [Answer?] {
        let start = ContinuousClock.now
        let answers = Answers(count: channels.count)
        for (i, request) in requests.enumerated() {
            guard let request else { continue }
            answers.expect(i)
            channels[i].unary(method, request: request, timeout: timeout, on: queue) { result in
                answers.store(i, Answer(result: result, elapsed: ContinuousClock.now - start), by: nil)
            }
        }
        queue.run { answers.complete }
        return answers.all
    }

    /// Sends `requests[i]` on `streams[i]` (opened on `queue`) and returns each answer in
    /// stream order; nil where nothing was sent. A stream that has not answered within
    /// `timeout` is cancelled and its answer is `.deadlineExceeded`.
    ///
    /// With `hedgeAfter`, a stream that has not answered by then has its request sent once
    /// more, as a unary `hedgeMethod` call on the channel `hedge(i)` gives (nil: no hedge for
    /// it). The first success fills the slot (`hedgedBy[i]` names the hedge's channel index
    /// when it won, and the slow stream is cancelled); a failure fills it only when the other
    /// call failed too.
    func exchange(_ streams: [RPCExchange?], _ requests: [RPCPayload?], timeout: Duration,
                  hedgeAfter: Duration? = nil, hedgeMethod: String = "",
                  hedge: (Int) -> (index: Int, channel: RPCChannel)? = { _ in nil }) -> (answers: [Answer?], hedgedBy: [Int?]) {
        let start = ContinuousClock.now
        let answers = Answers(count: streams.count)
        for (i, request) in requests.enumerated() {
            guard let request, let stream = streams[i] else { continue }
            answers.expect(i)
            stream.exchange(request) { result in
                answers.store(i, Answer(result: result, elapsed: ContinuousClock.now - start), by: nil)
            }
        }
        if let hedgeAfter, hedgeAfter < timeout, !queue.run(until: { answers.complete }, deadline: start + hedgeAfter) {
            for (i, request) in requests.enumerated() where request != nil && streams[i] != nil && !answers.filled(i) {
                guard let target = hedge(i) else { continue }
                answers.expect(i)
                target.channel.unary(hedgeMethod, request: request!, timeout: timeout - hedgeAfter, on: queue) { result in
                    answers.store(i, Answer(result: result, elapsed: ContinuousClock.now - start), by: target.index)
                }
            }
        }
        if !queue.run(until: { answers.complete }, deadline: start + timeout) {
            let late = RPCStatus(code: .deadlineExceeded, message: "no answer within \(timeout)")
            for (i, stream) in streams.enumerated() where requests[i] != nil && !answers.filled(i) {
                stream?.cancel(late)
            }
            queue.run { answers.complete }
        }
        // A stream whose hedge answered still has its exchange in flight: cancel it, so that
        // its late answer can never be read as the next request's.
        for (i, stream) in streams.enumerated() where answers.hedgedBy[i] != nil {
            stream?.cancel(RPCStatus(code: .cancelled, message: "a replica answered first"))
        }
        return (answers.all, answers.hedgedBy)
    }

    /// The answers of one `call` or `exchange`, filled in by completions that run on the
    /// calling thread (inside `queue.run`) or, for a call the channel refused, inside `unary`
    /// itself. A slot may have two calls (a stream and its hedge): the first success fills
    /// it, or the last failure. Completions of calls nobody waits for any more land in a
    /// filled slot and change nothing.
    private final class Answers: @unchecked Sendable {
        private(set) var all: [Answer?]
        private(set) var hedgedBy: [Int?]
        private var inFlight: [Int]
        private var remaining = 0
        var complete: Bool { remaining == 0 }

        init(count: Int) {
            all = Array(repeating: nil, count: count)
            hedgedBy = Array(repeating: nil, count: count)
            inFlight = Array(repeating: 0, count: count)
        }

        func filled(_ i: Int) -> Bool { all[i] != nil }

        func expect(_ i: Int) {
            if inFlight[i] == 0 && all[i] == nil { remaining += 1 }
            inFlight[i] += 1
        }

        func store(_ i: Int, _ answer: Answer, by hedge: Int?) {
            inFlight[i] -= 1
            guard all[i] == nil else { return }
            let succeeded = if case .success = answer.result { true } else { false }
            guard succeeded || inFlight[i] == 0 else { return }
            all[i] = answer
            hedgedBy[i] = hedge
            remaining -= 1
        }
    }
}
