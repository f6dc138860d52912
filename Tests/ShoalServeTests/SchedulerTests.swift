import Foundation
import ShoalModel
import ShoalServe
import ShoalTestSupport
import Testing

/// The continuous-batching scheduler against the one-sequence generator: a request's tokens
/// and text must not depend on what else runs, how prompts are chunked or when it joins.
@Suite(.serialized) struct SchedulerTests {
    /// Eight requests of different prompts, lengths and samplers: four greedy, four sampled.
    static func requests(_ model: String) throws -> [GenerationRequest] {
        let prompts = try ServeFixtures.prompts(model)
        let variants = prompts + prompts.map { Array($0.prefix(max(1, $0.count / 2))) + [$0.count % 7 + 100] }
        return variants.prefix(8).enumerated().map { i, prompt in
            let sampling = i % 2 == 0
                ? SamplingParameters()
                : SamplingParameters(temperature: 0.9, topK: i * 5, topP: 0.95, seed: UInt64(i))
            return GenerationRequest(
                prompt: prompt, parameters: GenerationParameters(maxTokens: 8 + 3 * i, sampling: sampling, ignoreEOS: true))
        }
    }

    /// Starts `scheduler`, submits every request at once, waits for all to end (60 s at most)
    /// and stops it.
    static func runAll(_ requests: [GenerationRequest], on scheduler: Scheduler) throws -> [EventLog] {
        scheduler.start()
        defer { scheduler.shutdown(grace: .zero) }
        let runs = try requests.map { request in
            let run = EventLog()
            _ = try scheduler.submit(request, onEvent: run.add)
            return run
        }
        for run in runs { _ = run.summary(within: 60) }
        return runs
    }

    // The engine's compute and the scheduler's waits run in `offPool`: they must not hold
    // Swift concurrency's few pool threads, which other suites' RPCs need meanwhile.

    @Test(arguments: ["tiny-f32", "tiny-bf16"])
    func batchedEqualsAlone(model: String) async throws {
        let folder = try FixtureFolder.path("models/\(model)/hf")
        let requests = try Self.requests(model)
        let (alone, runs) = try await offPool {
            let engine = try Engine(folder: folder, threads: 2)
            let alone = try requests.map { try engine.generator.generate(prompt: $0.prompt, parameters: $0.parameters) }
            // Small steps: prompts are read in chunks of a few tokens while others decode.
            var options = Scheduler.Options()
            options.stepTokens = 6
            let scheduler = Scheduler(engine: engine, options: options)
            let runs = try Self.runAll(requests, on: scheduler)
            return (alone, runs)
        }
        for (i, run) in runs.enumerated() {
            let summary = try #require(run.summary(within: 0), "request \(i) did not finish")
            #expect(run.ids == alone[i].ids, "request \(i)")
            #expect(run.text == alone[i].text && summary.text == alone[i].text, "request \(i)")
            #expect(summary.finishReason == alone[i].finishReason)
            #expect(summary.promptTokens == requests[i].prompt.count && summary.completionTokens == alone[i].ids.count)
        }
    }

