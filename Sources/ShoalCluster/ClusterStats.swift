import Foundation

/// What the fan-out cost, call by call, since the last `reset()`.
///
/// Read and written by the thread running the forward pass only.
public final class ClusterStats {
    /// One layer's fan-out.
    public struct Call: Sendable {
        public var layer: Int
        /// Tokens in the batch (1 in decode).
        public var tokens: Int
        /// From the first request sent to the last answer in.
        public var elapsed: Duration
        /// Serialized request and answer bytes.
        public var sent: Int
        public var received: Int
        /// The slowest worker's own compute time in this call (as it reported).
        public var workerCompute: Duration
    }

    public private(set) var calls: [Call] = []
    /// When false nothing is kept: a long-running server reports through metrics instead.
    public var isRecording = true
    /// Called with every call as it is recorded (kept or not).
    public var observer: ((Call) -> Void)?

    public init() {}

    func record(_ call: Call) {
        observer?(call)
        if isRecording { calls.append(call) }
    }

    public func reset() { calls.removeAll(keepingCapacity: true) }

    /// Totals over the calls `which` selects (all by default).
    public func summary(where which: (Call) -> Bool = { _ in true }) -> Summary {
        Summary(calls.filter(which))
    }

    /// Latency percentiles and bytes per token of a set of calls.
    public struct Summary: Sendable {
        public let callCount: Int
        /// Tokens that went through the MoE layers (counted at layer 0).
        public let tokens: Int
        public let bytesSent: Int
        public let bytesReceived: Int
        private let sorted: [Duration]
        private let computeSorted: [Duration]

        init(_ calls: [Call]) {
            callCount = calls.count
            tokens = calls.reduce(0) { $0 + ($1.layer == 0 ? $1.tokens : 0) }
            bytesSent = calls.reduce(0) { $0 + $1.sent }
            bytesReceived = calls.reduce(0) { $0 + $1.received }
            sorted = calls.map(\.elapsed).sorted()
            computeSorted = calls.map(\.workerCompute).sorted()
        }

        /// The mean per-layer fan-out time (the tail counts here, not in the median).
        public var meanFanOut: Duration {
            sorted.isEmpty ? .zero : sorted.reduce(.zero, +) / sorted.count
        }

        /// The median of the slowest worker's compute time per call.
        public var medianWorkerCompute: Duration {
            computeSorted.isEmpty ? .zero : computeSorted[(computeSorted.count - 1) / 2]
        }

        /// The `p`-th percentile (0...100) of per-layer fan-out time, nearest rank; zero when
        /// there were no calls.
        public func fanOut(percentile p: Double) -> Duration {
            guard !sorted.isEmpty else { return .zero }
            let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
            return sorted[min(max(rank, 0), sorted.count - 1)]
        }

        public var sentPerToken: Double { Double(bytesSent) / Double(max(tokens, 1)) }
        public var receivedPerToken: Double { Double(bytesReceived) / Double(max(tokens, 1)) }

        /// `fan-out per layer: median 180 µs, mean 195 µs, p99 420 µs (worker compute median 12 µs)
        /// over 94 calls; per token: 64.5 KB sent, 64.6 KB received`.
        public var line: String {
            func micros(_ d: Duration) -> String { "\(Int((d / .microseconds(1)).rounded())) µs" }
            func kb(_ x: Double) -> String { String(format: "%.1f KB", x / 1000) }
            return "fan-out per layer: median \(micros(fanOut(percentile: 50))), mean \(micros(meanFanOut)), p99 \(micros(fanOut(percentile: 99)))"
                + " (worker compute median \(micros(medianWorkerCompute)))"
                + " over \(callCount) calls; per token: \(kb(sentPerToken)) sent, \(kb(receivedPerToken)) received"
        }
    }
}
