import Foundation
import ShoalModel
import ShoalServe
import ShoalTestSupport
import Synchronization
import Testing

/// The scheduler's admission policy (its type comment): per-request limits, a small request
/// not held behind one that does not fit yet (until that one has waited long enough), and one
/// client never holding every place.
@Suite(.serialized, .timeLimit(.minutes(2))) struct AdmissionTests {
    /// The order in which requests reported their first token and their end.
    final class Timeline: Sendable {
        private let entries = Mutex<[String]>([])
        var all: [String] { entries.withLock { $0 } }

        /// An event handler for request `name`.
        func handler(_ name: String) -> @Sendable (GenerationEvent) -> Void {
            let started = Atomic<Bool>(false)
            return { [self] event in
                switch event {
                case .delta(let ids, _) where !ids.isEmpty:
                    if !started.exchange(true, ordering: .relaxed) { entries.withLock { $0.append("first:\(name)") } }
                case .finished, .failed:
                    entries.withLock { $0.append("end:\(name)") }
                default:
                    break
                }
            }
        }

        func index(_ entry: String) -> Int { all.firstIndex(of: entry) ?? Int.max }

        /// Waits up to `seconds` for `entry`.
        func wait(for entry: String, seconds: Double = 60) -> Bool {
            let deadline = Date(timeIntervalSinceNow: seconds)
            while !all.contains(entry), Date() < deadline { usleep(2_000) }
            return all.contains(entry)
        }
    }

    static func request(_ client: String, reserve: Int) -> GenerationRequest {
        GenerationRequest(prompt: [1, 415, 1984, 302],
                          parameters: GenerationParameters(maxTokens: reserve - 4, ignoreEOS: true), client: client)
    }

    /// Runs `body` with a started scheduler over the tiny model.
    static func withScheduler<T: Sendable>(_ options: Scheduler.Options,
                                           _ body: @escaping @Sendable (Scheduler) throws -> T) async throws -> T {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        return try await offPool {
            let scheduler = Scheduler(engine: try Engine(folder: folder, threads: 1), options: options)
            scheduler.start()
            defer { scheduler.shutdown(grace: .zero) }
            return try body(scheduler)
        }
    }

    @Test func aRequestPastThePerRequestLimitIsRefused() throws {
        let engine = try Engine(folder: try FixtureFolder.path("models/tiny-f32/hf"), threads: 1)
        var options = Scheduler.Options()
        options.kvCacheTokens = 1000
        options.maxRequestTokens = 100
        let scheduler = Scheduler(engine: engine, options: options)
        #expect(throws: SubmitError.exceedsRequestLimit(neededTokens: 101, limitTokens: 100)) {
            _ = try scheduler.submit(Self.request("a", reserve: 101), onEvent: { _ in })
        }
        #expect(scheduler.defaultMaxTokens(promptTokens: 10) == 90)
        scheduler.shutdown(grace: .zero)
    }

    /// R1 (client a) takes 150 of a 200-token cache; then R2 (b, 100 tokens: does not fit
    /// beside it) and R3 (c, 30: fits) arrive. Returns once R2 and R3 have ended.
    static func largeThenTwo(headOfLineWait: Duration) async throws -> Timeline {
        var options = Scheduler.Options()
        options.kvCacheTokens = 200
        options.maxRequestTokens = 200
        options.clientShare = 1
        options.headOfLineWait = headOfLineWait
        return try await withScheduler(options) { scheduler in
            let timeline = Timeline()
            _ = try scheduler.submit(request("a", reserve: 150), onEvent: timeline.handler("R1"))
            #expect(timeline.wait(for: "first:R1"))
            _ = try scheduler.submit(request("b", reserve: 100), onEvent: timeline.handler("R2"))
            _ = try scheduler.submit(request("c", reserve: 30), onEvent: timeline.handler("R3"))
            #expect(timeline.wait(for: "end:R2") && timeline.wait(for: "end:R3"))
            return timeline
        }
    }

    /// R3 fits beside R1 and runs at once, passing R2.
    @Test func aSmallRequestPassesOneThatDoesNotFitYet() async throws {
        let timeline = try await Self.largeThenTwo(headOfLineWait: .seconds(5))
        #expect(timeline.index("end:R3") < timeline.index("end:R1"), "\(timeline.all)")
        #expect(timeline.index("first:R2") > timeline.index("end:R1"), "\(timeline.all)")
    }

    /// The same with no patience left: the waiting large request is not passed.
    @Test func anOverdueRequestIsNotPassed() async throws {
        let timeline = try await Self.largeThenTwo(headOfLineWait: .zero)
        #expect(timeline.index("first:R3") > timeline.index("end:R1"), "\(timeline.all)")
        #expect(timeline.index("first:R2") < timeline.index("first:R3"), "\(timeline.all)")
    }

    /// Client a asks for every place; b, arriving later, still gets one at once.
    @Test func oneClientCannotTakeEveryPlace() async throws {
        var options = Scheduler.Options()
        options.maxBatch = 4
        options.clientShare = 0.5
        let timeline = try await Self.withScheduler(options) { scheduler in
            let timeline = Timeline()
            for i in 1...4 {
                _ = try scheduler.submit(Self.request("a", reserve: 120), onEvent: timeline.handler("a\(i)"))
            }
            #expect(timeline.wait(for: "first:a1"))
            _ = try scheduler.submit(Self.request("b", reserve: 20), onEvent: timeline.handler("b"))
            #expect(timeline.wait(for: "end:a4"))
            return timeline
        }
        // a holds two places (half of four) until one ends; b gets one before a's third starts.
        #expect(timeline.index("first:a3") > min(timeline.index("end:a1"), timeline.index("end:a2")), "\(timeline.all)")
        #expect(timeline.index("first:b") < timeline.index("first:a3"), "\(timeline.all)")
    }
}
