import Foundation
import Logging
import ShoalModel
import ShoalProtocol
import ShoalRPC
import SwiftProtobuf
import Synchronization

/// Elastic placement on the coordinator (`--placement auto`): the handlers of
/// `shoal.v1.ClusterService` (Protos/shoal/v1/cluster.proto) and the loop that gives joined
/// workers their experts.
///
/// Workers join (saying where they listen, the memory they offer, their read bandwidth) and
/// send heartbeats. Every change — a join, a drain, a worker gone quiet for `timeout` — runs
/// one re-placement on a serial queue, in three phases so that no call ever reaches a worker
/// that does not hold its expert:
/// 1. load: every worker given pairs it lacks gets them with Assign (keeping those it is about
///    to lose, `leaving`) and answers once they are mapped;
/// 2. switch: the new routes are staged on `RemoteExperts`, which takes them between two
///    forward passes and says so;
/// 3. release: workers are told their final sets, dropping what no longer routes to them; a
///    drained worker ends with none and is released (its next heartbeat tells it to exit).
/// The plan itself is `PlacementPlanner`'s, started from what each worker holds, so a change
/// moves few bytes.
public final class PlacementController: @unchecked Sendable {
    public struct Options: Sendable {
        /// Extra holders per pair where memory allows.
        public var replicas = 1
        /// How often joined workers send a heartbeat.
        public var heartbeat: Duration = .seconds(1)
        /// Without a heartbeat this long, a worker counts as gone and its pairs are re-placed.
        public var timeout: Duration = .seconds(4)
        /// How long a worker that joins holding pairs already (after this coordinator
        /// restarted) waits to be placed, so that the others re-join first and nothing moves.
        public var settle: Duration = .seconds(3)
        /// Deadline of one Assign (a worker maps, or quantizes, what it was given).
        public var assignTimeout: Duration = .seconds(600)
        /// How the coordinator dials workers (the cluster's mutual TLS).
        public var security: RPCSecurity = .insecure
        /// Most workers that may be known at once.
        public var maxWorkers = 256
        public init() {}
    }

    enum State: String { case joining, serving, draining, released, gone }

    struct Member {
        let address: String
        var name: String
        var memoryBytes: Int
        var speed: Double
        var state: State
        var lastHeartbeat: ContinuousClock.Instant
        /// What it holds: its last Assign answer, or what it said when it joined.
        var held: [ExpertKey]
        /// What calls are routed to it.
        var routed: [ExpertKey] = []
        let channel: RPCChannel
    }

    private struct Summary {
        var unplaced: [ExpertKey] = []
        var missingBytes = 0
    }

    private let remote: RemoteExperts
    private let checkpoint: Checkpoint
    private let planner: PlacementPlanner
    private let options: Options
    private let log: Logger
    private let expectation: HandshakeExpectation
    private let members = Mutex<[Member]>([])
    private let summary = Mutex(Summary())
    /// Re-placements and the heartbeat check, one at a time.
    private let queue = DispatchQueue(label: "shoal-placement")
    private let replanPending = Atomic<Bool>(false)
    /// Tokens routed to each expert so far ([layer][expert]), for replicas hottest first.
    private let heat = Mutex<(@Sendable () -> [[Double]])?>(nil)
    private let fanout = Fanout()
    private var timer: DispatchSourceTimer?

