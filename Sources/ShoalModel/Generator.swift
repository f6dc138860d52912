import Foundation
import ShoalTensor
import ShoalTokenizer

/// Everything that shapes one generation.
public struct GenerationParameters: Sendable {
    public var maxTokens: Int = 256
    public var sampling = SamplingParameters()
    /// Generation ends before the first occurrence of any of these; it is not emitted.
    public var stop: [String] = []
    /// Keep going after the end-of-sequence token (benchmarks, fixed-length tests).
    public var ignoreEOS = false

    public init(maxTokens: Int = 256, sampling: SamplingParameters = SamplingParameters(),
                stop: [String] = [], ignoreEOS: Bool = false) {
        self.maxTokens = maxTokens; self.sampling = sampling; self.stop = stop; self.ignoreEOS = ignoreEOS
    }
}

/// Why a generation ended.
public enum FinishReason: String, Sendable { case eos, stop, length }

/// A finished generation.
public struct GenerationResult: Sendable {
    public var ids: [Int]
    public var text: String
    public var finishReason: FinishReason
    public var promptTokens: Int
    public var prefillSeconds: Double
    public var decodeSeconds: Double

    /// Prompt tokens per second of prefill.
    public var prefillTokensPerSecond: Double { Double(promptTokens) / max(prefillSeconds, 1e-9) }
    /// Generated tokens per second after the first (which prefill produced).
    public var decodeTokensPerSecond: Double { Double(max(ids.count - 1, 0)) / max(decodeSeconds, 1e-9) }
}

/// Prefill, then decode token by token with a KV cache, sampling, stop handling and
/// streaming text.
public final class Generator {
    public let model: MixtralModel
    public let tokenizer: SentencePieceTokenizer

    public init(model: MixtralModel, tokenizer: SentencePieceTokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Generates from `prompt`; `onText` receives each piece of text as soon as it is
    /// complete UTF-8 and cannot be the start of a stop string.
    public func generate(
        prompt: [Int], parameters: GenerationParameters, onText: (String) -> Void = { _ in }
    ) throws -> GenerationResult {
        let limit = model.config.maxContext
        guard prompt.count + parameters.maxTokens <= limit else {
            throw InferenceError.contextOverflow(needed: prompt.count + parameters.maxTokens, limit: limit)
        }
        let cache = KVCache(config: model.config, capacity: prompt.count + parameters.maxTokens)
        var decoder = SequenceDecoder(parameters: parameters, tokenizer: tokenizer, eosId: model.config.eosId)

        let t0 = DispatchTime.now().uptimeNanoseconds
        var logits = try model.forward(prompt, cache: cache)
        let t1 = DispatchTime.now().uptimeNanoseconds
        while true {
            guard Sampler.allFinite(logits) else { throw InferenceError.nonFiniteLogits }
            let step = decoder.next(logits)
            if !step.text.isEmpty { onText(step.text) }
            guard decoder.finishReason == nil, let id = step.id else { break }
            logits = try model.forward([id], cache: cache)
        }
        let t2 = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(
            ids: decoder.ids, text: decoder.text, finishReason: decoder.finishReason ?? .length,
            promptTokens: prompt.count,
            prefillSeconds: Double(t1 - t0) / 1e9, decodeSeconds: Double(t2 - t1) / 1e9)
    }
}

/// One sequence's token side, after each forward pass: sampling with its own seed, the end
/// of sequence, the token limit, stop strings and text streamed as complete UTF-8. The
/// single-sequence generator and the server's scheduler both use it, so they end alike.
public struct SequenceDecoder: Sendable {
    public let parameters: GenerationParameters
    /// Tokens sampled so far (EOS not included).
    public private(set) var ids: [Int] = []
    /// Set once the sequence has ended; then `next` must not be called again.
    public private(set) var finishReason: FinishReason?
    private let eosId: Int
    private var sampler: Sampler
    private var detokenizer: StreamingDetokenizer
    private var stops: StopMatcher

    public init(parameters: GenerationParameters, tokenizer: SentencePieceTokenizer, eosId: Int) {
        self.parameters = parameters
        self.eosId = eosId
        sampler = Sampler(parameters.sampling)
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer)
        stops = StopMatcher(parameters.stop)
    }

    /// The text emitted so far (the stop string and what follows it excluded).
    public var text: String { stops.text }

    /// Samples from `logits` (the last position's). Returns the token to feed back (nil at
    /// end of sequence) and the text that became final, which at the end includes whatever
    /// was held back.
    public mutating func next(_ logits: UnsafeBufferPointer<Float>) -> (id: Int?, text: String) {
        precondition(finishReason == nil, "the sequence has ended")
        var text = ""
        let token = sampler.sample(logits)
        if token == eosId && !parameters.ignoreEOS {
            finish(.eos, into: &text)
            return (nil, text)
        }
        ids.append(token)
        if stops.feed(detokenizer.append(token), emit: { text += $0 }) {
            finishReason = .stop
        } else if ids.count >= parameters.maxTokens {
            finish(.length, into: &text)
        }
        return (token, text)
    }

    private mutating func finish(_ reason: FinishReason, into text: inout String) {
        finishReason = reason
        if stops.feed(detokenizer.finish(), emit: { text += $0 }) {
            finishReason = .stop
        } else {
            stops.flush { text += $0 }
        }
    }
}

/// Holds back text that might be the beginning of a stop string, and cuts the output at
/// the first stop string found.
struct StopMatcher: Sendable {
    let stops: [String]
    private(set) var text = ""  // emitted so far
    private var pending = ""  // received, not yet emitted

    init(_ stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Adds text; returns true when a stop string was found (the text before it is emitted).
    mutating func feed(_ piece: String, emit: (String) -> Void) -> Bool {
        pending += piece
        if let cut = stops.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
            send(String(pending[..<cut]), emit)
            pending = ""
            return true
        }
        // Keep the longest tail of pending that is a proper prefix of some stop string.
        var hold = 0
        for stop in stops {
            for n in stride(from: min(stop.count - 1, pending.count), to: hold, by: -1)
            where pending.hasSuffix(String(stop.prefix(n))) {
                hold = n
                break
            }
        }
        let ready = pending.index(pending.endIndex, offsetBy: -hold)
        send(String(pending[..<ready]), emit)
        pending = String(pending[ready...])
        return false
    }

    /// Emits whatever was held back (the generation ended without a stop).
    mutating func flush(emit: (String) -> Void) {
        send(pending, emit)
        pending = ""
    }

    private mutating func send(_ s: String, _ emit: (String) -> Void) {
        guard !s.isEmpty else { return }
        text += s
        emit(s)
    }
}
