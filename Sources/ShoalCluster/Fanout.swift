import Foundation
import ShoalRPC

/// Calls several channels at once and waits for all the answers, on a thread that is not
/// async (the forward pass). Answers arrive on the channels' completion-queue threads and are
/// only stored there; everything else happens on the waiting thread.
final class Fanout: @unchecked Sendable {
    private let condition = NSCondition()
    private var remaining = 0
    private var results: [Answer?] = []

    /// One channel's answer and how long after the call began it arrived.
    struct Answer {
        var result: Result<RPCPayload, Error>
        var elapsed: Duration
    }

    /// Sends `requests[i]` (nil: nothing for that channel) to `channels[i]` and returns each
    /// answer in channel order; nil where nothing was sent.
    func call(_ channels: [RPCChannel], _ method: String, _ requests: [RPCPayload?],
              timeout: Duration) -> [Answer?] {
        let start = ContinuousClock.now
        condition.lock()
        results = Array(repeating: nil, count: channels.count)
        remaining = requests.reduce(0) { $0 + ($1 == nil ? 0 : 1) }
        condition.unlock()
        for (i, request) in requests.enumerated() {
            guard let request else { continue }
            channels[i].unary(method, request: request, timeout: timeout) { [self] result in
                condition.lock()
                results[i] = Answer(result: result, elapsed: ContinuousClock.now - start)
                remaining -= 1
                if remaining == 0 { condition.signal() }
                condition.unlock()
            }
        }
        condition.lock()
        while remaining > 0 { condition.wait() }
        defer { results = []; condition.unlock() }
        return results
    }
}