    /// Places experts on the workers that join, calling through `remote` (which the
    /// coordinator's engine computes with; made with no workers).
    public init(remote: RemoteExperts, checkpoint: Checkpoint, options: Options = Options(),
                log: Logger = Logger(label: "shoal.placement")) throws {
        self.remote = remote
        self.checkpoint = checkpoint
        self.options = options
        self.log = log
        planner = PlacementPlanner(pairBytes: try PlacementPlanner.pairBytes(of: checkpoint), replicas: options.replicas)
        let c = checkpoint.config
        expectation = HandshakeExpectation(
            fingerprint: try ModelFingerprint.of(checkpoint, pairs: []),
            shape: ModelShape(dim: c.dim, hiddenDim: c.hiddenDim, layers: c.layers, experts: c.experts))
        summary.withLock { $0 = Summary(unplaced: Self.allPairs(c.layers, c.experts), missingBytes: 0) }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .milliseconds(500), repeating: .milliseconds(500))
        timer.setEventHandler { [weak self] in self?.checkHeartbeats() }
        timer.resume()
        self.timer = timer
    }

    deinit {
        timer?.cancel()
        for m in members.withLock({ $0 }) { m.channel.close() }
    }

    private static func allPairs(_ layers: Int, _ experts: Int) -> [ExpertKey] {
        (0..<layers).flatMap { l in (0..<experts).map { ExpertKey(layer: l, expert: $0) } }
    }

    /// The handlers of `shoal.v1.ClusterService`, for an `RPCServer`.
    public var handlers: [String: RPCServer.UnaryHandler] {
        [
            ClusterServiceMethod.join: { [self] request, _ in try join(request) },
            ClusterServiceMethod.heartbeat: { [self] request, _ in try heartbeat(request) },
            ClusterServiceMethod.drain: { [self] request, _ in try await drain(request) },
            ClusterServiceMethod.status: { [self] request, _ in
                _ = try decode(Shoal_V1_StatusRequest.self, request)
                var response = Shoal_V1_StatusResponse()
                response.json = String(decoding: status().json(), as: UTF8.self)
                return try RPCPayload(message: response)
            },
        ]
    }

    /// Where the measured tokens per expert come from (the server's metrics): replicas go to
    /// the hottest pairs first when memory is short.
    public func setHeat(_ source: @escaping @Sendable () -> [[Double]]) { heat.withLock { $0 = source } }

    // MARK: - Handlers

    func join(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_JoinRequest.self, payload)
        var hello = Shoal_V1_HelloRequest()
        hello.protocolVersion = request.protocolVersion
        hello.modelFingerprint = request.modelFingerprint
        do {
            try validate(hello, expecting: expectation)
        } catch {
            log.warning("refused a worker's join", metadata: ["reason": "\(error)"])
            throw RPCStatus(code: .failedPrecondition, message: error.description)
        }
        let address = request.address
        guard let endpoint = Endpoint(address), endpoint.isDialable else {
            throw RPCStatus(code: .invalidArgument, message: "JoinRequest.address: expected HOST:PORT, got \(Incompatibility.printable(address))")
        }
        guard request.memoryBytes <= 1 << 50 else {
            throw RPCStatus(code: .invalidArgument, message: "JoinRequest.memory_bytes: \(request.memoryBytes) is not a memory size")
        }
        let speed = request.readBytesPerSecond
        guard speed.isFinite, speed >= 0, speed <= 1e14 else {
            throw RPCStatus(code: .invalidArgument, message: "JoinRequest.read_bytes_per_second: \(speed) is not a bandwidth")
        }
        let held: [ExpertKey]
        do {
            held = try validatePairs(layers: request.layers, experts: request.experts, shape: expectation.shape)
                .map { ExpertKey(layer: $0.layer, expert: $0.expert) }.sorted()
        } catch {
            throw RPCStatus(code: .invalidArgument, message: "JoinRequest.\(error)")
        }
        let name = Incompatibility.printable(request.workerName)
        try members.withLock { members in
            if let i = members.firstIndex(where: { $0.address == address }) {
                members[i].name = name
                members[i].memoryBytes = Int(request.memoryBytes)
                members[i].speed = speed
                members[i].held = held
                members[i].lastHeartbeat = .now
                if members[i].state != .serving { members[i].state = .joining }
            } else {
                guard members.count(where: { $0.state != .released && $0.state != .gone }) < options.maxWorkers else {
                    throw RPCStatus(code: .resourceExhausted, message: "this coordinator has \(options.maxWorkers) workers already")
                }
                members.removeAll { $0.address == address }
                members.append(Member(
                    address: address, name: name, memoryBytes: Int(request.memoryBytes), speed: speed, state: .joining,
                    lastHeartbeat: .now, held: held,
                    channel: RPCChannel(target: address, security: options.security, maxReceiveBytes: 64 << 20)))
            }
        }
        log.info("worker joined", metadata: [
            "worker": "\(address)", "name": "\(name)", "memory_bytes": "\(request.memoryBytes)",
            "read_gb_per_s": "\(String(format: "%.1f", speed / 1e9))", "holds": "\(held.count)",
        ])
        scheduleReplan(after: held.isEmpty ? .zero : options.settle)
        var response = Shoal_V1_JoinResponse()
        response.heartbeatMillis = UInt32(options.heartbeat / .milliseconds(1))
        response.timeoutMillis = UInt32(options.timeout / .milliseconds(1))
        return try RPCPayload(message: response)
    }

    func heartbeat(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_HeartbeatRequest.self, payload)
        var response = Shoal_V1_HeartbeatResponse()
        response.state = members.withLock { members in
            guard let i = members.firstIndex(where: { $0.address == request.address }) else { return .unknown }
            switch members[i].state {
            case .gone: return .unknown
            case .released: return .released
            case .joining, .serving, .draining:
                members[i].lastHeartbeat = .now
                return .joined
            }
        }
        return try RPCPayload(message: response)
    }

    func drain(_ payload: RPCPayload) async throws -> RPCPayload {
        let request = try decode(Shoal_V1_DrainRequest.self, payload)
        let address = try members.withLock { members -> String in
            let matches = members.indices.filter {
                members[$0].state != .gone && (members[$0].address == request.worker || members[$0].name == request.worker)
            }
            guard matches.count == 1 else {
                throw RPCStatus(code: matches.isEmpty ? .notFound : .invalidArgument,
                                message: matches.isEmpty ? "no joined worker has the address or name \(Incompatibility.printable(request.worker))"
                                    : "\(matches.count) workers are named \(Incompatibility.printable(request.worker)): give the address")
            }
            if members[matches[0]].state != .released { members[matches[0]].state = .draining }
            return members[matches[0]].address
        }
        log.info("draining a worker", metadata: ["worker": "\(address)"])
        let moved: Int = try await withCheckedThrowingContinuation { continuation in
            queue.async { [self] in
                if let stranded = strandedWithout(address), !stranded.isEmpty {
                    members.withLock { members in
                        if let i = members.firstIndex(where: { $0.address == address }), members[i].state == .draining {
                            members[i].state = .serving
                        }
                    }
                    let shown = stranded.prefix(8).map { "\($0.layer)/\($0.expert)" }.joined(separator: ", ")
                    continuation.resume(throwing: RPCStatus(
                        code: .failedPrecondition,
                        message: "cannot drain \(address): the other workers have no room for \(stranded.count) of its pairs "
                            + "(\(shown)\(stranded.count > 8 ? ", …" : "")); it keeps serving"))
                    return
                }
                let outcome = replan()
                let state = members.withLock { $0.first { $0.address == address }?.state }
                if state == .released {
                    continuation.resume(returning: outcome.moved)
                } else {
                    // Its pairs had nowhere to go: it keeps serving.
                    members.withLock { members in
                        if let i = members.firstIndex(where: { $0.address == address }), members[i].state == .draining {
                            members[i].state = .serving
                        }
                    }
                    let unplaced = summary.withLock { $0.unplaced }
                    continuation.resume(throwing: RPCStatus(
                        code: .failedPrecondition,
                        message: "cannot drain \(address): the other workers have no room for its pairs (\(unplaced.count) would be unplaced)"))
                }
            }
        }
        log.info("drained a worker", metadata: ["worker": "\(address)", "moved_bytes": "\(moved)"])
        var response = Shoal_V1_DrainResponse()
        response.movedBytes = UInt64(moved)
        return try RPCPayload(message: response)
    }

    /// The cluster now: `remote`'s view of the workers, with what they offered and their state
    /// here, and the pairs no worker could take.
    public func status() -> ClusterStatus {
        let c = checkpoint.config
        var status = ClusterStatus(placement: "auto", workers: remote.view.workers, complete: remote.coverage.isComplete,
                                   layers: c.layers, experts: c.experts)
        let members = self.members.withLock { $0 }
        for m in members {
            if let i = status.workers.firstIndex(where: { $0.address == m.address }) {
                status.workers[i].memoryOfferedBytes = m.memoryBytes
                // What it answered its last Assign with, sized here (its hellos may be older).
                status.workers[i].memoryUsedBytes = m.held.reduce(0) { $0 + planner.pairBytes[$1.layer][$1.expert] }
                status.workers[i].name = m.name
                if m.state != .serving || status.workers[i].state == "serving" { status.workers[i].state = m.state.rawValue }
                if m.state == .gone || m.state == .released {
                    status.workers[i].memoryUsedBytes = 0
                    status.workers[i].lastError = nil
                }
            } else {
                status.workers.append(ClusterStatus.Worker(
                    address: m.address, name: m.name, state: m.state.rawValue, memoryOfferedBytes: m.memoryBytes,
                    memoryUsedBytes: 0, experts: Array(repeating: [], count: c.layers), calls: 0, failedCalls: 0,
                    meanCallMilliseconds: nil, lastError: nil))
            }
        }
        let summary = self.summary.withLock { $0 }
        status.unplaced = summary.unplaced.map { [$0.layer, $0.expert] }
        status.missingBytes = summary.missingBytes
        return status
    }

    // MARK: - Re-placement

    /// The pairs that have a holder now but would have none without `address` (nil when it
    /// is not a member). Runs on `queue`.
    private func strandedWithout(_ address: String) -> [ExpertKey]? {
        let snapshot = members.withLock { $0 }
        let plan = self.plan(snapshot.filter { [.joining, .serving].contains($0.state) && $0.address != address }, heat: nil)
        let routedNow = Set(snapshot.flatMap(\.routed))
        return plan.unplaced.filter { routedNow.contains($0) }
    }

    /// The planner's plan for `workers` (indices in the plan are theirs), starting from what
    /// each holds, with their speeds relative to one another.
    private func plan(_ workers: [Member], heat measured: [[Double]]?) -> PlacementPlanner.Plan {
        let c = checkpoint.config
        var current = Array(repeating: Array(repeating: [Int](), count: c.experts), count: c.layers)
        for (j, m) in workers.enumerated() {
            for p in m.held { current[p.layer][p.expert].append(j) }
        }
        let speeds = Self.relativeSpeeds(workers.map(\.speed))
        return planner.plan(
            workers.indices.map { PlacementPlanner.Worker(name: workers[$0].address, memoryBytes: workers[$0].memoryBytes, speed: speeds[$0]) },
            heat: measured?.count == c.layers ? measured : nil, current: current)
    }

    /// One re-placement `delay` from now, unless one is pending already (it will see this
    /// change too).
    private func scheduleReplan(after delay: Duration = .zero) {
        guard !replanPending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        queue.asyncAfter(deadline: .now() + .milliseconds(Int(delay / .milliseconds(1)))) { [self] in
            replanPending.store(false, ordering: .releasing)
            _ = replan()
        }
    }

    private func checkHeartbeats() {
        let now = ContinuousClock.now
        let lost = members.withLock { members -> [String] in
            var lost: [String] = []
            for i in members.indices where [.joining, .serving, .draining].contains(members[i].state)
                && now - members[i].lastHeartbeat > options.timeout {
                members[i].state = .gone
                lost.append(members[i].address)
            }
            return lost
        }
        guard !lost.isEmpty else { return }
        log.warning("workers gone quiet: re-placing their pairs", metadata: ["workers": "\(lost.joined(separator: ", "))"])
        _ = replan()
    }

    /// Plans for the workers now joined, loads, switches, releases (the type's comment). Runs
    /// on `queue`; a worker that fails its Assign counts as gone and the plan is made again.
    private func replan() -> (moved: Int, ok: Bool) {
        for _ in 0..<8 {
            let snapshot = members.withLock { $0 }
            let active = snapshot.indices.filter { [.joining, .serving].contains(snapshot[$0].state) }
            let c = checkpoint.config
            let plan = self.plan(active.map { snapshot[$0] }, heat: heat.withLock { $0 }?())
            var target = Array(repeating: [ExpertKey](), count: snapshot.count)
            for l in 0..<c.layers {
                for e in 0..<c.experts {
                    for j in plan.holders[l][e] { target[active[j]].append(ExpertKey(layer: l, expert: e)) }
                }
            }

            // 1. Load: every worker given something it lacks, keeping what it is about to lose.
            var requests: [RPCPayload?] = Array(repeating: nil, count: snapshot.count)
            for i in snapshot.indices where !Set(target[i]).isSubset(of: Set(snapshot[i].held)) {
                let leaving = Set(snapshot[i].held).subtracting(target[i]).sorted()
                requests[i] = try? assignRequest(target[i], leaving: leaving)
            }
            if requests.contains(where: { $0 != nil }) {
                log.info("loading a new placement", metadata: [
                    "workers": "\(active.count)", "moved_bytes": "\(plan.movedBytes)",
                    "unplaced": "\(plan.unplaced.count)",
                ])
            }
            let failed = assign(requests, snapshot: snapshot)
            if !failed.isEmpty {
                members.withLock { members in
                    for address in failed {
                        if let i = members.firstIndex(where: { $0.address == address }) { members[i].state = .gone }
                    }
                }
                continue
            }

            // 2. Switch: routes follow the plan from the next forward pass.
            var placement: [String: [ExpertKey]] = [:]
            for i in snapshot.indices { placement[snapshot[i].address] = target[i] }
            summary.withLock { $0 = Summary(unplaced: plan.unplaced, missingBytes: plan.missingBytes) }
            let switched = DispatchSemaphore(value: 0)
            // Members say serving as routes switch (the forward pass's thread runs this).
            remote.stage(placement) { [self, placement] in
                members.withLock { members in
                    for i in members.indices {
                        if let routed = placement[members[i].address] { members[i].routed = routed }
                        if members[i].state == .joining { members[i].state = .serving }
                    }
                }
                switched.signal()
            }
            switched.wait()

            // 3. Release: final sets, without what no longer routes there.
            var releases: [RPCPayload?] = Array(repeating: nil, count: snapshot.count)
            let now = members.withLock { $0 }
            for i in snapshot.indices where now[i].state != .gone && Set(now[i].held) != Set(target[i]) {
                releases[i] = try? assignRequest(target[i], leaving: [])
            }
            _ = assign(releases, snapshot: snapshot)
            members.withLock { members in
                for i in snapshot.indices where members[i].state == .draining && target[i].isEmpty {
                    members[i].state = .released
                }
            }
            if plan.unplaced.isEmpty {
                log.info("placement ready", metadata: [
                    "workers": "\(active.count)", "replicated_pairs": "\(plan.replicatedPairs)",
                    "moved_bytes": "\(plan.movedBytes)",
                ])
            } else {
                log.warning("some pairs have no worker with room", metadata: [
                    "unplaced": "\(plan.unplaced.count)", "missing_bytes": "\(plan.missingBytes)",
                ])
            }
            return (plan.movedBytes, true)
        }
        log.error("re-placement gave up after 8 rounds of failing workers")
        return (0, false)
    }

    /// The planner's speeds from measured read bandwidths: relative to their median, and 1
    /// within 1.5× of it either way. A short read on a shared host varies by a few tens of
    /// percent from run to run; hosts of one kind should share the work equally, and only a
    /// really faster or slower one should carry more or less.
    public static func relativeSpeeds(_ bandwidths: [Double]) -> [Double] {
        let known = bandwidths.filter { $0 > 0 }.sorted()
        guard !known.isEmpty else { return bandwidths.map { _ in 1 } }
        let median = known[known.count / 2]
        return bandwidths.map { bw in
            guard bw > 0 else { return 1 }
            let r = bw / median
            return r >= 1 / 1.5 && r <= 1.5 ? 1 : r
        }
    }

    private func assignRequest(_ pairs: [ExpertKey], leaving: [ExpertKey]) throws -> RPCPayload {
        var request = Shoal_V1_AssignRequest()
        request.hello.protocolVersion = expectation.protocolVersion
        request.hello.modelFingerprint = expectation.fingerprint
        request.layers = pairs.map { UInt32($0.layer) }
        request.experts = pairs.map { UInt32($0.expert) }
        request.leavingLayers = leaving.map { UInt32($0.layer) }
        request.leavingExperts = leaving.map { UInt32($0.expert) }
        return try RPCPayload(message: request)
    }

    /// Sends the Assign requests at once; records what each worker now holds; returns the
    /// addresses of those that failed or answered wrongly.
    private func assign(_ requests: [RPCPayload?], snapshot: [Member]) -> [String] {
        guard requests.contains(where: { $0 != nil }) else { return [] }
        let answers = fanout.call(snapshot.map(\.channel), ExpertServiceMethod.assign, requests, timeout: options.assignTimeout)
        var failed: [String] = []
        for i in snapshot.indices {
            guard let answer = answers[i] else { continue }
            let address = snapshot[i].address
            do {
                let response = try answer.result.get().message(Shoal_V1_HelloResponse.self)
                let hello = try validate(response, expecting: expectation) { pairs in
                    (try? ModelFingerprint.of(checkpoint, pairs: pairs.map { ExpertKey(layer: $0.layer, expert: $0.expert) }))
                        ?? "(this checkpoint cannot fingerprint those pairs)"
                }
                let held = hello.pairs.map { ExpertKey(layer: $0.layer, expert: $0.expert) }.sorted()
                members.withLock { members in
                    if let j = members.firstIndex(where: { $0.address == address }) { members[j].held = held }
                }
            } catch {
                log.warning("a worker failed its assignment", metadata: ["worker": "\(address)", "reason": "\(error)"])
                failed.append(address)
            }
        }
        return failed
    }
}
