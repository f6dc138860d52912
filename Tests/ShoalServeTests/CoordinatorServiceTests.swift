import Dispatch
@testable import ShoalClient
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
@testable import ShoalServe
import ShoalTestSupport
import ShoalTokenizer
import Synchronization
import Testing

/// A scheduler stand-in: records what it is given and answers as a test scripts it, from
/// another thread as the real one does.
final class FakeGenerationService: GenerationService {
    /// What `submit` does.
    enum Script: Sendable {
        /// Sends these events, then nothing.
        case events([GenerationEvent])
        /// Refuses the request.
        case reject(SubmitError)
    }

    let tokenizer: SentencePieceTokenizer
    let contextLimit = 64
    let isReady = true
    private let script: Script
    private let state = Mutex<(requests: [GenerationRequest], cancelled: Int)>(([], 0))

    init(_ script: Script) throws {
        tokenizer = try SentencePieceTokenizer(contentsOf: try FixtureFolder.path("tokenizer/tokenizer.model.v1"))
        self.script = script
    }

    var requests: [GenerationRequest] { state.withLock { $0.requests } }
    var cancelled: Int { state.withLock { $0.cancelled } }

    func submit(
        _ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void
    ) throws(SubmitError) -> any GenerationTicket {
        if case let .reject(error) = script { throw error }
        state.withLock { $0.requests.append(request) }
        if case let .events(events) = script {
            DispatchQueue.global().async { events.forEach(onEvent) }
        }
        return Ticket(service: self)
    }

    private struct Ticket: GenerationTicket {
        let service: FakeGenerationService
        func cancel() { service.state.withLock { $0.cancelled += 1 } }
    }
}

/// Runs `body` with a client of a CoordinatorService over `service` on loopback.
private func withCoordinator<T>(
    _ service: FakeGenerationService, _ body: (CoordinatorClient, RPCChannel) async throws -> T
) async throws -> T {
    let api = CoordinatorService(service: service, modelName: "tiny") { (running: 2, queued: 3) }
    return try await RPCServer.withServer(unary: api.unaryHandlers, serverStreaming: api.streamingHandlers) { server in
        let client = CoordinatorClient(target: "127.0.0.1:\(server.port)")
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        defer {
            client.close()
            channel.close()
        }
        return try await body(client, channel)
    }
}

/// The status `body` fails with, or nil when it succeeds.
private func endStatus(_ body: () async throws -> Void) async -> RPCStatus? {
    do {
        try await body()
        return nil
    } catch let status as RPCStatus {
        return status
    } catch {
        Issue.record("expected an RPCStatus, got \(error)")
        return nil
    }
}

/// Sends a raw GenerateRequest and reads the whole stream.
private func generateRaw(_ channel: RPCChannel, _ request: Shoal_V1_GenerateRequest) async throws {
    for try await _ in channel.serverStreaming(
        CoordinatorMethod.generate, request: try RPCPayload(message: request), timeout: .seconds(10)) {}
}

private let eosSummary = GenerationSummary(
    finishReason: .eos, promptTokens: 6, completionTokens: 3, text: "Hi there", timeToFirstToken: .milliseconds(250))

