import ShoalModel

/// Where each (layer, expert) should live, given workers that offer memory and speed: a pure
/// function of its input, so it can be planned, printed and tested without a cluster.
///
/// The rules, in order:
/// 1. Every pair gets one holder if any worker has room for it. A pair's current holder keeps
///    it when it still has room; others go, biggest first, to the worker whose load per unit of
///    speed is lowest, so that faster workers carry more; on a tie, the worker already holding
///    that expert in other layers (a token's two experts then reach fewer workers). Then pairs
///    move from the most to the least loaded worker (per unit of speed) while a move narrows
///    the gap: a worker that joins takes its share, and no more than that moves.
/// 2. Spare memory becomes replicas on distinct workers: round after round, the hottest pairs
///    (measured tokens, when given) get one more holder each, up to `replicas` extra holders.
///    A worker that holds the pair now keeps it while it stays within its share of everything
///    to be held (in proportion to speed) and no other worker is lighter by more than the pair;
///    otherwise the pair goes to the least loaded worker, so replicas spread as primaries do.
/// 3. A pair no worker can hold is listed, with the memory missing for all of them.
public struct PlacementPlanner: Sendable {
    /// One worker as the planner sees it.
    public struct Worker: Sendable, Equatable {
        public var name: String
        /// Bytes of expert weights it may hold.
        public var memoryBytes: Int
        /// Relative compute speed (1: the reference); traffic is shared in proportion.
        public var speed: Double

        public init(name: String, memoryBytes: Int, speed: Double = 1) {
            self.name = name
            self.memoryBytes = memoryBytes
            self.speed = speed
        }
    }

    /// The placement: holders per pair, what fit, what did not.
    public struct Plan: Sendable, Equatable {
        /// [layer][expert] → worker indices, primary holder first.
        public var holders: [[[Int]]]
        /// Bytes each worker holds.
        public var usedBytes: [Int]
        /// Pairs without a holder.
        public var unplaced: [ExpertKey]
        /// Bytes of the unplaced pairs: the memory more workers would need to offer at least.
        public var missingBytes: Int
        /// Bytes workers must load that they did not hold before (all of them for a first plan).
        public var movedBytes: Int

        /// Pairs held more than once.
        public var replicatedPairs: Int { holders.joined().count { $0.count > 1 } }
    }

    /// [layer][expert] → bytes of that pair's weights.
    public let pairBytes: [[Int]]
    /// Most extra holders per pair (0: no replicas).
    public let replicas: Int

    public init(pairBytes: [[Int]], replicas: Int = 1) {
        self.pairBytes = pairBytes
        self.replicas = replicas
    }

