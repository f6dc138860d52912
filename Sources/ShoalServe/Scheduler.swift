import Foundation
import Logging
import ShoalModel
import ShoalTensor
import ShoalTokenizer
import Synchronization

/// Continuous batching over one model: every running sequence advances in each step, so a
/// layer's experts are called once per step for all of them (one `Compute` per worker per
/// layer in a cluster), while attention stays per sequence.
///
/// One thread runs the steps. A step takes one token from each decoding sequence and, with
/// the token budget left, the next chunk of the prompts still being read, so a long prompt
/// never stalls the others for more than one chunk. Requests join at the next step and
/// leave when they end; each keeps its own sampler and seed. Because every kernel computes
/// a token's row the same way in any batch, a request's tokens do not depend on what else
/// runs (tested).
///
/// KV-cache memory is reserved whole when a request is admitted (prompt plus max tokens),
/// within a fixed budget: a request that fits the budget but not what is free now waits in
/// the queue; one that exceeds the whole budget, or `maxRequestTokens`, is refused at
/// submission.
///
/// Admission is fair between clients (`GenerationRequest.client`): a client holds at most
/// `clientShare` of the batch places and of the KV cache, so others always find room; among
/// the waiting requests that fit, the one whose client runs the fewest sequences goes first
/// (then the oldest); a request that does not fit yet does not hold back smaller ones behind
/// it, until it has waited `headOfLineWait`: then nothing new is admitted before it, so a
/// stream of small requests cannot starve a large one.
public final class Scheduler: GenerationService, @unchecked Sendable {
    /// Limits of the scheduler; see `shoal serve --help`.
    public struct Options: Sendable {
        /// Most sequences decoding at once.
        public var maxBatch = 16
        /// Most requests waiting for a place; more are refused (HTTP 429).
        public var maxQueue = 64
        /// KV-cache positions across all running sequences.
        public var kvCacheTokens = 16384
        /// Most tokens in one step: one per decoding sequence, the rest prompt chunks.
        public var stepTokens = 128
        /// Tokens a request may generate when it names no limit (their KV cache is reserved
        /// at admission, so an unbounded default would hold the whole budget).
        public var defaultMaxTokens = 1024
        /// Most KV-cache positions (prompt plus max tokens) one request may reserve.
        public var maxRequestTokens = 4096
        /// The fraction of the batch places and of the KV cache one client may hold.
        public var clientShare = 0.75
        /// How long a request that does not fit yet lets smaller ones pass it.
        public var headOfLineWait = Duration.seconds(5)

        public init() {}

        /// Places one client may hold: at least one.
        var clientPlaces: Int { max(1, Int((Double(maxBatch) * clientShare).rounded(.up))) }
        /// KV-cache positions one client may hold: at least one request's worth.
        var clientTokens: Int { max(min(maxRequestTokens, kvCacheTokens), Int(Double(kvCacheTokens) * clientShare)) }
    }

    public let tokenizer: SentencePieceTokenizer
    public let contextLimit: Int
    public let options: Options
    /// Bytes one cached position takes (keys and values of every layer, float32).
    public let bytesPerCachedToken: Int
    private let model: MixtralModel
    private let readiness: @Sendable () -> Bool
    private let probe: (() -> Void)?
    private let metrics: ServeMetrics?
    private let log: Logger
    private let shared = Mutex(Shared())
    private let wake = NSCondition()
    private var thread: Thread?
    private let stopped = DispatchSemaphore(value: 0)

    /// State shared between submitting threads and the step thread.
    private struct Shared {
        var waiting: [ScheduledSequence] = []
        var running = 0
        var stopping = false
    }

    /// Wraps `engine`'s model; `isReady` tells whether every expert has a live holder, and
    /// `probe`, when given, is run on the step thread every half second while nothing runs
    /// (the cluster's liveness check; it must not block).
    public init(engine: Engine, options: Options = Options(), metrics: ServeMetrics? = nil,
                isReady: @escaping @Sendable () -> Bool = { true }, probe: (() -> Void)? = nil,
                log: Logger = Logger(label: "shoal.scheduler")) {
        self.probe = probe
        model = engine.model
        tokenizer = engine.tokenizer
        contextLimit = engine.model.config.maxContext
        self.options = options
        self.metrics = metrics
        self.log = log
        readiness = isReady
        let c = engine.model.config
        bytesPerCachedToken = c.kvCacheBytesPerPosition
        if let metrics {
            var counts = [Int](repeating: 0, count: c.experts)  // reused: this runs per layer
            model.routeObserver = { layer, routes in
                for e in counts.indices { counts[e] = 0 }
                for e in routes.expert { counts[Int(e)] += 1 }
                for (e, n) in counts.enumerated() where n > 0 { metrics.routed(layer: layer, expert: e, tokens: n) }
            }
            metrics.setKVCache(usedTokens: 0, capacityTokens: options.kvCacheTokens, bytesPerToken: bytesPerCachedToken)
        }
    }

