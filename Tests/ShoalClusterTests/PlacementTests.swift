import ShoalCluster
import ShoalModel
import ShoalTensor
import Testing

/// The placement planner's rules (its type comment), checked on described clusters from 1 to
/// 256 workers and on real Mixtral-8x7B sizes.
@Suite struct PlacementTests {
    /// Mixtral-8x7B: 32 layers × 8 experts; a pair is three 4096 × 14336 matrices.
    static let bf16Pair = 3 * 4096 * 14336 * 2
    /// Q4_K_M: gate and up in Q4_K (144 bytes per 256 weights); down in Q6_K (210) in the
    /// layers llama.cpp gives more bits, Q4_K elsewhere.
    static func q4KMPair(layer: Int) -> Int {
        let q4 = 4096 * 14336 / 256 * 144, q6 = 4096 * 14336 / 256 * 210
        let moreBits = layer < 4 || layer >= 28 || (layer - 4) % 3 == 2
        return 2 * q4 + (moreBits ? q6 : q4)
    }
    static let mixtralBF16 = Array(repeating: Array(repeating: bf16Pair, count: 8), count: 32)
    static let mixtralQ4KM = (0..<32).map { l in Array(repeating: q4KMPair(layer: l), count: 8) }
    static let gib = 1 << 30

    /// The invariants every plan keeps.
    static func check(_ plan: PlacementPlanner.Plan, _ workers: [PlacementPlanner.Worker], _ planner: PlacementPlanner,
                      _ label: String) {
        let sizes = planner.pairBytes
        var used = Array(repeating: 0, count: workers.count)
        for (l, layer) in plan.holders.enumerated() {
            for (e, holders) in layer.enumerated() {
                #expect(Set(holders).count == holders.count, "\(label): pair \(l)/\(e) held twice by one worker")
                #expect(holders.count <= 1 + planner.replicas, "\(label): pair \(l)/\(e) has \(holders.count) holders")
                for w in holders { used[w] += sizes[l][e] }
                // A pair short of replicas: no other worker had room for it.
                if !holders.isEmpty && holders.count < 1 + planner.replicas {
                    let room = workers.indices.filter { !holders.contains($0) && used[$0] >= 0 }
                        .filter { plan.usedBytes[$0] + sizes[l][e] <= workers[$0].memoryBytes }
                    #expect(room.isEmpty, "\(label): pair \(l)/\(e) lacks a replica that \(room) had room for")
                }
            }
        }
        #expect(used == plan.usedBytes, "\(label)")
        for (w, worker) in workers.enumerated() {
            #expect(plan.usedBytes[w] <= worker.memoryBytes, "\(label): \(worker.name) over its memory")
        }
        let unplaced = plan.holders.enumerated().flatMap { l, layer in
            layer.enumerated().filter { $0.element.isEmpty }.map { ExpertKey(layer: l, expert: $0.offset) }
        }
        #expect(unplaced == plan.unplaced, "\(label)")
        #expect(plan.missingBytes == unplaced.reduce(0) { $0 + sizes[$1.layer][$1.expert] }, "\(label)")
        // Unplaced only when no worker has room for the pair.
        for p in unplaced {
            #expect(workers.indices.allSatisfy { plan.usedBytes[$0] + sizes[p.layer][p.expert] > workers[$0].memoryBytes },
                    "\(label): \(p) unplaced with room left")
        }
    }

    @Test func randomClustersFromOneTo256Workers() {
        var rng = SplitMix64(seed: 16)
        for count in [1, 2, 3, 5, 8, 13, 32, 64, 100, 256] {
            let workers = (0..<count).map { i in
                PlacementPlanner.Worker(name: "w\(i)", memoryBytes: Int(rng.next() % UInt64(48 * Self.gib)),
                                        speed: 0.5 + Double(rng.next() % 100) / 40)
            }
            for (sizes, name) in [(Self.mixtralBF16, "bf16"), (Self.mixtralQ4KM, "q4_k_m")] {
                for replicas in [0, 1, 2] {
                    let planner = PlacementPlanner(pairBytes: sizes, replicas: replicas)
                    Self.check(planner.plan(workers), workers, planner, "\(count) workers, \(name), \(replicas) replicas")
                }
            }
        }
    }

    @Test func twoBigHostsHoldBF16MixtralAndReplicateWithTheirSpareMemory() {
        let workers = [PlacementPlanner.Worker(name: "a", memoryBytes: 48 * Self.gib),
                       PlacementPlanner.Worker(name: "b", memoryBytes: 48 * Self.gib)]
        let planner = PlacementPlanner(pairBytes: Self.mixtralBF16)
        let plan = planner.plan(workers)
        Self.check(plan, workers, planner, "two 48 GiB hosts")
        #expect(plan.unplaced.isEmpty)
        let primaries = workers.indices.map { w in plan.holders.joined().count { $0.first == w } }
        #expect(primaries == [128, 128])
        // 2 × 48 GiB - 94.6 GB of experts leaves room for 16 replicas of 352 MB.
        #expect(plan.replicatedPairs == 2 * ((48 * Self.gib - 128 * Self.bf16Pair) / Self.bf16Pair))
    }

    @Test func tooLittleMemorySaysWhatIsMissing() {
        let workers = [PlacementPlanner.Worker(name: "a", memoryBytes: 16 * Self.gib),
                       PlacementPlanner.Worker(name: "b", memoryBytes: 8 * Self.gib)]
        let planner = PlacementPlanner(pairBytes: Self.mixtralQ4KM)
        let plan = planner.plan(workers)
        Self.check(plan, workers, planner, "24 GiB for Q4_K_M")
        let total = Self.mixtralQ4KM.joined().reduce(0, +)
        #expect(!plan.unplaced.isEmpty && plan.missingBytes >= total - 24 * Self.gib, "\(plan.missingBytes)")
        #expect(plan.replicatedPairs == 0)
    }

    @Test func fasterWorkersCarryMore() {
        let workers = [PlacementPlanner.Worker(name: "slow", memoryBytes: 100 * Self.gib, speed: 1),
                       PlacementPlanner.Worker(name: "fast", memoryBytes: 100 * Self.gib, speed: 3)]
        let planner = PlacementPlanner(pairBytes: Self.mixtralBF16, replicas: 0)
        let plan = planner.plan(workers)
        let share = Double(plan.usedBytes[1]) / Double(plan.usedBytes.reduce(0, +))
        #expect(abs(share - 0.75) < 0.01, "\(share)")
    }

    /// A third worker joins a two-worker plan: it takes its third and nothing else moves.
    @Test func aJoiningWorkerTakesItsShareAndLittleElseMoves() {
        let two = (0..<2).map { PlacementPlanner.Worker(name: "w\($0)", memoryBytes: 64 * Self.gib) }
        let planner = PlacementPlanner(pairBytes: Self.mixtralBF16, replicas: 0)
        let before = planner.plan(two)
        let three = two + [PlacementPlanner.Worker(name: "w2", memoryBytes: 64 * Self.gib)]
        let after = planner.plan(three, current: before.holders)
        Self.check(after, three, planner, "after the join")
        let total = Self.mixtralBF16.joined().reduce(0, +)
        #expect(after.movedBytes <= total / 3 + Self.bf16Pair, "\(after.movedBytes) of \(total)")
        for w in 0..<3 { #expect(abs(after.usedBytes[w] - total / 3) <= Self.bf16Pair, "\(after.usedBytes)") }
        // Nothing moved between the two old workers.
        for (l, layer) in after.holders.enumerated() {
            for (e, holders) in layer.enumerated() where holders != [2] {
                #expect(holders == before.holders[l][e], "pair \(l)/\(e)")
            }
        }
        #expect(planner.plan(three, current: after.holders).movedBytes == 0)
    }

    /// One worker held everything; two join with room for it all: with one replica per pair each
    /// of the three ends up holding about two thirds of the experts (every pair twice), not the
    /// first worker all of them and the others the rest.
    @Test func replicasSpreadWhenWorkersJoin() {
        let roomy = { (name: String) in PlacementPlanner.Worker(name: name, memoryBytes: 200 * Self.gib) }
        let planner = PlacementPlanner(pairBytes: Self.mixtralBF16, replicas: 1)
        let one = planner.plan([roomy("w0")])
        let three = [roomy("w0"), roomy("w1"), roomy("w2")]
        let after = planner.plan(three, current: one.holders)
        Self.check(after, three, planner, "after two joined")
        let total = Self.mixtralBF16.joined().reduce(0, +)
        #expect(after.replicatedPairs == 256)
        for w in 0..<3 { #expect(abs(after.usedBytes[w] - 2 * total / 3) <= 2 * Self.bf16Pair, "\(after.usedBytes)") }
        // The first worker gave up only what the others needed.
        #expect(after.movedBytes <= 4 * total / 3 + 2 * Self.bf16Pair, "\(after.movedBytes)")
    }

    /// Workers join one, then one, then one, with measured heat ordering the replicas (as a
    /// serving coordinator plans): at each step every pair is held twice and no worker holds
    /// more than two pairs beyond another.
    @Test func replicasStayBalancedAsWorkersJoinOneByOne() {
        var rng = SplitMix64(seed: 7)
        let heat = (0..<32).map { _ in (0..<8).map { _ in Double(rng.next() % 1000) } }
        let planner = PlacementPlanner(pairBytes: Self.mixtralBF16, replicas: 1)
        var workers: [PlacementPlanner.Worker] = []
        var current: [[[Int]]]? = nil
        for n in 1...4 {
            workers.append(PlacementPlanner.Worker(name: "w\(n)", memoryBytes: 200 * Self.gib))
            let plan = planner.plan(workers, heat: heat, current: current)
            Self.check(plan, workers, planner, "\(n) workers")
            if n > 1 {
                #expect(plan.replicatedPairs == 256, "\(n) workers")
                let spread = plan.usedBytes.max()! - plan.usedBytes.min()!
                #expect(spread <= 2 * Self.bf16Pair, "\(n) workers hold \(plan.usedBytes.map { $0 / Self.bf16Pair }) pairs")
            }
            current = plan.holders
        }
    }

    @Test func hotExpertsGetTheReplicasFirst() {
        let workers = (0..<2).map { PlacementPlanner.Worker(name: "w\($0)", memoryBytes: 46 * Self.gib) }
        var heat = Array(repeating: Array(repeating: 1.0, count: 8), count: 32)
        heat[5][3] = 100
        heat[20][6] = 50
        let plan = PlacementPlanner(pairBytes: Self.mixtralBF16).plan(workers, heat: heat)
        #expect(plan.replicatedPairs >= 2 && plan.replicatedPairs < 32)
        #expect(plan.holders[5][3].count == 2 && plan.holders[20][6].count == 2)
    }
}
