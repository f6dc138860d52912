import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTensor
import ShoalTokenizer
import SwiftProtobuf

/// The coordinator's gRPC prompt API over a `GenerationService`: handlers to pass to
/// `RPCServer.start(listen:unary:serverStreaming:)`.
///
/// Every request field is validated before anything is submitted; a bad one ends the call
/// with `.invalidArgument` and a message naming the field. A Generate call whose client
/// cancels, or whose deadline passes, cancels its sequence in the scheduler.
public struct CoordinatorService: Sendable {
    /// Most stop strings one request may carry.
    public static let maxStopStrings = 16
    /// Longest stop string, in UTF-8 bytes.
    public static let maxStopBytes = ShoalServe.maxStopBytes

    private let service: any GenerationService
    private let modelName: String
    private let status: @Sendable () -> (running: Int, queued: Int)
    private let keys: APIKeys?

    /// The API over `service`; Health reports `modelName` and what `status` counts now. With
    /// `keys`, every call must carry `authorization: Bearer KEY` metadata.
    public init(
        service: any GenerationService, modelName: String, keys: APIKeys? = nil,
        status: @escaping @Sendable () -> (running: Int, queued: Int)
    ) {
        self.service = service
        self.modelName = modelName
        self.keys = keys
        self.status = status
    }

    /// Tokenize and Health, by method path.
    public var unaryHandlers: [String: RPCServer.UnaryHandler] {
        [
            CoordinatorMethod.tokenize: { payload, context in
                _ = try self.client(context)
                return try self.tokenize(payload)
            },
            CoordinatorMethod.health: { payload, context in
                _ = try self.client(context)
                return try self.health(payload)
            },
        ]
    }

    /// Generate, by method path.
    public var streamingHandlers: [String: RPCServer.StreamingHandler] {
        [CoordinatorMethod.generate: { payload, context, writer in
            try await self.generate(payload, client: try self.client(context), writer)
        }]
    }

    /// Who is calling: the label of the API key in the call's `authorization` metadata, or,
    /// without keys, the peer's address.
    /// - Throws: `.unauthenticated` when keys are set and the call carries none of them.
    private func client(_ context: RPCServerContext) throws(RPCStatus) -> String {
        guard let keys else { return Endpoint.host(ofPeer: context.peer) }
        guard let token = bearerToken(context.metadata("authorization")), let client = keys.client(presenting: token) else {
            throw RPCStatus(code: .unauthenticated,
                            message: "missing or unknown API key: send metadata authorization: Bearer KEY")
        }
        return client
    }

    // MARK: Generate

    private func generate(_ payload: RPCPayload, client: String, _ writer: RPCStreamWriter) async throws {
        var request = try generationRequest(try decode(payload, as: Shoal_V1_GenerateRequest.self))
        request.client = client
        // Events arrive on the scheduler's thread, which must not wait for the network.
        let (events, sink) = AsyncStream.makeStream(of: GenerationEvent.self, bufferingPolicy: .unbounded)
        let ticket: any GenerationTicket
        do {
            ticket = try service.submit(request) { sink.yield($0) }
        } catch {
            throw Self.status(for: error)
        }
        // Cancelling this task (client gone, deadline) ends the loop; so does a send that fails.
        var ended = false
        defer { if !ended { ticket.cancel() } }
        for await event in events {
            switch event {
            case let .delta(ids, text):
                guard !ids.isEmpty || !text.isEmpty else { continue }
                var delta = Shoal_V1_TokenDelta()
                delta.ids = ids.map { UInt32($0) }
                delta.text = text
                var response = Shoal_V1_GenerateResponse()
                response.delta = delta
                try await writer.send(try RPCPayload(message: response))
            case let .finished(summary):
                ended = true
                var response = Shoal_V1_GenerateResponse()
                response.done = Self.done(summary)
                try await writer.send(try RPCPayload(message: response))
                return
            case let .failed(message):
                ended = true
                throw RPCStatus(code: .unavailable, message: message)
            }
        }
        throw RPCStatus(code: .cancelled, message: "the call was cancelled")
    }

    /// The scheduler's request for a validated message.
    private func generationRequest(_ message: Shoal_V1_GenerateRequest) throws(RPCStatus) -> GenerationRequest {
        let prompt: [Int]
        switch message.prompt {
        case nil:
            throw invalid("prompt: set one of text, chat or ids")
        case let .text(text)?:
            try checkLength(text.utf8.count, "text")
            prompt = service.tokenizer.encode(text, bos: true)
        case let .chat(conversation)?:
            try checkLength(conversation.turns.reduce(0) { $0 + $1.content.utf8.count }, "chat")
            prompt = try encode(conversation)
        case let .ids(list)?:
            prompt = try validIDs(list.ids)
        }
        let temperature = message.temperature
        guard temperature.isFinite, temperature >= 0 else {
            throw invalid("temperature: must be a finite number >= 0, got \(temperature)")
        }
        let topP = message.topP
        guard topP.isFinite, topP >= 0, topP <= 1 else {
            throw invalid("top_p: must be in (0, 1], or 0 for 1; got \(topP)")
        }
        guard message.stop.count <= Self.maxStopStrings else {
            throw invalid("stop: at most \(Self.maxStopStrings) strings, got \(message.stop.count)")
        }
        for (index, stop) in message.stop.enumerated() {
            guard !stop.isEmpty, stop.utf8.count <= Self.maxStopBytes else {
                throw invalid("stop[\(index)]: must be 1 to \(Self.maxStopBytes) bytes, got \(stop.utf8.count)")
            }
        }
        // 0: the service's default (at least 1, so a full prompt gets the scheduler's
        // context-overflow message).
        let maxTokens = message.maxTokens == 0
            ? service.defaultMaxTokens(promptTokens: prompt.count) : Int(message.maxTokens)
        let sampling = SamplingParameters(
            temperature: temperature, topK: Int(message.topK), topP: topP == 0 ? 1 : topP,
            seed: message.hasSeed ? message.seed : UInt64.random(in: 0...UInt64.max))
        return GenerationRequest(
            prompt: prompt,
            parameters: GenerationParameters(
                maxTokens: maxTokens, sampling: sampling, stop: message.stop, ignoreEOS: message.ignoreEos))
    }

