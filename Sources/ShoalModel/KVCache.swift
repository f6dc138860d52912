/// Keys and values of one sequence, every layer: `(capacity, kvHeads*headDim)` float32 each.
/// Positions `0..<length` are filled; the forward pass appends.
public final class KVCache {
    public let capacity: Int
    public internal(set) var length = 0
    let kvDim: Int
    let keys: [UnsafeMutablePointer<Float>]  // per layer (capacity, kvDim)
    let values: [UnsafeMutablePointer<Float>]  // per layer (capacity, kvDim)

    /// A cache for up to `capacity` positions (at most the model's context).
    public init(config: ModelConfig, capacity: Int) {
        self.capacity = min(capacity, config.maxContext)
        kvDim = config.kvHeads * config.headDim
        let n = self.capacity * kvDim
        keys = (0..<config.layers).map { _ in .allocate(capacity: n) }
        values = (0..<config.layers).map { _ in .allocate(capacity: n) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Bytes this cache holds.
    public var byteCount: Int { 2 * keys.count * capacity * kvDim * 4 }

    /// Forgets every position (the memory stays).
    public func reset() { length = 0 }

    /// Drops positions from `newLength` on, e.g. to reuse a shared prompt prefix.
    public func truncate(to newLength: Int) {
        precondition(newLength >= 0 && newLength <= length)
        length = newLength
    }
}

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
