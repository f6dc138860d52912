/// What the fan-out cost: per-layer latency and bytes on the wire, since the last `reset()`.
///
/// Read and written by the thread running the forward pass only.
public final class ClusterStats {
    /// Wall time of each layer's fan-out, from the first request sent to the last answer in.
    public private(set) var fanOut: [Duration] = []
    /// Request bytes sent and answer bytes received (serialized messages).
    public private(set) var bytesSent = 0
    public private(set) var bytesReceived = 0
    /// Tokens that went through the MoE layers (counted once, at layer 0).
    public private(set) var tokens = 0

    public init() {}

    func record(layer: Int, tokens n: Int, elapsed: Duration, sent: Int, received: Int) {
        fanOut.append(elapsed)
        bytesSent += sent
        bytesReceived += received
        if layer == 0 { tokens += n }
    }

    public func reset() {
        fanOut.removeAll(keepingCapacity: true)
        bytesSent = 0
        bytesReceived = 0
        tokens = 0
    }

    /// The `p`-th percentile (0...100) of the per-layer fan-out times, nearest rank; zero
    /// when nothing was recorded.
    public func fanOutPercentile(_ p: Double) -> Duration {
        guard !fanOut.isEmpty else { return .zero }
        let sorted = fanOut.sorted()
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }
}