    private static func done(_ summary: GenerationSummary) -> Shoal_V1_GenerateDone {
        var done = Shoal_V1_GenerateDone()
        done.finishReason = summary.finishReason.rawValue
        done.promptTokens = UInt32(clamping: summary.promptTokens)
        done.completionTokens = UInt32(clamping: summary.completionTokens)
        if let first = summary.timeToFirstToken { done.timeToFirstTokenSeconds = first.seconds }
        return done
    }

    /// The status a refused submission ends the call with.
    private static func status(for error: SubmitError) -> RPCStatus {
        switch error {
        case .contextOverflow, .exceedsCacheCapacity, .exceedsRequestLimit, .invalidPrompt:
            RPCStatus(code: .invalidArgument, message: error.description)
        case .queueFull:
            RPCStatus(code: .resourceExhausted, message: error.description)
        case .shuttingDown:
            RPCStatus(code: .unavailable, message: error.description)
        }
    }

    // MARK: Tokenize and Health

    private func tokenize(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(payload, as: Shoal_V1_TokenizeRequest.self)
        var response = Shoal_V1_TokenizeResponse()
        switch request.input {
        case nil:
            throw invalid("input: set one of text or chat")
        case let .text(text)?:
            try checkLength(text.utf8.count, "text")
            response.ids = service.tokenizer.encode(text, bos: request.bos).map { UInt32($0) }
        case let .chat(conversation)?:
            guard !request.bos else { throw invalid("bos: applies to text only; a chat always begins with BOS") }
            try checkLength(conversation.turns.reduce(0) { $0 + $1.content.utf8.count }, "chat")
            response.ids = try encode(conversation).map { UInt32($0) }
        }
        return try RPCPayload(message: response)
    }

    private func health(_ payload: RPCPayload) throws -> RPCPayload {
        _ = try decode(payload, as: Shoal_V1_CoordinatorHealthRequest.self)
        let (running, queued) = status()
        var response = Shoal_V1_CoordinatorHealthResponse()
        response.ready = service.isReady
        response.model = modelName
        response.contextLimit = UInt32(clamping: service.contextLimit)
        response.running = UInt32(clamping: running)
        response.queued = UInt32(clamping: queued)
        return try RPCPayload(message: response)
    }

    // MARK: Validation

    private func decode<M: SwiftProtobuf.Message>(_ payload: RPCPayload, as type: M.Type) throws(RPCStatus) -> M {
        do {
            return try payload.message(type)
        } catch {
            throw invalid("malformed \(M.protoMessageName): \(error)")
        }
    }

    /// A conversation's prompt ids, as mistral_common v1 encodes it.
    private func encode(_ conversation: Shoal_V1_ChatConversation) throws(RPCStatus) -> [Int] {
        var messages: [ChatMessage] = []
        for (index, turn) in conversation.turns.enumerated() {
            guard let role = ChatMessage.Role(rawValue: turn.role) else {
                throw invalid("chat.turns[\(index)].role: must be system, user or assistant, got \"\(turn.role)\"")
            }
            messages.append(ChatMessage(role: role, content: turn.content, prefix: turn.prefix))
        }
        do {
            return try service.tokenizer.encodeChat(messages)
        } catch {
            throw invalid("chat: \(error)")
        }
    }

    /// Refuses prompt text longer than the service tokenizes.
    private func checkLength(_ bytes: Int, _ field: String) throws(RPCStatus) {
        guard bytes <= service.maxPromptBytes else {
            throw invalid("\(field): \(bytes) bytes of text, more than the \(service.maxPromptBytes) this server tokenizes for one request")
        }
    }

    private func validIDs(_ ids: [UInt32]) throws(RPCStatus) -> [Int] {
        guard !ids.isEmpty else { throw invalid("ids: must not be empty") }
        let vocabSize = service.tokenizer.vocabSize
        if let index = ids.firstIndex(where: { Int($0) >= vocabSize }) {
            throw invalid("ids[\(index)]: token id \(ids[index]) is outside the vocabulary 0..<\(vocabSize)")
        }
        return ids.map { Int($0) }
    }
}

private func invalid(_ message: String) -> RPCStatus {
    RPCStatus(code: .invalidArgument, message: message)
}