    /// The plan for `workers`; `heat` ([layer][expert] → tokens seen) orders replicas, and
    /// `current` ([layer][expert] → worker indices holding it now) is kept where it can be.
    public func plan(_ workers: [Worker], heat: [[Double]]? = nil, current: [[[Int]]]? = nil) -> Plan {
        let layers = pairBytes.count, experts = pairBytes.first?.count ?? 0
        var holders = Array(repeating: Array(repeating: [Int](), count: experts), count: layers)
        var used = Array(repeating: 0, count: workers.count)
        let pairs = (0..<layers).flatMap { l in (0..<experts).map { ExpertKey(layer: l, expert: $0) } }
        func bytes(_ p: ExpertKey) -> Int { pairBytes[p.layer][p.expert] }
        func fits(_ w: Int, _ p: ExpertKey) -> Bool { used[w] + bytes(p) <= workers[w].memoryBytes }
        func assign(_ w: Int, _ p: ExpertKey) {
            holders[p.layer][p.expert].append(w)
            used[w] += bytes(p)
        }
        /// The worker with the lowest load per unit of speed that can take `p` and does not
        /// hold it yet; ties to one holding the same expert elsewhere, then the lowest index.
        func best(for p: ExpertKey) -> Int? {
            var choice: (w: Int, load: Double, sameExpert: Bool)?
            for w in workers.indices where fits(w, p) && !holders[p.layer][p.expert].contains(w) {
                let load = Double(used[w]) / max(workers[w].speed, 1e-9)
                let sameExpert = (0..<layers).contains { holders[$0][p.expert].contains(w) }
                if let c = choice {
                    if load < c.load || (load == c.load && sameExpert && !c.sameExpert) { choice = (w, load, sameExpert) }
                } else {
                    choice = (w, load, sameExpert)
                }
            }
            return choice?.w
        }

        // 1. Current primary holders keep what they can; then the rest, biggest first.
        var homeless: [ExpertKey] = []
        for p in pairs {
            if let w = current?[p.layer][p.expert].first(where: { workers.indices.contains($0) }), fits(w, p) {
                assign(w, p)
            } else {
                homeless.append(p)
            }
        }
        homeless.sort { bytes($0) > bytes($1) || (bytes($0) == bytes($1) && ($0.expert, $0.layer) < ($1.expert, $1.layer)) }
        var unplaced: [ExpertKey] = []
        for p in homeless {
            if let w = best(for: p) { assign(w, p) } else { unplaced.append(p) }
        }

        // Balance: one pair at a time from the most to the least loaded worker, while that
        // narrows the gap (a worker that joined takes its share; nothing else moves).
        if workers.count > 1 {
            while true {
                let load = workers.indices.map { Double(used[$0]) / max(workers[$0].speed, 1e-9) }
                let hi = load.indices.max { load[$0] < load[$1] }!, lo = load.indices.min { load[$0] < load[$1] }!
                let candidates = pairs.filter { holders[$0.layer][$0.expert] == [hi] && fits(lo, $0) }
                guard let p = candidates.first(where: { p in
                    Double(used[hi] - bytes(p)) / max(workers[hi].speed, 1e-9)
                        >= Double(used[lo] + bytes(p)) / max(workers[lo].speed, 1e-9)
                }) else { break }
                holders[p.layer][p.expert] = [lo]
                used[hi] -= bytes(p)
                used[lo] += bytes(p)
            }
        }

        // 2. Replicas, hottest first, one more holder per pair per round; a current holder is
        // preferred while within its share.
        let placedBytes = pairs.reduce(0) { $0 + (holders[$1.layer][$1.expert].isEmpty ? 0 : bytes($1)) }
        let toHold = Double(min(workers.reduce(0) { $0 + $1.memoryBytes }, placedBytes * (1 + max(0, replicas))))
        let totalSpeed = workers.reduce(0.0) { $0 + max($1.speed, 1e-9) }
        func share(_ w: Int) -> Double { toHold * max(workers[w].speed, 1e-9) / totalSpeed }
        func load(_ w: Int) -> Double { Double(used[w]) / max(workers[w].speed, 1e-9) }
        let byHeat = pairs.filter { !holders[$0.layer][$0.expert].isEmpty }.enumerated()
            .sorted { a, b in
                let ha = heat?[a.element.layer][a.element.expert] ?? 0, hb = heat?[b.element.layer][b.element.expert] ?? 0
                return ha > hb || (ha == hb && a.offset < b.offset)
            }.map(\.element)
        for _ in 0..<max(0, replicas) {
            var added = false
            for p in byHeat {
                let kept = current?[p.layer][p.expert].first { w in
                    workers.indices.contains(w) && !holders[p.layer][p.expert].contains(w) && fits(w, p)
                        && Double(used[w] + bytes(p)) <= share(w)
                }
                if let w = kept ?? best(for: p) {
                    assign(w, p)
                    added = true
                }
            }
            if !added { break }
        }

        // Replicas balanced like primaries: one replica at a time from the most to the least
        // loaded worker while that narrows the gap (the greedy rounds above can leave a worker
        // that already holds most pairs short, and another over its share); one the lighter
        // worker holds now is moved first.
        if workers.count > 1 && replicas > 0 {
            while true {
                let hi = workers.indices.max { load($0) < load($1) }!, lo = workers.indices.min { load($0) < load($1) }!
                let movable = pairs.filter { p in
                    let h = holders[p.layer][p.expert]
                    return h.dropFirst().contains(hi) && !h.contains(lo) && fits(lo, p)
                        && Double(used[hi] - bytes(p)) / max(workers[hi].speed, 1e-9)
                            >= Double(used[lo] + bytes(p)) / max(workers[lo].speed, 1e-9)
                }
                guard let p = movable.first(where: { current?[$0.layer][$0.expert].contains(lo) ?? false }) ?? movable.first
                else { break }
                holders[p.layer][p.expert] = holders[p.layer][p.expert].map { $0 == hi ? lo : $0 }
                used[hi] -= bytes(p)
                used[lo] += bytes(p)
            }
        }

        var moved = 0
        for p in pairs {
            for w in holders[p.layer][p.expert] where !(current?[p.layer][p.expert].contains(w) ?? false) { moved += bytes(p) }
        }
        unplaced.sort { ($0.layer, $0.expert) < ($1.layer, $1.expert) }
        return Plan(holders: holders, usedBytes: used, unplaced: unplaced,
                    missingBytes: unplaced.reduce(0) { $0 + bytes($1) }, movedBytes: moved)
    }
}

extension PlacementPlanner {
    /// A model's pair sizes: each (layer, expert)'s three matrices as stored (quantized ones at
    /// their block sizes).
    public static func pairBytes(of checkpoint: Checkpoint) throws -> [[Int]] {
        let c = checkpoint.config
        return try (0..<c.layers).map { l in
            try (0..<c.experts).map { e in try checkpoint.expertBytes(layer: l, expert: e) }
        }
    }
}