@Suite(.timeLimit(.minutes(1)))
struct CoordinatorServiceTests {
    @Test func streamsDeltasThenDone() async throws {
        let service = try FakeGenerationService(.events([
            .delta(ids: [1, 2], text: "Hi"), .delta(ids: [], text: ""), .delta(ids: [3], text: " there"),
            .finished(eosSummary),
        ]))
        let options = CoordinatorGenerateOptions(temperature: 0.5, topK: 7, topP: 0, seed: 42, stop: ["\n"])
        let events = try await withCoordinator(service) { client, _ in
            var events: [CoordinatorEvent] = []
            for try await event in client.generate(.text("Hello"), options: options, timeout: .seconds(10)) {
                events.append(event)
            }
            return events
        }
        let done = CoordinatorDone(
            finishReason: .eos, promptTokens: 6, completionTokens: 3, timeToFirstToken: .milliseconds(250))
        #expect(events == [.delta(ids: [1, 2], text: "Hi"), .delta(ids: [3], text: " there"), .done(done)])

        let request = try #require(service.requests.first)
        let prompt = service.tokenizer.encode("Hello", bos: true)
        #expect(request.prompt == prompt)
        #expect(request.parameters.maxTokens == service.contextLimit - prompt.count)
        #expect(request.parameters.sampling == SamplingParameters(temperature: 0.5, topK: 7, topP: 1, seed: 42))
        #expect(request.parameters.stop == ["\n"])
        #expect(!request.parameters.ignoreEOS)
        #expect(service.cancelled == 0)
    }

    @Test func chatAndIDsPrompts() async throws {
        let service = try FakeGenerationService(.events([.finished(eosSummary)]))
        let chat = [ChatMessage(role: .system, content: "Be brief."), ChatMessage(role: .user, content: "Hello")]
        let completion = try await withCoordinator(service) { client, _ in
            _ = try await client.complete(.chat(chat), options: CoordinatorGenerateOptions(maxTokens: 5))
            return try await client.complete(.ids([1, 22557]), options: CoordinatorGenerateOptions(ignoreEOS: true))
        }
        #expect(completion.ids.isEmpty && completion.done.finishReason == .eos)
        let requests = service.requests
        try #require(requests.count == 2)
        #expect(requests[0].prompt == (try service.tokenizer.encodeChat(chat)))
        #expect(requests[0].parameters.maxTokens == 5)
        #expect(requests[1].prompt == [1, 22557])
        #expect(requests[1].parameters.ignoreEOS)
    }

    @Test func tokenizeAndHealth() async throws {
        let service = try FakeGenerationService(.events([]))
        let chat = [ChatMessage(role: .user, content: "Hello")]
        try await withCoordinator(service) { client, _ in
            #expect(try await client.tokenize("Hello", bos: true) == service.tokenizer.encode("Hello", bos: true))
            #expect(try await client.tokenize("Hello", bos: false) == service.tokenizer.encode("Hello"))
            #expect(try await client.tokenize(chat: chat) == (try service.tokenizer.encodeChat(chat)))
            let health = try await client.health()
            #expect(health == CoordinatorHealth(ready: true, model: "tiny", contextLimit: 64, running: 2, queued: 3))
        }
    }

    @Test func invalidArgumentsNameTheField() async throws {
        let service = try FakeGenerationService(.events([.finished(eosSummary)]))
        var cases: [(Shoal_V1_GenerateRequest, String)] = []
        func with(_ change: (inout Shoal_V1_GenerateRequest) -> Void, _ field: String) {
            var request = Shoal_V1_GenerateRequest()
            request.text = "Hello"
            change(&request)
            cases.append((request, field))
        }
        with({ $0.prompt = nil }, "prompt:")
        with({ $0.temperature = -1 }, "temperature:")
        with({ $0.temperature = .nan }, "temperature:")
        with({ $0.topP = 1.5 }, "top_p:")
        with({ $0.ids = Shoal_V1_TokenIds() }, "ids:")
        with({ $0.ids.ids = [1, 32000] }, "ids[1]:")
        with({ $0.stop = ["ok", ""] }, "stop[1]:")
        with({ $0.stop = Array(repeating: "x", count: 17) }, "stop:")
        with({ $0.chat.turns = [chatTurn("robot", "hi")] }, "chat.turns[0].role:")
        with({ $0.chat.turns = [chatTurn("user", "hi"), chatTurn("assistant", "hello")] }, "chat: the last message")
        try await withCoordinator(service) { _, channel in
            for (request, field) in cases {
                let ended = await endStatus { try await generateRaw(channel, request) }
                #expect(ended?.code == .invalidArgument, "\(field)")
                #expect(ended?.message.hasPrefix(field) == true, "\(String(describing: ended)) for \(field)")
            }
            let garbage = await endStatus {
                for try await _ in channel.serverStreaming(
                    CoordinatorMethod.generate, request: RPCPayload([0xFF, 0xFF, 0xFF]), timeout: .seconds(10)) {}
            }
            #expect(garbage?.code == .invalidArgument)
            #expect(garbage?.message.hasPrefix("malformed shoal.v1.GenerateRequest") == true)

            var tokenize = Shoal_V1_TokenizeRequest()
            tokenize.chat.turns = [chatTurn("user", "hi")]
            tokenize.bos = true
            let bos = await endStatus {
                _ = try await channel.unary(
                    CoordinatorMethod.tokenize, request: try RPCPayload(message: tokenize), timeout: .seconds(10))
            }
            #expect(bos?.code == .invalidArgument && bos?.message.hasPrefix("bos:") == true)
        }
        #expect(service.requests.isEmpty)
    }

