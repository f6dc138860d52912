import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTokenizer
import SwiftProtobuf

/// What to complete, as the coordinator's prompt API takes it.
public enum CoordinatorPrompt: Sendable {
    /// Plain text; the coordinator prepends BOS.
    case text(String)
    /// A conversation in the Mistral v1 chat format.
    case chat([ChatMessage])
    /// Token ids, used as they are; each in `0...UInt32.max`.
    case ids([Int])
}

/// How to sample a remote completion; the fields of `GenerateRequest`.
public struct CoordinatorGenerateOptions: Sendable {
    /// Most tokens to generate, at most `UInt32.max`; 0: as many as the context leaves.
    public var maxTokens: Int
    /// 0 is greedy.
    public var temperature: Float
    /// Sample among the k most likely tokens, at most `UInt32.max`; 0: all.
    public var topK: Int
    /// Sample among the most likely tokens reaching this probability, in (0, 1].
    public var topP: Float
    /// The sampler's seed; nil lets the coordinator pick one.
    public var seed: UInt64?
    /// Generation ends before the first occurrence of any of these.
    public var stop: [String]
    /// Keep going after the end-of-sequence token.
    public var ignoreEOS: Bool

    /// Options with the coordinator's defaults: as many tokens as fit, greedy.
    public init(
        maxTokens: Int = 0, temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64? = nil,
        stop: [String] = [], ignoreEOS: Bool = false
    ) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
        self.stop = stop
        self.ignoreEOS = ignoreEOS
    }
}

/// How a remote completion ended, as the coordinator reports it.
public struct CoordinatorDone: Sendable, Equatable {
    /// Why the completion ended.
    public var finishReason: FinishReason
    /// Tokens of the prompt as the coordinator encoded it.
    public var promptTokens: Int
    /// Tokens sampled.
    public var completionTokens: Int
    /// From submission to the first sampled token, on the coordinator; nil when none was.
    public var timeToFirstToken: Duration?
}

/// What a Generate call streams: deltas, then one `done`.
public enum CoordinatorEvent: Sendable, Equatable {
    /// New token ids and the text they completed (possibly empty while bytes are held back).
    case delta(ids: [Int], text: String)
    /// The completion ended normally; nothing follows.
    case done(CoordinatorDone)
}

/// A whole remote completion, with what the client saw of its timing.
public struct CoordinatorCompletion: Sendable {
    /// The generated ids.
    public var ids: [Int]
    /// The generated text, stop string excluded.
    public var text: String
    /// How it ended, as the coordinator reported it.
    public var done: CoordinatorDone
    /// From the call's start to the first delta carrying ids, as the client saw it.
    public var firstTokenAfter: Duration?
    /// From the call's start to `done`.
    public var elapsed: Duration
}

/// The coordinator's readiness and load.
public struct CoordinatorHealth: Sendable, Equatable {
    /// True when every (layer, expert) has a live holder.
    public var ready: Bool
    /// The model name the coordinator serves under.
    public var model: String
    /// The model's context length in tokens.
    public var contextLimit: Int
    /// Sequences being decoded.
    public var running: Int
    /// Requests waiting for a place in the batch.
    public var queued: Int
}

/// Why a coordinator's answer could not be used.
public enum CoordinatorClientError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A response that breaks the protocol: undecodable, an unknown finish reason, no `done`
    /// at the end of a stream or a message after it.
    case malformedResponse(String)

    /// A sentence for the user.
    public var description: String {
        switch self {
        case let .malformedResponse(why): "the coordinator sent a malformed response: \(why)"
        }
    }
}

/// A client of the coordinator's prompt API (`shoal chat`, `shoal generate --coordinator`).
///
/// Calls fail with `RPCStatus` as the coordinator ends them (`.invalidArgument` naming the
/// field, `.resourceExhausted` when its queue is full, `.unavailable` when it cannot be reached
/// or is stopping) or with `CoordinatorClientError`.
public final class CoordinatorClient: Sendable {
    private let channel: RPCChannel

    /// A client of the coordinator at `target` (`"host:port"`); connecting is lazy. `apiKey`
    /// goes with every call as `authorization: Bearer KEY`.
    public init(target: String, security: RPCSecurity = .insecure, apiKey: String? = nil) {
        channel = RPCChannel(target: target, security: security,
                             metadata: apiKey.map { [("authorization", "Bearer \($0)")] } ?? [])
    }

    /// Cancels the calls still running and closes the connection. Idempotent.
    public func close() { channel.close() }

    /// Streams one completion. Ending the iteration early, or cancelling its task, cancels the
    /// call and so the sequence on the coordinator.
    /// - Parameter timeout: the deadline of the whole call.
    public func generate(
        _ prompt: CoordinatorPrompt, options: CoordinatorGenerateOptions, timeout: Duration = .seconds(3600)
    ) -> AsyncThrowingStream<CoordinatorEvent, Error> {
        let (events, sink) = AsyncThrowingStream<CoordinatorEvent, Error>.makeStream()
        let request: RPCPayload
        do {
            request = try RPCPayload(message: Self.request(prompt, options))
        } catch {
            sink.finish(throwing: error)
            return events
        }
        // The task holds the client, and so the channel, until the call ends.
        let task = Task {
            do {
                var done = false
                for try await payload in self.channel.serverStreaming(
                    CoordinatorMethod.generate, request: request, timeout: timeout)
                {
                    guard !done else { throw CoordinatorClientError.malformedResponse("a message after done") }
                    let event = try Self.event(payload)
                    if case .done = event { done = true }
                    sink.yield(event)
                }
                guard done || Task.isCancelled else {
                    throw CoordinatorClientError.malformedResponse("the stream ended without done")
                }
                sink.finish()
            } catch {
                sink.finish(throwing: error)
            }
        }
        sink.onTermination = { _ in task.cancel() }
        return events
    }

