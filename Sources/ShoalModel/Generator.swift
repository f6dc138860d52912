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
        var sampler = Sampler(parameters.sampling)
        var detok = StreamingDetokenizer(tokenizer: tokenizer)
        var stops = StopMatcher(parameters.stop)
        var ids: [Int] = []
        var reason = FinishReason.length

        let t0 = DispatchTime.now().uptimeNanoseconds
        var logits = try model.forward(prompt, cache: cache)
        let t1 = DispatchTime.now().uptimeNanoseconds
        while ids.count < parameters.maxTokens {
            let next = sampler.sample(logits)
            if next == model.config.eosId && !parameters.ignoreEOS { reason = .eos; break }
            ids.append(next)
            if stops.feed(detok.append(next), emit: onText) { reason = .stop; break }
            if ids.count == parameters.maxTokens { break }
            logits = try model.forward([next], cache: cache)
        }
        if reason != .stop { _ = stops.feed(detok.finish(), emit: onText) }
        if reason != .stop { stops.flush(emit: onText) }
        let t2 = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(
            ids: ids, text: stops.text, finishReason: reason, promptTokens: prompt.count,
            prefillSeconds: Double(t1 - t0) / 1e9, decodeSeconds: Double(t2 - t1) / 1e9)
    }
}

/// Holds back text that might be the beginning of a stop string, and cuts the output at
/// the first stop string found.
struct StopMatcher {
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
