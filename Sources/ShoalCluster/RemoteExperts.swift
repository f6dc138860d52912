import Foundation
import Synchronization
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTensor

/// Experts held by worker daemons, reached over gRPC: the coordinator's `ExpertBackend`.
///
/// At start it says hello to every worker and builds the placement table, (layer, expert) →
/// the workers holding it. Per layer it sends one Compute request to each worker that holds a
/// chosen expert, all in flight at once, each on that worker's ComputeStream (one stream per
/// worker, opened on first use and again after it ends), and adds the answers per token in
/// ascending order of each answer's lowest expert. With Mixtral's two experts per token that is exactly the order one
/// process adds them in, so with the f32 wire the result is bit-identical (DESIGN invariant 1).
///
/// A pair held by several workers is a replica: a token goes to a worker already serving
/// another of its experts when one holds this expert too (so it is sent once), otherwise the
/// holders take turns call by call. A worker whose call fails, or whose answer is not a valid
/// one (sizes, finite values), is marked down and the call fails naming it, the layer and the
/// experts; later calls use the other holders. A down worker is probed from a thread of its own
/// (`Prober`) and serves again within about a second of answering, also under load; one that
/// sent a bad answer only after `quarantine`.
///
/// A layer's deadline follows what calls have measured: `deadlineMargin` times the slowest
/// recent time per token, times the layer's tokens, at least `minimumDeadline` and at most
/// `timeout` (which applies alone until 8 calls are measured). A hung worker so costs about
/// `minimumDeadline` once, not `timeout` per call. Sooner still, when a live replica holds
/// every expert of a late worker's request: after `hedgeMargin` times the measured time (at
/// least `minimumHedgeDelay`) the same request goes to it as a unary Compute, and the first
/// answer is used; the replica computes the same experts in the same order, so the result is
/// the one the late worker would have sent. The late worker is marked down.
public final class RemoteExperts: ExpertBackend {
    public struct Options: Sendable {
        /// Activation dtype on the wire: f32 is exact, bf16 halves the bytes.
        public var wireDType: WireDType = .bf16
        /// The longest deadline of one Compute call (and the deadline before calls have been
        /// measured).
        public var timeout: Duration = .seconds(30)
        /// The shortest deadline of one Compute call, once measured.
        public var minimumDeadline: Duration = .milliseconds(1500)
        /// How many times the measured time a call may take before its worker counts as hung.
        public var deadlineMargin = 10.0
        /// How many times the measured time a call may take before its request is sent to a
        /// replica too (hedged), when one holds every expert of it.
        public var hedgeMargin = 4.0
        /// The shortest wait before a hedge, once measured: below it a busy host's jitter
        /// would hedge healthy workers.
        public var minimumHedgeDelay: Duration = .milliseconds(250)
        /// Deadline of the background hellos that find hung and returning workers.
        public var probeDeadline: Duration = .seconds(1)
        /// How long a worker that sent a bad answer (wrong size, NaN) stays down, however well
        /// it answers hellos meanwhile.
        public var quarantine: Duration = .seconds(60)
        /// Deadline of one Hello.
        public var helloTimeout: Duration = .seconds(10)
        public var security: RPCSecurity = .insecure
        /// Start even when some pairs have no reachable holder (a service whose workers come
        /// up after it): calls needing them fail, `coverage` says so, and `probe()` picks the
        /// workers up once they answer. A worker of another model is still refused.
        public var startWithMissingPairs = false
        public init() {}
    }

    /// One worker as the coordinator sees it.
    public struct Worker: Sendable {
        public let address: String
        /// What it holds; empty until its hello succeeds.
        public fileprivate(set) var pairs: [ExpertKey] = []
        public fileprivate(set) var name = ""
        public fileprivate(set) var weightBytes: UInt64 = 0
        public fileprivate(set) var alive = false
        /// Why it is down, if it is.
        public fileprivate(set) var lastError: ClusterError?
        fileprivate var lastProbe: ContinuousClock.Instant?
        /// When it was last marked down: a hello sent before then says nothing of it now.
        fileprivate var downSince: ContinuousClock.Instant?
        /// Until when a worker that sent a bad answer stays down whatever its hellos say.
        fileprivate var quarantinedUntil: ContinuousClock.Instant?
        /// For a worker placed by the coordinator (`stage`): the pairs routed to it, which it
        /// must hold; nil for a worker with fixed experts, routed all it holds.
        public fileprivate(set) var routed: [ExpertKey]?
        /// Compute calls answered or failed, and their total time.
        public fileprivate(set) var calls = 0
        public fileprivate(set) var failures = 0
        public fileprivate(set) var callSeconds = 0.0
        /// The pairs calls are routed to it.
        public var serving: [ExpertKey] { routed ?? pairs }
        fileprivate var isQuarantined: Bool { quarantinedUntil.map { ContinuousClock.now < $0 } ?? false }
    }

