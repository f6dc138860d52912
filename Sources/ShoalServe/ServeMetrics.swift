import Prometheus
import Synchronization

/// The coordinator's Prometheus metrics: requests, tokens, queue and KV cache, latencies,
/// expert routing and worker calls, rendered in the text exposition format for `/metrics`.
///
/// Every series the hot paths touch is created up front, so a call is an atomic add or a
/// short lock in a histogram, never a registry lookup. All methods are safe from any thread.
public final class ServeMetrics: Sendable {
    /// How a request ended, the `outcome` label of `shoal_requests_total`.
    public enum Outcome: String, CaseIterable, Sendable {
        /// Finished normally (eos, stop string or length).
        case completed
        /// The client went away or cancelled.
        case cancelled
        /// Admitted, then ended by an error (a worker failed, the server stopped).
        case failed
        /// Refused at submission (bad prompt, context overflow, full queue, shutting down).
        case rejected
    }

    /// The registry holding every series; other metrics may be added to it.
    public let registry: PrometheusCollectorRegistry

    private let requests: [Counter]  // indexed like Outcome.allCases
    private let promptTokenCount: Counter
    private let completionTokenCount: Counter
    private let queueDepth: Gauge
    private let running: Gauge
    private let kvUsedTokens: Gauge
    private let kvCapacityTokens: Gauge
    private let kvUsedBytes: Gauge
    private let firstToken: ValueHistogram
    private let interToken: ValueHistogram
    private let stepSeconds: ValueHistogram
    private let stepTokens: Counter
    private let fanOutSeconds: ValueHistogram
    private let expertTokens: [[Counter]]  // [layer][expert]
    /// The same counts, readable (the placement's heat).
    private let expertTokenCounts: Mutex<[[Double]]>
    private let knownWorkers: [String: WorkerSeries]
    private let otherWorkers = Mutex<[String: WorkerSeries]>([:])

