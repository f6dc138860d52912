/// What stops a forward pass before it starts.
public enum InferenceError: Error, CustomStringConvertible, Equatable {
    /// A token id outside the vocabulary.
    case tokenOutOfRange(id: Int, vocabSize: Int)
    /// The sequence would outgrow the cache or the model's context.
    case contextOverflow(needed: Int, limit: Int)
    /// Nothing to run.
    case emptyInput
    /// One cache given for two sequences of a batch.
    case sharedCache
    /// The forward pass produced NaN or infinite logits: nothing sensible to sample.
    case nonFiniteLogits

    public var description: String {
        switch self {
        case let .tokenOutOfRange(id, vocab): return "token id \(id) is outside the vocabulary (0..<\(vocab))"
        case let .contextOverflow(needed, limit):
            return "the sequence needs \(needed) positions but the context holds \(limit)"
        case .emptyInput: return "no input tokens"
        case .sharedCache: return "two sequences of one batch share a KV cache"
        case .nonFiniteLogits: return "the model produced NaN or infinite logits; no token was sampled"
        }
    }
}