    public var isReady: Bool { readiness() }

    /// `defaultMaxTokens`, within the context, the KV budget and the per-request limit.
    public func defaultMaxTokens(promptTokens: Int) -> Int {
        max(1, min(options.defaultMaxTokens, contextLimit - promptTokens, options.kvCacheTokens - promptTokens,
                   options.maxRequestTokens - promptTokens))
    }

    /// 32 bytes per token one request may hold (no tokenizer piece is that long).
    public var maxPromptBytes: Int { 32 * min(options.maxRequestTokens, contextLimit) }

    /// Sequences running and waiting now.
    public var load: (running: Int, queued: Int) {
        shared.withLock { ($0.running, $0.waiting.count) }
    }

    /// Starts the step thread.
    public func start() {
        precondition(thread == nil, "started twice")
        let thread = Thread { [self] in run() }
        thread.name = "shoal-scheduler"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    public func submit(
        _ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void
    ) throws(SubmitError) -> any GenerationTicket {
        do {
            return try admitToQueue(request, onEvent: onEvent)
        } catch {
            metrics?.requestFinished(outcome: .rejected)
            throw error
        }
    }

    private func admitToQueue(
        _ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void
    ) throws(SubmitError) -> any GenerationTicket {
        let prompt = request.prompt, parameters = request.parameters
        guard !prompt.isEmpty else { throw .invalidPrompt("the prompt is empty") }
        if let bad = prompt.first(where: { $0 < 0 || $0 >= model.config.vocabSize }) {
            throw .invalidPrompt("token id \(bad) is outside the vocabulary (0..<\(model.config.vocabSize))")
        }
        if let bad = parameters.sampling.logitBias.keys.first(where: { $0 >= model.config.vocabSize }) {
            throw .invalidPrompt("logit_bias names token id \(bad), outside the vocabulary (0..<\(model.config.vocabSize))")
        }
        guard parameters.maxTokens >= 1 else { throw .invalidPrompt("max_tokens must be at least 1") }
        let needed = prompt.count + parameters.maxTokens
        guard needed <= contextLimit else { throw .contextOverflow(needed: needed, limit: contextLimit) }
        guard needed <= options.kvCacheTokens else {
            throw .exceedsCacheCapacity(neededTokens: needed, capacityTokens: options.kvCacheTokens)
        }
        guard needed <= options.maxRequestTokens else {
            throw .exceedsRequestLimit(neededTokens: needed, limitTokens: options.maxRequestTokens)
        }
        let sequence = ScheduledSequence(request: request, tokenizer: tokenizer, eosId: model.config.eosId, onEvent: onEvent)
        try shared.withLock { (state) throws(SubmitError) in
            guard !state.stopping else { throw .shuttingDown }
            guard state.waiting.count < options.maxQueue else { throw .queueFull(limit: options.maxQueue) }
            state.waiting.append(sequence)
            metrics?.setQueueDepth(state.waiting.count)
        }
        signal()
        return sequence.ticket
    }

    /// Stops taking requests, lets running and queued ones finish for up to `grace`, then
    /// fails the rest and stops the step thread. Returns when it has stopped.
    public func shutdown(grace: Duration) {
        shared.withLock { $0.stopping = true }
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline, load != (0, 0) { Thread.sleep(forTimeInterval: 0.01) }
        aborting.store(true, ordering: .releasing)
        signal()
        if thread != nil { stopped.wait() }
    }

    // MARK: - The step thread

    /// Set once the grace is over: the step thread fails what is left and returns.
    private let aborting = Atomic<Bool>(false)
    private var running: [ScheduledSequence] = []  // step thread only
    private var reservedTokens = 0  // step thread only
    private var lastProbe = ContinuousClock.now  // step thread only

    private func signal() {
        wake.lock()
        wake.signal()
        wake.unlock()
    }

    private func run() {
        while true {
            dropCancelled()
            if aborting.load(ordering: .acquiring) {
                let left = running + shared.withLock { state in
                    defer { state.waiting.removeAll() }
                    return state.waiting
                }
                for sequence in left { sequence.fail("the server is shutting down", metrics) }
                running.removeAll()
                publishLoad()
                stopped.signal()
                return
            }
            admit()
            if running.isEmpty {
                if let probe, ContinuousClock.now - lastProbe >= .milliseconds(500) {
                    probe()
                    lastProbe = .now
                    continue
                }
                model.pool.idle()
                wake.lock()
                if shared.withLock({ $0.waiting.isEmpty }) && !aborting.load(ordering: .acquiring) {
                    _ = wake.wait(until: Date(timeIntervalSinceNow: 0.5))
                }
                wake.unlock()
                continue
            }
            step()
        }
    }

    /// Moves waiting requests into the batch while places and KV memory last, fairly between
    /// clients (the type's comment gives the policy).
    private func admit() {
        let admitted: [ScheduledSequence] = shared.withLock { state in
            // Most steps admit nothing: no per-client tallies then (this runs every step).
            guard !state.waiting.isEmpty, running.count < options.maxBatch else {
                state.running = running.count
                return []
            }
            var taken: [ScheduledSequence] = []
            var reserved = reservedTokens
            var places: [String: Int] = [:], tokens: [String: Int] = [:]
            for sequence in running {
                places[sequence.request.client, default: 0] += 1
                tokens[sequence.request.client, default: 0] += sequence.reservation
            }
            let now = ContinuousClock.now
            while running.count + taken.count < options.maxBatch {
                // Requests whose client is within its share; of those, the ones that fit now.
                let waiting = state.waiting
                func withinShare(_ i: Int) -> Bool {
                    let next = waiting[i], client = next.request.client
                    return places[client, default: 0] < options.clientPlaces
                        && tokens[client, default: 0] + next.reservation <= options.clientTokens
                }
                let fits = waiting.indices.filter {
                    withinShare($0) && reserved + waiting[$0].reservation <= options.kvCacheTokens
                }
                // A request within its share that has waited long enough is not passed any more.
                let overdue = waiting.indices.first {
                    now - waiting[$0].submitted >= options.headOfLineWait && withinShare($0)
                }
                let eligible = overdue.map { o in fits.filter { $0 <= o } } ?? fits
                guard let pick = eligible.min(by: { places[waiting[$0].request.client, default: 0]
                        < places[waiting[$1].request.client, default: 0] }) else { break }
                let next = state.waiting.remove(at: pick)
                taken.append(next)
                reserved += next.reservation
                places[next.request.client, default: 0] += 1
                tokens[next.request.client, default: 0] += next.reservation
            }
            state.running = running.count + taken.count
            return taken
        }
        guard !admitted.isEmpty else { return }
        for sequence in admitted {
            sequence.cache = KVCache(config: model.config, capacity: sequence.reservation)
            reservedTokens += sequence.reservation
            running.append(sequence)
        }
        publishLoad()
    }

    /// Drops sequences whose clients went away, running or waiting.
    private func dropCancelled() {
        let gone = shared.withLock { state in
            let gone = state.waiting.filter(\.ticket.isCancelled)
            state.waiting.removeAll { $0.ticket.isCancelled }
            return gone
        }
        let stopped = running.filter(\.ticket.isCancelled)
        guard !gone.isEmpty || !stopped.isEmpty else { return }
        for _ in gone + stopped { metrics?.requestFinished(outcome: .cancelled) }
        for sequence in stopped { release(sequence) }
        log.debug("dropped \(gone.count + stopped.count) cancelled sequence(s)")
        publishLoad()
    }

    /// One forward pass over the batch, then a sample for each sequence that read its last
    /// prompt token or decoded.
    private func step() {
        var entries: [(tokens: [Int], cache: KVCache)] = []
        var members: [ScheduledSequence] = []
        var budget = max(options.stepTokens, running.count)
        for sequence in running where sequence.isDecoding {
            entries.append(([sequence.lastToken], sequence.cache!))
            members.append(sequence)
            budget -= 1
        }
        for sequence in running where !sequence.isDecoding && budget > 0 {
            let n = min(budget, sequence.request.prompt.count - sequence.prefilled)
            entries.append((Array(sequence.request.prompt[sequence.prefilled..<sequence.prefilled + n]), sequence.cache!))
            members.append(sequence)
            budget -= n
        }
        let started = ContinuousClock.now
        let logits: UnsafeBufferPointer<Float>
        do {
            logits = try forwardRetryingOnce(entries)
        } catch {
            log.error("step of \(members.count) sequence(s) failed: \(error)")
            for sequence in members {
                sequence.fail("\(error)", metrics)
                release(sequence)
            }
            publishLoad()
            return
        }
        let now = ContinuousClock.now
        metrics?.stepFinished(tokens: entries.reduce(0) { $0 + $1.tokens.count }, seconds: (now - started).seconds)
        let V = model.config.vocabSize
        var ended: [ScheduledSequence] = []
        for (i, sequence) in members.enumerated() {
            if !sequence.isDecoding {
                sequence.prefilled += entries[i].tokens.count
                guard sequence.isDecoding else { continue }  // more prompt to read
            }
            let row = UnsafeBufferPointer(rebasing: logits[(i * V)..<((i + 1) * V)])
            guard Sampler.allFinite(row) else {
                log.error("sequence failed: \(InferenceError.nonFiniteLogits)")
                sequence.fail("\(InferenceError.nonFiniteLogits)", metrics)
                ended.append(sequence)
                continue
            }
            if sequence.advance(row, at: now, metrics) { ended.append(sequence) }
        }
        for sequence in ended { release(sequence) }
        if !ended.isEmpty { publishLoad() }
    }

    /// The step's forward pass; when it fails and every expert still has a live holder (the
    /// failed worker had a replica), once more. A failed pass leaves the caches' lengths as
    /// they were, so the retry rewrites the same positions.
    private func forwardRetryingOnce(_ entries: [(tokens: [Int], cache: KVCache)]) throws -> UnsafeBufferPointer<Float> {
        do {
            return try model.forward(batch: entries)
        } catch {
            guard readiness() else { throw error }
            log.warning("step failed, retrying on the remaining holders: \(error)")
            return try model.forward(batch: entries)
        }
    }

    /// Takes `sequence` out of the batch and frees its cache.
    private func release(_ sequence: ScheduledSequence) {
        running.removeAll { $0 === sequence }
        reservedTokens -= sequence.reservation
        sequence.cache = nil
    }

    private func publishLoad() {
        let queued = shared.withLock { state in
            state.running = running.count
            return state.waiting.count
        }
        metrics?.setRunning(running.count)
        metrics?.setQueueDepth(queued)
        metrics?.setKVCache(usedTokens: reservedTokens, capacityTokens: options.kvCacheTokens,
                            bytesPerToken: bytesPerCachedToken)
    }
}

/// One request's life in the scheduler. Touched by the step thread only, after admission.
private final class ScheduledSequence: @unchecked Sendable {
    let request: GenerationRequest
    let ticket = Ticket()
    let onEvent: @Sendable (GenerationEvent) -> Void
    var cache: KVCache?
    /// Prompt tokens already run.
    var prefilled = 0
    var decoder: SequenceDecoder
    var lastToken = 0
    let submitted = ContinuousClock.now
    var firstToken: ContinuousClock.Instant?
    var previousToken: ContinuousClock.Instant?