    public private(set) var workers: [Worker]
    public let stats = ClusterStats()
    /// Called on the forward pass's thread for every worker's answer to a Compute: worker
    /// address, time to its answer, whether it failed, request and answer bytes (metrics).
    public var callObserver: ((_ worker: String, _ elapsed: Duration, _ failed: Bool, _ sent: Int, _ received: Int) -> Void)?
    private var channels: [RPCChannel]
    /// Each worker's ComputeStream; nil until first used.
    private var streams: [RPCExchange?]
    /// Whether that stream has answered a request yet.
    private var streamAnswered: [Bool]
    private let checkpoint: Checkpoint
    private let options: Options
    private let expectation: HandshakeExpectation
    private let dim: Int
    private let fanout = Fanout()
    private var prober: Prober?
    /// When the prober was last asked to check every worker.
    private var lastCheckAll = ContinuousClock.now
    /// Seconds per token of recent successful calls, newest last (at most 32).
    private var recentRates: [Double] = []
    private let pool: ComputePool?
    /// [layer][expert] → indices of the workers that hold it, alive or not.
    private var holders: [[[Int]]]
    private var rotation = 0
    /// Requests a replica answered because their worker was late.
    public private(set) var hedges = 0

    // Per-call scratch, reused.
    private var plans: [Plan]
    private var slotWorker: [Int] = []
    private var slotRow: [Int] = []
    private var partials: [FloatBuffer]  // (tokens, dim) one worker's answer, decoded
    /// A placement handed over by `stage`, applied between two forward passes.
    private let staged = Mutex<[(placement: [String: [ExpertKey]], applied: @Sendable () -> Void)]>([])
    private var lastPublished = ContinuousClock.now

    /// What one worker is sent for one layer: the global token of each of its rows, and its
    /// routes over those rows.
    private struct Plan {
        var tokens: [Int] = []
        var routes = Routes()
        mutating func reset() {
            tokens.removeAll(keepingCapacity: true)
            routes.removeAll()
        }
        var experts: [Int] { Array(Set(routes.expert.map(Int.init))).sorted() }
    }

    /// Connects to `addresses` (HOST:PORT each) and says hello to all of them at once.
    ///
    /// - Throws: `ClusterError.refused` for a worker of another model or protocol (even if the
    ///   others cover every pair: a misconfigured cluster should not limp on), and
    ///   `.missingPairs` when some pair has no reachable holder (unless
    ///   `startWithMissingPairs`). An unreachable worker whose pairs others hold is only
    ///   reported through `warn`.
    /// - Parameter pool: the coordinator's compute pool, sent to sleep while a layer waits for
    ///   its workers (they may share this machine's cores).
    public init(checkpoint: Checkpoint, workers addresses: [String], options: Options = Options(),
                pool: ComputePool? = nil, warn: (String) -> Void = { _ in }) throws {
        self.pool = pool
        let c = checkpoint.config
        self.checkpoint = checkpoint
        self.options = options
        dim = c.dim
        expectation = HandshakeExpectation(
            fingerprint: try ModelFingerprint.of(checkpoint, pairs: []),
            shape: ModelShape(dim: c.dim, hiddenDim: c.hiddenDim, layers: c.layers, experts: c.experts))
        workers = addresses.map { Worker(address: $0) }
        channels = addresses.map {
            RPCChannel(target: $0, security: options.security, maxReceiveBytes: 1 << 30)
        }
        streams = Array(repeating: nil, count: addresses.count)
        streamAnswered = Array(repeating: false, count: addresses.count)
        holders = Array(repeating: Array(repeating: [], count: c.experts), count: c.layers)
        plans = Array(repeating: Plan(), count: addresses.count)
        partials = addresses.map { _ in FloatBuffer() }

        let answers = fanout.call(channels, ExpertServiceMethod.hello,
                                  Array(repeating: try helloRequest(), count: channels.count),
                                  timeout: options.helloTimeout)
        for i in workers.indices {
            do {
                try accept(hello: answers[i]!.result, worker: i)
            } catch let error as ClusterError {
                if case .unreachable = error {
                    workers[i].lastError = error
                    warn("\(error)")
                    continue
                }
                throw error
            }
        }
        prober = Prober(channels: channels, hello: try helloRequest(), deadline: options.probeDeadline)
        let missing = missingPairs()
        publishCoverage()
        if !missing.isEmpty {
            let error = ClusterError.missingPairs(missing, down: workers.filter { !$0.alive }.map(\.address))
            guard options.startWithMissingPairs else { throw error }
            warn("\(error); starting anyway, they are served once a holder answers")
        }
    }

