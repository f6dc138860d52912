import Foundation
import ShoalProtocol
import ShoalRPC
import Synchronization

/// Says hello to workers from a thread of its own, so that the forward pass never waits on a
/// worker that might not answer: every `interval` to each worker marked down (a restarted one
/// is found within about a second, also while the batch runs), and to every worker when asked
/// (`checkAll`, an idle coordinator's liveness check: a hung one is found within the hello
/// deadline). The answers wait in a mailbox that the forward pass's thread empties
/// (`RemoteExperts.applyProbes`), which alone changes the placement.
final class Prober: @unchecked Sendable {
    struct Result {
        let worker: Int
        let answer: Swift.Result<RPCPayload, Error>
        /// Whether the worker was thought live when probed (a failure then marks it down).
        let wasLive: Bool
        /// When the hello was sent.
        let sent: ContinuousClock.Instant
    }

    private struct State {
        var down: Set<Int> = []
        /// Workers routed nothing (drained or gone): not probed.
        var retired: Set<Int> = []
        var checkAll = false
        var mailbox: [Result] = []
        var stopping = false
        var channels: [RPCChannel]
    }

    private let request: RPCPayload
    private let deadline: Duration
    private let interval: Duration
    private let state: Mutex<State>
    private let wake = NSCondition()
    private let stopped = DispatchSemaphore(value: 0)

    init(channels: [RPCChannel], hello request: RPCPayload, deadline: Duration, interval: Duration = .milliseconds(500)) {
        state = Mutex(State(channels: channels))
        self.request = request
        self.deadline = deadline
        self.interval = interval
        let thread = Thread { [self] in run() }
        thread.name = "shoal-prober"
        thread.start()
    }

    /// A worker that joined: probed under the next index.
    func add(_ channel: RPCChannel) { state.withLock { $0.channels.append(channel) } }

    /// The workers now marked down, probed until they answer, and those routed nothing, not
    /// probed at all.
    func setDown(_ down: Set<Int>, retired: Set<Int> = []) {
        state.withLock {
            $0.down = down.subtracting(retired)
            $0.retired = retired
        }
    }

    /// Probe every worker at the next round.
    func checkAll() {
        state.withLock { $0.checkAll = true }
        wake.lock(); wake.signal(); wake.unlock()
    }

    /// The answers gathered since the last call.
    func takeResults() -> [Result] {
        state.withLock { state in
            defer { state.mailbox.removeAll() }
            return state.mailbox
        }
    }

    /// Ends the thread; returns once it has.
    func stop() {
        state.withLock { $0.stopping = true }
        wake.lock(); wake.signal(); wake.unlock()
        stopped.wait()
    }

    private func run() {
        let fanout = Fanout()
        while true {
            let (targets, down, stopping, channels) = state.withLock { state -> (Set<Int>, Set<Int>, Bool, [RPCChannel]) in
                let all = state.checkAll
                state.checkAll = false
                let everyone = Set(state.channels.indices).subtracting(state.retired)
                return (all ? everyone : state.down.filter { $0 < state.channels.count }, state.down, state.stopping, state.channels)
            }
            if stopping { break }
            if !targets.isEmpty {
                var requests: [RPCPayload?] = Array(repeating: nil, count: channels.count)
                for w in targets { requests[w] = request }
                let sent = ContinuousClock.now
                let answers = fanout.call(channels, ExpertServiceMethod.hello, requests, timeout: deadline)
                let results = targets.map {
                    Result(worker: $0, answer: answers[$0]!.result, wasLive: !down.contains($0), sent: sent)
                }
                state.withLock { $0.mailbox += results }
            }
            wake.lock()
            if state.withLock({ !$0.checkAll && !$0.stopping }) {
                _ = wake.wait(until: Date(timeIntervalSinceNow: Double(interval / .milliseconds(1)) / 1000))
            }
            wake.unlock()
        }
        stopped.signal()
    }
}