    /// Buckets of `shoal_time_to_first_token_seconds`: 5 ms to 60 s.
    public static let timeToFirstTokenBuckets: [Double] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    ]
    /// Buckets of `shoal_inter_token_latency_seconds`, `shoal_step_seconds` and
    /// `shoal_worker_call_seconds`: 1 ms to 10 s.
    public static let latencyBuckets: [Double] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]

    /// Metrics for a model of `layers` × `experts` experts served by `workers` (their
    /// addresses, the `worker` label); calls from other workers get their series on first use.
    public init(layers: Int, experts: Int, workers: [String]) {
        precondition(layers >= 0 && experts >= 0, "negative model shape")
        let r = PrometheusCollectorRegistry()
        registry = r
        requests = Outcome.allCases.map {
            r.makeCounter(
                descriptor: Self.name("shoal_requests_total", "Requests by how they ended."),
                labels: [("outcome", $0.rawValue)])
        }
        promptTokenCount = r.makeCounter(descriptor: Self.name(
            "shoal_prompt_tokens_total", "Prompt tokens of admitted requests."))
        completionTokenCount = r.makeCounter(descriptor: Self.name(
            "shoal_completion_tokens_total", "Tokens sampled."))
        queueDepth = r.makeGauge(descriptor: Self.name("shoal_queue_depth", "Requests waiting for a batch slot."))
        running = r.makeGauge(descriptor: Self.name("shoal_running_sequences", "Sequences in the batch."))
        kvUsedTokens = r.makeGauge(descriptor: Self.name(
            "shoal_kv_cache_tokens_used", "KV-cache token slots held by sequences."))
        kvCapacityTokens = r.makeGauge(descriptor: Self.name(
            "shoal_kv_cache_tokens_capacity", "KV-cache token slots in all."))
        kvUsedBytes = r.makeGauge(descriptor: Self.name(
            "shoal_kv_cache_bytes_used", "Bytes of KV cache held by sequences."))
        firstToken = r.makeValueHistogram(
            descriptor: Self.name("shoal_time_to_first_token_seconds", "From submission to the first sampled token."),
            labels: [], buckets: Self.timeToFirstTokenBuckets)
        interToken = r.makeValueHistogram(
            descriptor: Self.name("shoal_inter_token_latency_seconds", "Between two sampled tokens of a sequence."),
            labels: [], buckets: Self.latencyBuckets)
        stepSeconds = r.makeValueHistogram(
            descriptor: Self.name("shoal_step_seconds", "One scheduler step: a forward pass over the batch."),
            labels: [], buckets: Self.latencyBuckets)
        stepTokens = r.makeCounter(descriptor: Self.name(
            "shoal_step_tokens_total", "Tokens run through the model by scheduler steps (prefill and decode)."))
        fanOutSeconds = r.makeValueHistogram(
            descriptor: Self.name(
                "shoal_fanout_seconds", "One layer's expert calls to every worker it needs, from the first send to the last answer."),
            labels: [], buckets: Self.latencyBuckets)
        expertTokenCounts = Mutex(Array(repeating: Array(repeating: 0, count: experts), count: layers))
        expertTokens = (0..<layers).map { layer in
            (0..<experts).map { expert in
                r.makeCounter(
                    descriptor: Self.name("shoal_expert_tokens_total", "Tokens routed to each expert of each layer."),
                    labels: [("layer", String(layer)), ("expert", String(expert))])
            }
        }
        knownWorkers = Dictionary(workers.map { ($0, WorkerSeries(worker: $0, registry: r)) }) { first, _ in first }
    }

    /// Counts one request that ended with `outcome`.
    public func requestFinished(outcome: Outcome) {
        requests[outcomeIndex(outcome)].increment()
    }

    /// Counts the prompt tokens of an admitted request.
    public func promptTokens(_ count: Int) {
        promptTokenCount.increment(by: Int64(count))
    }

    /// Counts sampled tokens.
    public func completionTokens(_ count: Int) {
        completionTokenCount.increment(by: Int64(count))
    }

    /// Sets the number of requests waiting for a batch slot.
    public func setQueueDepth(_ count: Int) {
        queueDepth.set(Int64(count))
    }

    /// Sets the number of sequences in the batch.
    public func setRunning(_ count: Int) {
        running.set(Int64(count))
    }

    /// Sets the KV-cache occupancy: token slots held and in all, and bytes held.
    public func setKVCache(usedTokens: Int, capacityTokens: Int, bytesPerToken: Int) {
        kvUsedTokens.set(Int64(usedTokens))
        kvCapacityTokens.set(Int64(capacityTokens))
        kvUsedBytes.set(Int64(usedTokens) * Int64(bytesPerToken))
    }

    /// Records one sequence's time from submission to its first sampled token.
    public func timeToFirstToken(seconds: Double) {
        firstToken.record(seconds)
    }

    /// Records the time between two consecutive tokens of one sequence.
    public func interTokenLatency(seconds: Double) {
        interToken.record(seconds)
    }

    /// Records one scheduler step that ran `tokens` tokens through the model.
    public func stepFinished(tokens: Int, seconds: Double) {
        stepSeconds.record(seconds)
        stepTokens.increment(by: Int64(tokens))
    }

    /// Records one layer's fan-out to the workers (a cluster coordinator's MoE step).
    public func fanOut(seconds: Double) {
        fanOutSeconds.record(seconds)
    }

    /// Counts `tokens` routed to `expert` of `layer`; both must be inside the model's shape.
    public func routed(layer: Int, expert: Int, tokens: Int) {
        expertTokens[layer][expert].increment(by: Int64(tokens))
        expertTokenCounts.withLock { $0[layer][expert] += Double(tokens) }
    }

    /// Tokens routed to each expert so far, [layer][expert]: which experts are hot, for the
    /// placement of replicas.
    public func expertHeat() -> [[Double]] { expertTokenCounts.withLock { $0 } }

    /// Records one call to `worker`: its duration, whether it failed, and its message bytes.
    public func workerCall(worker: String, seconds: Double, failed: Bool, sentBytes: Int, receivedBytes: Int) {
        let series = knownWorkers[worker] ?? otherWorkers.withLock { others in
            if let existing = others[worker] { return existing }
            let created = WorkerSeries(worker: worker, registry: registry)
            others[worker] = created
            return created
        }
        series.seconds.record(seconds)
        if failed { series.errors.increment() }
        series.sentBytes.increment(by: Int64(sentBytes))
        series.receivedBytes.increment(by: Int64(receivedBytes))
    }

    /// Every series in the Prometheus text exposition format (version 0.0.4).
    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }

    private func outcomeIndex(_ outcome: Outcome) -> Int {
        switch outcome {
        case .completed: 0
        case .cancelled: 1
        case .failed: 2
        case .rejected: 3
        }
    }

    /// A full metric name with its help text (the registry then adds no unit suffix).
    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}

/// The series of one worker, labelled `worker`.
private struct WorkerSeries: Sendable {
    let seconds: ValueHistogram
    let errors: Counter
    let sentBytes: Counter
    let receivedBytes: Counter

    init(worker: String, registry r: PrometheusCollectorRegistry) {
        let label = [("worker", worker)]
        seconds = r.makeValueHistogram(
            descriptor: MetricNameDescriptor(
                metricName: "shoal_worker_call_seconds", unitName: "",
                helpText: "One Compute call to a worker, from send to response."),
            labels: label, buckets: ServeMetrics.latencyBuckets)
        errors = r.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "shoal_worker_call_errors_total", unitName: "",
                helpText: "Calls to a worker that failed."),
            labels: label)
        sentBytes = r.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "shoal_wire_bytes_sent_total", unitName: "",
                helpText: "Request message bytes sent to a worker."),
            labels: label)
        receivedBytes = r.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "shoal_wire_bytes_received_total", unitName: "",
                helpText: "Response message bytes received from a worker."),
            labels: label)
    }
}