    // Closing the channels ends the streams, so the fan-out's queue drains when it goes.
    deinit {
        prober?.stop()
        for channel in channels { channel.close() }
    }

    // MARK: - Liveness

    /// Whether every (layer, expert) had a live holder at the last call, hello or probe; for
    /// health checks on other threads.
    public let coverage = Coverage()

    /// A flag safe to read from any thread.
    public final class Coverage: Sendable {
        private let flag = Atomic<Bool>(false)
        /// True when every (layer, expert) has a live holder.
        public var isComplete: Bool { flag.load(ordering: .acquiring) }
        fileprivate func set(_ value: Bool) { flag.store(value, ordering: .releasing) }
    }

    /// Pairs without a live holder.
    private func missingPairs() -> [ExpertKey] {
        let c = checkpoint.config
        return (0..<c.layers).flatMap { l in
            (0..<c.experts).filter { e in !holders[l][e].contains { workers[$0].alive } }
                .map { ExpertKey(layer: l, expert: $0) }
        }
    }

    private func publishCoverage() {
        coverage.set(missingPairs().isEmpty)
        prober?.setDown(Set(workers.indices.filter { !workers[$0].alive }),
                        retired: Set(workers.indices.filter { workers[$0].routed == [] }))
        publishWorkers()
    }

    private func publishWorkers() {
        lastPublished = .now
        view.publish(workers)
    }

    /// The workers as of the last change or half second, for status pages on other threads.
    public let view = View()

    /// A copy of the workers safe to read from any thread.
    public final class View: Sendable {
        private let copy = Mutex<[Worker]>([])
        public var workers: [Worker] { copy.withLock { $0 } }
        fileprivate func publish(_ workers: [Worker]) { copy.withLock { $0 = workers } }
    }

    // MARK: - Placement by the coordinator

    /// Routes calls by `placement` (worker address → the pairs it serves) from the next forward
    /// pass on. A worker not seen before is added, holding its pairs already (the caller
    /// assigned them); one absent from `placement` is routed nothing. `applied` runs on the
    /// forward pass's thread once no call can use the old routes, so the caller may then let
    /// the pairs they used go. Safe from any thread; an idle coordinator applies it at its next
    /// `probe()`.
    public func stage(_ placement: [String: [ExpertKey]], applied: @escaping @Sendable () -> Void) {
        staged.withLock { $0.append((placement, applied)) }
    }

    private func applyStaged() {
        let pending = staged.withLock { staged in
            defer { staged.removeAll() }
            return staged
        }
        for (placement, applied) in pending {
            apply(placement)
            applied()
        }
    }

    private func apply(_ placement: [String: [ExpertKey]]) {
        for address in placement.keys.sorted() where !workers.contains(where: { $0.address == address }) {
            workers.append(Worker(address: address))
            let channel = RPCChannel(target: address, security: options.security, maxReceiveBytes: 1 << 30)
            channels.append(channel)
            streams.append(nil)
            streamAnswered.append(false)
            plans.append(Plan())
            partials.append(FloatBuffer())
            prober?.add(channel)
            workers[workers.count - 1].alive = true
        }
        for i in workers.indices {
            let routed = placement[workers[i].address] ?? []
            workers[i].routed = routed
            // It answered the caller's Assign with these: it holds them (its next hello says so too).
            workers[i].pairs = Array(Set(workers[i].pairs).union(routed)).sorted()
        }
        holders = holders.map { $0.map { _ in [] } }
        for i in workers.indices {
            for p in workers[i].serving { holders[p.layer][p.expert].append(i) }
        }
        publishCoverage()
    }