    /// Two places, a KV budget for about two sequences: the rest wait, then run, unchanged.
    /// A sequence that samples EOS mid-batch ends there (finish reason eos, the EOS piece not
    /// in its text) and the others go on as they would alone. Random weights almost never
    /// sample EOS, so a `logit_bias` on it is searched for with the one-sequence generator
    /// (the reference) until a prompt ends by EOS after at least two tokens.
    @Test func eosEndsOneSequenceOfTheBatch() async throws {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let (requests, alone, runs) = try await offPool {
            let engine = try Engine(folder: folder, threads: 2)
            let eos = engine.model.config.eosId
            var ending: GenerationRequest?
            search: for prompt in try ServeFixtures.prompts("tiny-f32") {
                for bias in stride(from: Float(0), through: 40, by: 0.25) {
                    let request = GenerationRequest(prompt: prompt, parameters: GenerationParameters(
                        maxTokens: 24, sampling: SamplingParameters(logitBias: [eos: bias])))
                    let result = try engine.generator.generate(prompt: request.prompt, parameters: request.parameters)
                    guard result.finishReason == .eos else { continue }
                    if result.ids.count >= 2 { ending = request; break search }
                    continue search  // EOS won at the first token already: try another prompt
                }
            }
            let requests = [try #require(ending, "no prompt ends by EOS after two tokens at any bias")]
                + (try Self.requests("tiny-f32")).prefix(3)
            let alone = try requests.map { try engine.generator.generate(prompt: $0.prompt, parameters: $0.parameters) }
            var options = Scheduler.Options()
            options.stepTokens = 6
            return (requests, alone, try Self.runAll(requests, on: Scheduler(engine: engine, options: options)))
        }
        #expect(alone[0].finishReason == .eos && alone[0].ids.count >= 2)
        for (i, run) in runs.enumerated() {
            let summary = try #require(run.summary(within: 0), "request \(i) did not finish")
            #expect(run.ids == alone[i].ids && run.text == alone[i].text, "request \(i)")
            #expect(summary.finishReason == alone[i].finishReason, "request \(i)")
            #expect(summary.completionTokens == alone[i].ids.count && summary.promptTokens == requests[i].prompt.count)
        }
    }

    @Test func waitingRequestsRunUnchanged() async throws {
        let folder = try FixtureFolder.path("models/tiny-bf16/hf")
        let requests = try Self.requests("tiny-bf16")
        let (alone, runs, metricsText) = try await offPool {
            let engine = try Engine(folder: folder, threads: 1)
            let alone = try requests.map { try engine.generator.generate(prompt: $0.prompt, parameters: $0.parameters) }
            var options = Scheduler.Options()
            options.maxBatch = 2
            options.kvCacheTokens = requests.map { $0.prompt.count + $0.parameters.maxTokens }.max()! + 40
            let metrics = ServeMetrics(layers: engine.model.config.layers, experts: engine.model.config.experts, workers: [])
            let scheduler = Scheduler(engine: engine, options: options, metrics: metrics)
            let runs = try Self.runAll(requests, on: scheduler)
            return (alone, runs, metrics.render())
        }
        for (i, run) in runs.enumerated() {
            _ = try #require(run.summary(within: 0), "request \(i) did not finish")
            #expect(run.ids == alone[i].ids, "request \(i)")
        }
        #expect(metricsText.contains("shoal_requests_total{outcome=\"completed\"} 8"))
        #expect(metricsText.contains("shoal_kv_cache_tokens_used 0"))
    }

    @Test func refusesWhatCannotRun() throws {
        let engine = try Engine(folder: try FixtureFolder.path("models/tiny-f32/hf"), threads: 1)
        var options = Scheduler.Options()
        options.maxQueue = 1
        options.kvCacheTokens = 100
        let metrics = ServeMetrics(layers: engine.model.config.layers, experts: engine.model.config.experts, workers: [])
        let scheduler = Scheduler(engine: engine, options: options, metrics: metrics)  // not started: the queue stays
        func submit(_ prompt: [Int], _ maxTokens: Int) throws(SubmitError) {
            _ = try scheduler.submit(
                GenerationRequest(prompt: prompt, parameters: GenerationParameters(maxTokens: maxTokens)), onEvent: { _ in })
        }
        #expect(throws: SubmitError.invalidPrompt("the prompt is empty")) { try submit([], 4) }
        #expect(throws: SubmitError.invalidPrompt("token id 32000 is outside the vocabulary (0..<32000)")) {
            try submit([1, 32000], 4)
        }
        #expect(throws: SubmitError.invalidPrompt("max_tokens must be at least 1")) { try submit([1], 0) }
        #expect(throws: SubmitError.contextOverflow(needed: 32769, limit: 32768)) { try submit([1], 32768) }
        #expect(throws: SubmitError.exceedsCacheCapacity(neededTokens: 101, capacityTokens: 100)) { try submit([1], 100) }
        try submit([1], 4)
        #expect(throws: SubmitError.queueFull(limit: 1)) { try submit([1], 4) }
        scheduler.shutdown(grace: .zero)
        #expect(throws: SubmitError.shuttingDown) { try submit([1], 4) }
        #expect(metrics.render().contains("shoal_requests_total{outcome=\"rejected\"} 7"))
        #expect(scheduler.defaultMaxTokens(promptTokens: 10) == 90)  // within the KV budget
    }