    init(request: GenerationRequest, tokenizer: SentencePieceTokenizer, eosId: Int,
         onEvent: @escaping @Sendable (GenerationEvent) -> Void) {
        self.request = request
        self.onEvent = onEvent
        decoder = SequenceDecoder(parameters: request.parameters, tokenizer: tokenizer, eosId: eosId)
    }

    /// KV-cache positions held while running.
    var reservation: Int { request.prompt.count + request.parameters.maxTokens }
    /// True once the whole prompt has been run.
    var isDecoding: Bool { prefilled == request.prompt.count }

    /// Samples the next token; reports it, and the end if this was the last. Returns true at
    /// the end.
    func advance(_ logits: UnsafeBufferPointer<Float>, at now: ContinuousClock.Instant, _ metrics: ServeMetrics?) -> Bool {
        let (id, text) = decoder.next(logits)
        if firstToken == nil {
            firstToken = now
            metrics?.timeToFirstToken(seconds: (now - submitted).seconds)
        } else if let previousToken {
            metrics?.interTokenLatency(seconds: (now - previousToken).seconds)
        }
        previousToken = now
        if let id { lastToken = id }
        if id != nil || !text.isEmpty { onEvent(.delta(ids: id.map { [$0] } ?? [], text: text)) }
        guard let reason = decoder.finishReason else { return false }
        metrics?.promptTokens(request.prompt.count)
        metrics?.completionTokens(decoder.ids.count)
        metrics?.requestFinished(outcome: .completed)
        onEvent(.finished(GenerationSummary(
            finishReason: reason, promptTokens: request.prompt.count, completionTokens: decoder.ids.count,
            text: decoder.text, timeToFirstToken: firstToken.map { $0 - submitted })))
        return true
    }

    func fail(_ message: String, _ metrics: ServeMetrics?) {
        metrics?.requestFinished(outcome: .failed)
        onEvent(.failed(message: message))
    }
}

/// Cancels one sequence: the step thread drops it before its next step.
private final class Ticket: GenerationTicket {
    private let flag = Atomic<Bool>(false)
    var isCancelled: Bool { flag.load(ordering: .acquiring) }
    func cancel() { flag.store(true, ordering: .releasing) }
}