    /// For a coordinator with nothing to compute (call every half second or so, from the
    /// forward pass's thread; it never blocks): takes in what the background hellos found —
    /// a worker that came back serves again, one that stopped answering is marked down, so
    /// health checks see it before a request does — and asks for another round of hellos to
    /// every worker once a second.
    public func probe() {
        applyStaged()
        applyProbes()
        if ContinuousClock.now - lastCheckAll >= .seconds(1) {
            lastCheckAll = .now
            prober?.checkAll()
        }
    }

    /// Applies the prober's answers: hellos accepted, workers that stopped answering down.
    private func applyProbes() {
        guard let results = prober?.takeResults(), !results.isEmpty else { return }
        for result in results where !workers[result.worker].isQuarantined {
            // A hello answered before a call found the worker dead (sent just before it was
            // killed, taken from the mailbox after) must not bring it back: the next round asks
            // again.
            if let since = workers[result.worker].downSince, result.sent < since { continue }
            do {
                try accept(hello: result.answer, worker: result.worker)
            } catch {
                if result.wasLive { markDown(result.worker) }
                workers[result.worker].lastError = error as? ClusterError
            }
        }
        publishCoverage()
    }

    /// This layer's deadline for `tokens` tokens (the type's comment gives the rule).
    private func deadline(tokens: Int) -> Duration {
        guard recentRates.count >= 8, let rate = recentRates.max() else { return options.timeout }
        let measured = Duration.seconds(rate * Double(tokens) * options.deadlineMargin)
        return min(options.timeout, max(options.minimumDeadline, measured))
    }

    /// How long this layer waits for a worker before sending its request to a replica too:
    /// `hedgeMargin` times the slowest recent time per token, times the tokens, at least
    /// `minimumHedgeDelay`; nil (no hedge) until 8 calls are measured.
    private func hedgeDelay(tokens: Int) -> Duration? {
        guard recentRates.count >= 8, let rate = recentRates.max() else { return nil }
        return max(options.minimumHedgeDelay, .seconds(rate * Double(tokens) * options.hedgeMargin))
    }

    /// A live worker other than `w` that holds every expert of `w`'s plan for `layer`: it can
    /// answer `w`'s request exactly as `w` would (the same experts, summed in the same order).
    private func replica(for w: Int, layer: Int) -> Int? {
        let experts = plans[w].experts
        return workers.indices.first { r in
            r != w && workers[r].alive && experts.allSatisfy { holders[layer][$0].contains(r) }
        }
    }

    private func helloRequest() throws -> RPCPayload {
        var request = Shoal_V1_HelloRequest()
        request.protocolVersion = expectation.protocolVersion
        request.modelFingerprint = expectation.fingerprint
        return try RPCPayload(message: request)
    }

    /// Records a hello answer: the worker's pairs into the placement table, or why not.
    private func accept(hello answer: Result<RPCPayload, Error>, worker i: Int) throws {
        let address = workers[i].address
        workers[i].lastProbe = .now
        let payload: RPCPayload
        switch answer {
        case .success(let p): payload = p
        case .failure(let error):
            let status = error as? RPCStatus ?? RPCStatus(code: .unknown, message: "\(error)")
            if status.code == .failedPrecondition {  // the worker refused us
                throw ClusterError.refusedByWorker(worker: address, message: status.message)
            }
            throw ClusterError.unreachable(worker: address, status: status)
        }
        let response: Shoal_V1_HelloResponse
        do {
            response = try payload.message(Shoal_V1_HelloResponse.self)
        } catch {
            throw ClusterError.malformedHello(worker: address, detail: "\(error)")
        }
        let hello: ValidatedHello
        do {
            hello = try validate(response, expecting: expectation) { pairs in
                (try? ModelFingerprint.of(checkpoint, pairs: pairs.map { ExpertKey(layer: $0.layer, expert: $0.expert) }))
                    ?? "(this checkpoint cannot fingerprint those pairs)"
            }
        } catch {
            throw ClusterError.refused(worker: address, reason: error)
        }
        let pairs = hello.pairs.map { ExpertKey(layer: $0.layer, expert: $0.expert) }
        if let routed = workers[i].routed {
            // Placed by the coordinator: routes follow the placement, and the worker must hold them.
            let held = Set(pairs)
            workers[i].pairs = pairs
            let missing = routed.count { !held.contains($0) }
            if missing > 0 { throw ClusterError.holdsLess(worker: address, missing: missing) }
        } else if pairs != workers[i].pairs {
            // A worker that comes back may serve other pairs than before.
            for p in workers[i].pairs { holders[p.layer][p.expert].removeAll { $0 == i } }
            for p in pairs { holders[p.layer][p.expert].append(i) }
        }
        workers[i].pairs = pairs
        workers[i].name = hello.workerName
        workers[i].weightBytes = hello.weightBytes
        workers[i].alive = true
        workers[i].lastError = nil
    }

