import ShoalModel
import ShoalTokenizer

/// One prompt to complete, as the scheduler takes it.
public struct GenerationRequest: Sendable {
    /// Prompt token ids, BOS included when wanted.
    public var prompt: [Int]
    /// Length, sampling (own seed), stop strings.
    public var parameters: GenerationParameters
    /// Who asked (the API key's label, or the peer's address without keys): admission shares
    /// the batch and the KV cache between clients.
    public var client: String

    public init(prompt: [Int], parameters: GenerationParameters, client: String = "") {
        self.prompt = prompt
        self.parameters = parameters
        self.client = client
    }
}

/// How a sequence ended, with its counts.
public struct GenerationSummary: Sendable {
    public var finishReason: FinishReason
    public var promptTokens: Int
    public var completionTokens: Int
    /// The whole completion text (stop string excluded).
    public var text: String
    /// From submission to the first sampled token.
    public var timeToFirstToken: Duration?

    public init(finishReason: FinishReason, promptTokens: Int, completionTokens: Int, text: String,
                timeToFirstToken: Duration?) {
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.text = text
        self.timeToFirstToken = timeToFirstToken
    }
}

/// What a submitted sequence reports, in order: deltas, then exactly one of `finished` or
/// `failed`. Nothing follows a cancellation.
public enum GenerationEvent: Sendable {
    /// New token ids (possibly none, at the end) and the text they completed; `text` is empty
    /// while UTF-8 bytes or a possible stop string are held back.
    case delta(ids: [Int], text: String)
    /// The sequence ended normally.
    case finished(GenerationSummary)
    /// The sequence could not go on (a worker failed, the server is stopping).
    case failed(message: String)
}

/// Why a request was not admitted. `status` is the HTTP status an API answers with.
public enum SubmitError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Prompt plus max tokens exceed the model's context.
    case contextOverflow(needed: Int, limit: Int)
    /// The sequence needs more KV-cache memory than the server has in all.
    case exceedsCacheCapacity(neededTokens: Int, capacityTokens: Int)
    /// Prompt plus max tokens exceed what one request may hold (`--max-request-tokens`).
    case exceedsRequestLimit(neededTokens: Int, limitTokens: Int)
    /// The queue of waiting requests is full.
    case queueFull(limit: Int)
    /// An empty prompt or an id outside the vocabulary.
    case invalidPrompt(String)
    /// The server is stopping and takes no new work.
    case shuttingDown

    public var status: Int {
        switch self {
        case .contextOverflow, .exceedsCacheCapacity, .exceedsRequestLimit, .invalidPrompt: 400
        case .queueFull: 429
        case .shuttingDown: 503
        }
    }

    public var description: String {
        switch self {
        case let .contextOverflow(needed, limit):
            "prompt plus max_tokens is \(needed) tokens, past the model's context of \(limit)"
        case let .exceedsCacheCapacity(needed, capacity):
            "the request needs \(needed) tokens of KV cache, more than this server's \(capacity) in all; lower max_tokens or start the server with a larger --kv-cache-tokens"
        case let .exceedsRequestLimit(needed, limit):
            "prompt plus max_tokens is \(needed) tokens, past this server's limit of \(limit) per request; lower max_tokens or shorten the prompt"
        case let .queueFull(limit):
            "the server is busy: \(limit == 1 ? "1 request is" : "\(limit) requests are") already waiting; retry later"
        case let .invalidPrompt(why):
            why
        case .shuttingDown:
            "the server is shutting down"
        }
    }
}

/// Cancels one submitted sequence (its client went away). Idempotent.
public protocol GenerationTicket: Sendable {
    func cancel()
}

/// What the HTTP and gRPC front ends need of the coordinator: the tokenizer, the context
/// limit, readiness, and submission. `Scheduler` is the real one; tests use fakes.
public protocol GenerationService: AnyObject, Sendable {
    var tokenizer: SentencePieceTokenizer { get }
    /// The model's context length in tokens.
    var contextLimit: Int { get }
    /// True when every (layer, expert) has a live holder.
    var isReady: Bool { get }
    /// The tokens a request may generate when it names no limit, after a prompt of
    /// `promptTokens`.
    func defaultMaxTokens(promptTokens: Int) -> Int
    /// The longest prompt text (UTF-8 bytes, all messages together) taken to the tokenizer:
    /// longer text could not fit the per-request token limit anyway, and tokenizing it would
    /// cost the server CPU for nothing.
    var maxPromptBytes: Int { get }
    /// Queues `request`; `onEvent` is called on the scheduler's thread, in order, and must
    /// not block.
    func submit(
        _ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void
    ) throws(SubmitError) -> any GenerationTicket
}

extension GenerationService {
    /// Up to 1024 tokens, within the context.
    public func defaultMaxTokens(promptTokens: Int) -> Int {
        max(1, min(1024, contextLimit - promptTokens))
    }

    /// 32 bytes per token of the context: no tokenizer piece is that long.
    public var maxPromptBytes: Int { 32 * contextLimit }
}

/// The longest stop string, in UTF-8 bytes, on every API: the stop check runs on the batch's
/// thread once per generated token.
public let maxStopBytes = 256