    /// A cancelled sequence leaves the batch; the others finish as if it had never run.
    @Test func cancelLeavesOthersIntact() async throws {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let requests = try Self.requests("tiny-f32")
        let outcome = try await offPool {
            let engine = try Engine(folder: folder, threads: 1)
            let alone = try engine.generator.generate(prompt: requests[2].prompt, parameters: requests[2].parameters)
            let metrics = ServeMetrics(layers: engine.model.config.layers, experts: engine.model.config.experts, workers: [])
            var options = Scheduler.Options()
            options.maxRequestTokens = 8192
            let scheduler = Scheduler(engine: engine, options: options, metrics: metrics)
            scheduler.start()
            defer { scheduler.shutdown(grace: .zero) }
            let long = EventLog()
            let ticket = try scheduler.submit(
                GenerationRequest(prompt: requests[0].prompt, parameters: GenerationParameters(maxTokens: 5000, ignoreEOS: true)),
                onEvent: long.add)
            let started = long.waitForTokens(3, within: 30)
            let other = EventLog()
            _ = try scheduler.submit(requests[2], onEvent: other.add)
            ticket.cancel()
            let finished = other.summary(within: 60) != nil
            let deadline = Date(timeIntervalSinceNow: 10)
            while scheduler.load != (0, 0), Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            let idle = scheduler.load == (0, 0)
            return (started, finished, other.ids == alone.ids, idle, long.summary(within: 0) == nil && long.ids.count < 5000,
                    metrics.render().contains("shoal_requests_total{outcome=\"cancelled\"} 1"))
        }
        #expect(outcome.0, "the long request started")
        #expect(outcome.1 && outcome.2, "the other request finished with its tokens alone")
        #expect(outcome.3 && outcome.4 && outcome.5, "the cancelled one left: idle \(outcome.3)")
    }
}

/// Everything one sequence reported, safe to fill from the scheduler's thread.
final class EventLog: @unchecked Sendable {
    private let condition = NSCondition()
    private var events: [GenerationEvent] = []

    @Sendable func add(_ event: GenerationEvent) {
        condition.lock()
        events.append(event)
        condition.broadcast()
        condition.unlock()
    }

    var ids: [Int] {
        locked {
            events.flatMap { event -> [Int] in
                if case let .delta(ids, _) = event { return ids }
                return []
            }
        }
    }

    var text: String {
        locked {
            events.map { event -> String in
                if case let .delta(_, text) = event { return text }
                return ""
            }.joined()
        }
    }

    /// The message of a `failed` event, if one arrived.
    var failure: String? {
        locked {
            events.lazy.compactMap { event -> String? in
                if case let .failed(message) = event { return message }
                return nil
            }.first
        }
    }

    /// The summary once finished, nil on failure or after `seconds`.
    func summary(within seconds: Double) -> GenerationSummary? {
        let deadline = Date(timeIntervalSinceNow: seconds)
        condition.lock()
        defer { condition.unlock() }
        while true {
            for event in events {
                if case let .finished(summary) = event { return summary }
                if case .failed = event { return nil }
            }
            guard condition.wait(until: deadline) else { return nil }
        }
    }

    /// Waits for `count` tokens; false after `seconds`.
    func waitForTokens(_ count: Int, within seconds: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while ids.count < count {
            condition.lock()
            let woke = condition.wait(until: deadline)
            condition.unlock()
            if !woke { return ids.count >= count }
        }
        return true
    }

    private func locked<T>(_ body: () -> T) -> T {
        condition.lock()
        defer { condition.unlock() }
        return body()
    }
}

/// What the serve tests read from the fixtures.
enum ServeFixtures {
    /// The prompts' token ids from a model's expected.json.
    static func prompts(_ model: String) throws -> [[Int]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: try FixtureFolder.path("models/\(model)/expected.json")))
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (json["prompts"] as! [[String: Any]]).map { $0["input_ids"] as! [Int] }
    }
}