    /// Runs one completion to its end, handing each piece of text to `onText` as it arrives.
    public func complete(
        _ prompt: CoordinatorPrompt, options: CoordinatorGenerateOptions, timeout: Duration = .seconds(3600),
        onText: (String) -> Void = { _ in }
    ) async throws -> CoordinatorCompletion {
        let clock = ContinuousClock()
        let start = clock.now
        var ids: [Int] = []
        var text = ""
        var firstTokenAfter: Duration?
        for try await event in generate(prompt, options: options, timeout: timeout) {
            switch event {
            case let .delta(newIDs, piece):
                if firstTokenAfter == nil, !newIDs.isEmpty { firstTokenAfter = clock.now - start }
                ids += newIDs
                text += piece
                if !piece.isEmpty { onText(piece) }
            case let .done(done):
                return CoordinatorCompletion(
                    ids: ids, text: text, done: done, firstTokenAfter: firstTokenAfter, elapsed: clock.now - start)
            }
        }
        throw CancellationError()  // the stream only ends without done when this task is cancelled
    }

    /// The ids `text` becomes, with BOS first when `bos`.
    public func tokenize(_ text: String, bos: Bool, timeout: Duration = .seconds(30)) async throws -> [Int] {
        var request = Shoal_V1_TokenizeRequest()
        request.text = text
        request.bos = bos
        return try await tokenize(request, timeout: timeout)
    }

    /// The ids a conversation becomes in the Mistral v1 chat format (BOS first).
    public func tokenize(chat: [ChatMessage], timeout: Duration = .seconds(30)) async throws -> [Int] {
        var request = Shoal_V1_TokenizeRequest()
        request.chat = Self.conversation(chat)
        return try await tokenize(request, timeout: timeout)
    }

    /// The coordinator's readiness and load.
    public func health(timeout: Duration = .seconds(10)) async throws -> CoordinatorHealth {
        let payload = try await channel.unary(
            CoordinatorMethod.health, request: try RPCPayload(message: Shoal_V1_CoordinatorHealthRequest()),
            timeout: timeout)
        let response = try Self.decode(payload, as: Shoal_V1_CoordinatorHealthResponse.self)
        return CoordinatorHealth(
            ready: response.ready, model: response.model, contextLimit: Int(response.contextLimit),
            running: Int(response.running), queued: Int(response.queued))
    }

    private func tokenize(_ request: Shoal_V1_TokenizeRequest, timeout: Duration) async throws -> [Int] {
        let payload = try await channel.unary(
            CoordinatorMethod.tokenize, request: try RPCPayload(message: request), timeout: timeout)
        return try Self.decode(payload, as: Shoal_V1_TokenizeResponse.self).ids.map { Int($0) }
    }

    // MARK: Messages

    private static func request(
        _ prompt: CoordinatorPrompt, _ options: CoordinatorGenerateOptions
    ) -> Shoal_V1_GenerateRequest {
        var request = Shoal_V1_GenerateRequest()
        switch prompt {
        case let .text(text): request.text = text
        case let .chat(messages): request.chat = conversation(messages)
        case let .ids(ids):
            var list = Shoal_V1_TokenIds()
            list.ids = ids.map { UInt32($0) }
            request.ids = list
        }
        request.maxTokens = UInt32(options.maxTokens)
        request.temperature = options.temperature
        request.topK = UInt32(options.topK)
        request.topP = options.topP
        if let seed = options.seed { request.seed = seed }
        request.stop = options.stop
        request.ignoreEos = options.ignoreEOS
        return request
    }

    private static func conversation(_ messages: [ChatMessage]) -> Shoal_V1_ChatConversation {
        var conversation = Shoal_V1_ChatConversation()
        conversation.turns = messages.map { message in
            var turn = Shoal_V1_ChatTurn()
            turn.role = message.role.rawValue
            turn.content = message.content
            turn.prefix = message.prefix
            return turn
        }
        return conversation
    }

    private static func event(_ payload: RPCPayload) throws -> CoordinatorEvent {
        let response = try decode(payload, as: Shoal_V1_GenerateResponse.self)
        switch response.event {
        case let .delta(delta)?:
            return .delta(ids: delta.ids.map { Int($0) }, text: delta.text)
        case let .done(done)?:
            guard let reason = FinishReason(rawValue: done.finishReason) else {
                throw CoordinatorClientError.malformedResponse("unknown finish reason \"\(done.finishReason)\"")
            }
            let first = done.timeToFirstTokenSeconds
            guard first.isFinite, first >= 0, first < 1e9 else {
                throw CoordinatorClientError.malformedResponse("time to first token \(first)")
            }
            return .done(CoordinatorDone(
                finishReason: reason, promptTokens: Int(done.promptTokens),
                completionTokens: Int(done.completionTokens),
                timeToFirstToken: first > 0 ? .seconds(first) : nil))
        case nil:
            throw CoordinatorClientError.malformedResponse("a GenerateResponse with neither delta nor done")
        }
    }

    private static func decode<M: SwiftProtobuf.Message>(_ payload: RPCPayload, as type: M.Type) throws -> M {
        do {
            return try payload.message(type)
        } catch {
            throw CoordinatorClientError.malformedResponse("\(M.protoMessageName): \(error)")
        }
    }
}
