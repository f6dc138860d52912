import ShoalTensor

#if canImport(Glibc)
import Glibc
#endif

/// How the next token is chosen from the logits.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 means greedy (argmax).
    public var temperature: Float = 0
    /// Keep only the k most likely tokens; 0 keeps all.
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability reaches p; 1 keeps all.
    public var topP: Float = 1
    /// Seeds the random draws, so that a sampled run can be repeated.
    public var seed: UInt64 = 0
    /// Added to the logits of these token ids before anything else (OpenAI's `logit_bias`):
    /// +100 all but forces a token, -100 all but bans it.
    public var logitBias: [Int: Float] = [:]

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0, logitBias: [Int: Float] = [:]) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.seed = seed
        self.logitBias = logitBias
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast and the same on every machine.
public struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var seeder = SplitMix64(seed: seed)
        s = (seeder.next(), seeder.next(), seeder.next(), seeder.next())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 24 bits, as float32.
    public mutating func nextFloat() -> Float { Float(next() >> 40) * 0x1p-24 }
}

/// Greedy, temperature, top-k and top-p sampling over a logits vector.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: Xoshiro256
    private var candidates: [(id: Int, p: Float)] = []
    /// The logits with `logitBias` added, when there is a bias.
    private var biased: [Float] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = Xoshiro256(seed: parameters.seed)
    }

    /// The index of the largest logit (the lowest index on a tie); NaN counts as smaller
    /// than any number.
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] || (logits[best].isNaN && !logits[i].isNaN) { best = i }
        return best
    }

    /// Whether every logit is a finite number. Callers check before sampling: a NaN or an
    /// infinity means the forward pass went wrong, and no token drawn from it is an answer.
    public static func allFinite(_ logits: UnsafeBufferPointer<Float>) -> Bool {
        ShoalModel.allFinite(logits)
    }

    /// A token drawn from `logits`. Never traps: NaN and infinite logits are left out of the
    /// draw, and when no finite one is left the argmax stands in (callers check `allFinite`
    /// first and refuse such logits).
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int {
        guard !parameters.logitBias.isEmpty else { return draw(logits) }
        biased.removeAll(keepingCapacity: true)
        biased.append(contentsOf: logits)
        for (id, bias) in parameters.logitBias where biased.indices.contains(id) { biased[id] += bias }
        return biased.withUnsafeBufferPointer { draw($0) }
    }

    private mutating func draw(_ logits: UnsafeBufferPointer<Float>) -> Int {
        let p = parameters
        if p.temperature <= 0 || p.topK == 1 { return Self.argmax(logits) }
        let maxLogit = logits.reduce(-Float.infinity) { $1.isFinite ? max($0, $1) : $0 }
        guard maxLogit.isFinite else { return Self.argmax(logits) }
        // Tokens more than 40 nats below the best weigh < e^-40 each: dropping them changes no draw
        // in practice and spares sorting the whole vocabulary every step.
        let floor = maxLogit - 40 * p.temperature
        candidates.removeAll(keepingCapacity: true)
        for i in 0..<logits.count where logits[i] >= floor && logits[i].isFinite {
            candidates.append((i, (logits[i] - maxLogit) / p.temperature))
        }
        candidates.sort { $0.p > $1.p || ($0.p == $1.p && $0.id < $1.id) }
        if p.topK > 0 && candidates.count > p.topK { candidates.removeLast(candidates.count - p.topK) }
        var sum: Float = 0
        for i in candidates.indices {
            candidates[i].p = expf(candidates[i].p)
            sum += candidates[i].p
        }
        var keep = candidates.count
        if p.topP < 1 {
            var cumulative: Float = 0
            for i in candidates.indices {
                cumulative += candidates[i].p / sum
                if cumulative >= p.topP { keep = i + 1; break }
            }
        }
        let kept = candidates[0..<keep].reduce(Float(0)) { $0 + $1.p }
        var r = rng.nextFloat() * kept
        for c in candidates[0..<keep] {
            r -= c.p
            if r < 0 { return c.id }
        }
        return candidates[keep - 1].id
    }
}

/// Whether every value is finite, in one vectorizable pass: x · 0 is 0 for a finite x and NaN
/// for NaN or ±∞, and a NaN anywhere makes the sum NaN.
public func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
    var sum: Float = 0
    for x in values { sum += x * 0 }
    return !sum.isNaN
}