    @Test func refusedSubmissionsMapToStatuses() async throws {
        let refusals: [(SubmitError, RPCStatusCode)] = [
            (.queueFull(limit: 4), .resourceExhausted),
            (.shuttingDown, .unavailable),
            (.contextOverflow(needed: 80, limit: 64), .invalidArgument),
            (.invalidPrompt("empty prompt"), .invalidArgument),
        ]
        for (refusal, code) in refusals {
            let service = try FakeGenerationService(.reject(refusal))
            let ended = try await withCoordinator(service) { client, _ in
                await endStatus { _ = try await client.complete(.text("Hello"), options: CoordinatorGenerateOptions()) }
            }
            #expect(ended == RPCStatus(code: code, message: refusal.description))
        }
    }

    @Test func failedSequenceEndsTheCall() async throws {
        let service = try FakeGenerationService(.events([
            .delta(ids: [5], text: "A"), .failed(message: "layer 3 expert 1: no live holder"),
        ]))
        let (events, ended) = try await withCoordinator(service) { client, _ in
            var events: [CoordinatorEvent] = []
            let ended = await endStatus {
                for try await event in client.generate(.text("Hello"), options: CoordinatorGenerateOptions()) {
                    events.append(event)
                }
            }
            return (events, ended)
        }
        #expect(events == [.delta(ids: [5], text: "A")])
        #expect(ended == RPCStatus(code: .unavailable, message: "layer 3 expert 1: no live holder"))
        #expect(service.cancelled == 0)
    }

    @Test func clientCancelCancelsTheTicket() async throws {
        let service = try FakeGenerationService(.events([.delta(ids: [5], text: "A")]))
        try await withCoordinator(service) { client, _ in
            for try await event in client.generate(.text("Hello"), options: CoordinatorGenerateOptions()) {
                #expect(event == .delta(ids: [5], text: "A"))
                break  // drops the stream: the call is cancelled
            }
            #expect(await soon { service.cancelled == 1 })
        }
    }

    @Test func deadlineCancelsTheTicket() async throws {
        let service = try FakeGenerationService(.events([]))
        try await withCoordinator(service) { client, _ in
            let ended = await endStatus {
                _ = try await client.complete(
                    .text("Hello"), options: CoordinatorGenerateOptions(), timeout: .milliseconds(500))
            }
            #expect(ended?.code == .deadlineExceeded)
            #expect(service.requests.count == 1)
            #expect(await soon { service.cancelled == 1 })
        }
    }
}

private func chatTurn(_ role: String, _ content: String) -> Shoal_V1_ChatTurn {
    var turn = Shoal_V1_ChatTurn()
    turn.role = role
    turn.content = content
    return turn
}

/// Polls `condition` for up to five seconds.
private func soon(_ condition: () -> Bool) async -> Bool {
    let end = ContinuousClock.now + .seconds(5)
    while !condition(), ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(5)) }
    return condition()
}

