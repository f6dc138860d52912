import Foundation
import ShoalModel

/// The cluster as an operator sees it: `shoal cluster status`, `GET /v1/cluster`. Encoded as
/// JSON with snake_case keys (`json()`); docs/cluster.md describes each field.
public struct ClusterStatus: Codable, Sendable, Equatable {
    /// One worker.
    public struct Worker: Codable, Sendable, Equatable {
        public var address: String
        public var name: String
        /// serving, down, joining, draining, released or gone.
        public var state: String
        /// Bytes of expert weights it offered (joined workers only).
        public var memoryOfferedBytes: Int?
        /// Bytes of expert weights it holds.
        public var memoryUsedBytes: Int
        /// [layer] → the experts calls are routed to it for.
        public var experts: [[Int]]
        public var calls: Int
        public var failedCalls: Int
        /// Mean time of its Compute calls, in milliseconds (nil before the first).
        public var meanCallMilliseconds: Double?
        public var lastError: String?
    }

    /// auto (workers join and are given experts) or fixed (--workers with --experts).
    public var placement: String
    /// Every (layer, expert) has a live holder: the coordinator can serve.
    public var complete: Bool
    public var workers: [Worker]
    /// [layer][expert] → the addresses of its holders.
    public var holders: [[[String]]]
    /// [layer, expert] pairs no worker could be given, and the memory they need.
    public var unplaced: [[Int]]
    public var missingBytes: Int

    /// The status of `workers` (`RemoteExperts.view`).
    public init(placement: String, workers snapshot: [RemoteExperts.Worker], complete: Bool, layers: Int, experts: Int) {
        self.placement = placement
        self.complete = complete
        workers = snapshot.map { w in
            var perLayer = Array(repeating: [Int](), count: layers)
            for p in w.serving where p.layer < layers { perLayer[p.layer].append(p.expert) }
            return Worker(
                address: w.address, name: w.name, state: w.alive ? "serving" : "down", memoryOfferedBytes: nil,
                memoryUsedBytes: Int(w.weightBytes), experts: perLayer.map { $0.sorted() }, calls: w.calls,
                failedCalls: w.failures, meanCallMilliseconds: w.calls > 0 ? w.callSeconds / Double(w.calls) * 1000 : nil,
                lastError: w.lastError.map { "\($0)" })
        }
        var holders = Array(repeating: Array(repeating: [String](), count: experts), count: layers)
        for w in snapshot where w.alive {
            for p in w.serving where p.layer < layers && p.expert < experts { holders[p.layer][p.expert].append(w.address) }
        }
        self.holders = holders
        unplaced = []
        missingBytes = 0
    }

    public func json() -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)) ?? Data("{}".utf8)
    }

    public static func decode(_ data: Data) throws -> ClusterStatus {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(ClusterStatus.self, from: data)
    }
}
