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
            answers.expect()
            channels[i].unary(method, request: request, timeout: timeout, on: queue) { result in
                answers.store(i, Answer(result: result, elapsed: ContinuousClock.now - start))
            }
        }
        queue.run { answers.complete }
        return answers.all
    }

    /// Sends `requests[i]` on `streams[i]` (opened on `queue`) and returns each answer in
    /// stream order; nil where nothing was sent. A stream that has not answered within
    /// `timeout` is cancelled and its answer is `.deadlineExceeded`.
    func exchange(_ streams: [RPCExchange?], _ requests: [RPCPayload?], timeout: Duration) -> [Answer?] {
        let start = ContinuousClock.now
        let answers = Answers(count: streams.count)
        for (i, request) in requests.enumerated() {
            guard let request, let stream = streams[i] else { continue }
            answers.expect()
            stream.exchange(request) { result in
                answers.store(i, Answer(result: result, elapsed: ContinuousClock.now - start))
            }
        }
        if !queue.run(until: { answers.complete }, deadline: start + timeout) {
            let late = RPCStatus(code: .deadlineExceeded, message: "no answer within \(timeout)")
            for (i, stream) in streams.enumerated() where requests[i] != nil && answers.all[i] == nil {
                stream?.cancel(late)
            }
            queue.run { answers.complete }
        }
        return answers.all
    }

    /// The answers of one `call`, filled in by completions that run on the calling thread
    /// (inside `queue.run`) or, for a call the channel refused, inside `unary` itself.
    private final class Answers: @unchecked Sendable {
        private(set) var all: [Answer?]
        private var remaining = 0
        var complete: Bool { remaining == 0 }

        init(count: Int) { all = Array(repeating: nil, count: count) }
        func expect() { remaining += 1 }
        func store(_ i: Int, _ answer: Answer) {
            all[i] = answer
            remaining -= 1
        }
    }
}