    // MARK: - The MoE layer

    /// One layer in four steps: place each route on a live holder, send every worker its
    /// part, check every answer before any is used, and add the partial sums in the order one
    /// process would.
    public func moe(layer: Int, x: UnsafePointer<Float>, routes: Routes, out: UnsafeMutablePointer<Float>) throws {
        // A new placement switches between forward passes, never inside one.
        if layer == 0 { applyStaged() }
        applyProbes()
        try place(routes, layer: layer)
        let exchanged = try send(layer: layer, x: x, tokens: routes.tokenCount)
        try check(exchanged, layer: layer, tokens: routes.tokenCount)
        combine(routes, into: out)
    }

    /// The requests of one layer, and what came back.
    private struct Exchanged {
        var requests: [RPCPayload?]
        var answers: [Fanout.Answer?]
        /// The replica whose answer stands in for a worker that was late.
        var hedgedBy: [Int?]
        var sent: Int
        var elapsed: Duration
    }

    /// Fills `plans` (each worker's tokens and routes) and `slotWorker`/`slotRow` (where each
    /// route's sum will be found).
    private func place(_ routes: Routes, layer: Int) throws {
        rotation &+= 1
        for w in plans.indices { plans[w].reset() }
        if slotWorker.count < routes.count {
            slotWorker = Array(repeating: 0, count: routes.count)
            slotRow = Array(repeating: 0, count: routes.count)
        }
        for (t, group) in routes.byToken {
            for s in group {
                let e = Int(routes.expert[s])
                let w = try holder(layer: layer, expert: e, sharingWith: slotWorker[group.lowerBound..<s])
                slotWorker[s] = w
                if plans[w].tokens.last != t { plans[w].tokens.append(t) }
                slotRow[s] = plans[w].tokens.count - 1
                plans[w].routes.append(token: plans[w].tokens.count - 1, expert: e, weight: routes.weight[s])
            }
        }
    }

    /// One request per worker with work, all in flight at once, each on its worker's stream;
    /// a stream known to have ended is replaced first.
    private func send(layer: Int, x: UnsafePointer<Float>, tokens n: Int) throws -> Exchanged {
        let wire = options.wireDType
        var requests: [RPCPayload?] = Array(repeating: nil, count: workers.count)
        var sent = 0
        for w in plans.indices where !plans[w].tokens.isEmpty {
            let payload = try request(plans[w], layer: layer, x: x, wire: wire)
            sent += payload.count
            requests[w] = payload
            if streams[w]?.hasEnded ?? true { openStream(w) }
        }
        pool?.idle()
        let start = ContinuousClock.now
        let timeout = deadline(tokens: n)
        var (answers, hedgedBy) = fanout.exchange(
            streams, requests, timeout: timeout, hedgeAfter: hedgeDelay(tokens: n), hedgeMethod: ExpertServiceMethod.compute,
            hedge: { w in replica(for: w, layer: layer).map { ($0, channels[$0]) } })
        // A stream can end while idle between calls (its worker restarted or shut down); its
        // end is only seen when it is used next. Such a stream gets the request once more on a
        // new one, so a restarted worker answers as a unary call would have reached it.
        var again: [RPCPayload?]?  // made only when some stream needs it
        for w in plans.indices where streamAnswered[w] {
            if case .failure(let error as RPCStatus) = answers[w]?.result, error.code == .unavailable {
                if again == nil { again = Array(repeating: nil, count: workers.count) }
                again![w] = requests[w]
                openStream(w)
            }
        }
        if let again {
            for (w, answer) in fanout.exchange(streams, again, timeout: timeout).answers.enumerated() where again[w] != nil {
                answers[w] = answer
                hedgedBy[w] = nil
            }
        }
        return Exchanged(requests: requests, answers: answers, hedgedBy: hedgedBy, sent: sent,
                         elapsed: ContinuousClock.now - start)
    }

