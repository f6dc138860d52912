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