    /// Checks every answer before any is used (the first failure, in worker order, is thrown
    /// and marks its worker down), records the layer's statistics, and decodes each worker's
    /// partial sums into `partials`, refusing non-finite values.
    private func check(_ exchanged: Exchanged, layer: Int, tokens n: Int) throws {
        let wire = options.wireDType
        var outputs: [Data?] = Array(repeating: nil, count: workers.count)
        var received = 0, slowest = Duration.zero
        for w in plans.indices {
            guard let answer = exchanged.answers[w] else { continue }
            if let r = exchanged.hedgedBy[w] {
                // w did not answer in time and its replica did: w counts as hung (the prober
                // brings it back once it answers hellos), its stream was cancelled.
                markDown(w)
                workers[w].failures += 1
                workers[w].lastError = ClusterError.computeFailed(
                    worker: workers[w].address, layer: layer, experts: plans[w].experts,
                    status: RPCStatus(code: .deadlineExceeded, message: "late; \(workers[r].address) answered for it"))
                publishCoverage()
                hedges += 1
            }
            let answerer = exchanged.hedgedBy[w] ?? w
            workers[answerer].calls += 1
            workers[answerer].callSeconds += answer.elapsed.seconds
            if case .failure = answer.result { workers[answerer].failures += 1 }
            if let callObserver {
                let failed = if case .failure = answer.result { true } else { false }
                let size = if case .success(let payload) = answer.result { payload.count } else { 0 }
                callObserver(workers[answerer].address, answer.elapsed, failed, exchanged.requests[w]?.count ?? 0, size)
            }
            switch answer.result {
            case .failure(let error):
                let status = error as? RPCStatus ?? RPCStatus(code: .unknown, message: "\(error)")
                let failure = ClusterError.computeFailed(
                    worker: workers[w].address, layer: layer, experts: plans[w].experts, status: status)
                if [.unavailable, .deadlineExceeded, .cancelled, .unknown].contains(status.code) {
                    markDown(w)
                    workers[w].lastError = failure
                    publishCoverage()
                }
                throw failure
            case .success(let payload):
                if exchanged.hedgedBy[w] == nil { streamAnswered[w] = true }
                received += payload.count
                let response: Shoal_V1_ComputeResponse
                do {
                    response = try payload.message(Shoal_V1_ComputeResponse.self)
                    try validate(response, tokenCount: plans[w].tokens.count, dim: dim, dtype: wire)
                } catch {
                    throw badAnswer(answerer, layer: layer, experts: plans[w].experts, detail: "\(error)")
                }
                outputs[w] = response.output
                slowest = max(slowest, .microseconds(Int64(clamping: response.computeMicros)))
            }
        }
        stats.record(.init(layer: layer, tokens: n, elapsed: exchanged.elapsed, sent: exchanged.sent, received: received,
                           workerCompute: slowest))
        if ContinuousClock.now - lastPublished >= .milliseconds(500) { publishWorkers() }
        if recentRates.count == 32 { recentRates.removeFirst() }
        recentRates.append(exchanged.elapsed.seconds / Double(max(1, n)))

        for w in plans.indices {
            guard let output = outputs[w] else { continue }
            let rows = plans[w].tokens.count
            let p = partials[w].reserve(rows * dim)
            try ActivationCodec.decode(output, as: wire, into: UnsafeMutableBufferPointer(start: p, count: rows * dim))
            // A sum of finite weights times finite activations is finite: anything else is a
            // broken worker (or memory), never an answer to pass on.
            if !allFinite(UnsafeBufferPointer(start: p, count: rows * dim)),
               let bad = (0..<(rows * dim)).first(where: { !p[$0].isFinite }) {
                throw badAnswer(exchanged.hedgedBy[w] ?? w, layer: layer, experts: plans[w].experts,
                                detail: "non-finite value \(p[bad]) in row \(bad / dim) of its output")
            }
        }
    }

    /// out[t] = 0 + partial(first worker) + partial(second) …, in the order of each worker's
    /// lowest expert for t, which is the order its first route appears in.
    private func combine(_ routes: Routes, into out: UnsafeMutablePointer<Float>) {
        out.update(repeating: 0, count: routes.tokenCount * dim)
        for (t, group) in routes.byToken {
            for s in group {
                let w = slotWorker[s]
                if slotWorker[group.lowerBound..<s].contains(w) { continue }  // this worker's sum is in
                let src = partials[w].pointer + slotRow[s] * dim, o = out + t * dim
                for i in 0..<dim { o[i] += src[i] }
            }
        }
    }

    /// A worker's answer that failed validation: the worker is marked down (its replica, if
    /// any, serves from now on; probing brings it back once it answers hellos again) and the
    /// error names it.
    private func badAnswer(_ w: Int, layer: Int, experts: [Int], detail: String) -> ClusterError {
        let failure = ClusterError.badResponse(worker: workers[w].address, layer: layer, experts: experts, detail: detail)
        markDown(w)
        // Its hellos may be fine while its answers are not: it sits out a while first.
        workers[w].quarantinedUntil = .now + options.quarantine
        workers[w].lastError = failure
        publishCoverage()
        return failure
    }

    private func markDown(_ w: Int) {
        workers[w].alive = false
        workers[w].downSince = .now
    }

    private func openStream(_ w: Int) {
        streams[w] = channels[w].openExchange(ExpertServiceMethod.computeStream, on: fanout.queue)
        streamAnswered[w] = false
    }

    /// A live worker holding (layer, expert): one already serving this token if it holds the
    /// expert too, otherwise the holders in turn. Down holders are tried again (hello) when no
    /// holder is live, at most once a second each.
    private func holder(layer: Int, expert: Int, sharingWith earlier: ArraySlice<Int>) throws -> Int {
        let candidates = holders[layer][expert]
        for w in earlier where workers[w].alive && candidates.contains(w) { return w }
        var live = candidates.count { workers[$0].alive }
        if live == 0 {
            revive(candidates)
            live = candidates.count { workers[$0].alive }
        }
        guard live > 0 else {
            throw ClusterError.missingPairs([ExpertKey(layer: layer, expert: expert)],
                                            down: candidates.map { workers[$0].address })
        }
        // The (rotation mod live)-th live holder, without collecting them into an array.
        var turn = rotation % live
        for w in candidates where workers[w].alive {
            if turn == 0 { return w }
            turn -= 1
        }
        preconditionFailure("counted \(live) live holders")
    }

    private func revive(_ candidates: [Int]) {
        let due = candidates.filter {
            !workers[$0].alive && !workers[$0].isQuarantined
                && (workers[$0].lastProbe.map { .now - $0 > .seconds(1) } ?? true)
        }
        guard !due.isEmpty, let request = try? helloRequest() else { return }
        var requests: [RPCPayload?] = Array(repeating: nil, count: workers.count)
        for w in due { requests[w] = request }
        let answers = fanout.call(channels, ExpertServiceMethod.hello, requests, timeout: options.probeDeadline)
        for w in due {
            do { try accept(hello: answers[w]!.result, worker: w) } catch let error as ClusterError {
                workers[w].lastError = error
            } catch {}
        }
        publishCoverage()
    }

    /// The Compute request of one plan, with its tokens' rows of `x` encoded for the wire.
    private func request(_ plan: Plan, layer: Int, x: UnsafePointer<Float>, wire: WireDType) throws -> RPCPayload {
        var request = Shoal_V1_ComputeRequest()
        request.layer = UInt32(layer)
        request.tokenCount = UInt32(plan.tokens.count)
        request.dim = UInt32(dim)
        request.dtype = wire.proto
        let rowBytes = dim * wire.byteWidth
        var hidden = Data(count: plan.tokens.count * rowBytes)
        hidden.withUnsafeMutableBytes { bytes in
            for (j, t) in plan.tokens.enumerated() {
                ActivationCodec.encode(UnsafeBufferPointer(start: x + t * dim, count: dim), as: wire,
                                       into: UnsafeMutableRawBufferPointer(rebasing: bytes[(j * rowBytes)..<((j + 1) * rowBytes)]))
            }
        }
        request.hidden = hidden
        request.routeToken = plan.routes.token
        request.routeExpert = plan.routes.expert
        request.routeWeight = plan.routes.weight
        return try RPCPayload(message: request)
    }
}
