// The Mixtral forward pass, after llama2.c `run.c` for its shape and mistral-inference
// `transformer.py` / `moe.py` for the MoE routing order.
import ShoalTensor

#if canImport(Glibc)
import Glibc
#endif

/// Per-layer internals recorded when a trace is attached (tests and debugging only).
public final class ForwardTrace {
    public var layerOutputs: [[Float]] = []  // (layers+1) × (T, dim): [0] = embeddings
    public var routerLogits: [[Float]] = []  // layers × (T, experts)
    public var routerIndices: [[Int]] = []  // layers × (T, k), highest weight first
    public var routerWeights: [[Float]] = []  // layers × (T, k)
    public var finalHidden: [Float] = []  // (T, dim) after the final norm
    public init() {}
}

/// The coordinator's half of Mixtral: embeddings, attention, router, final norm and
/// lm_head. Experts are reached through `experts`, local or remote.
public final class MixtralModel {
    public let config: ModelConfig
    public let weights: CoordinatorWeights
    public let experts: ExpertBackend
    public let pool: ComputePool
    /// Records internals of the next forward passes when set.
    public var trace: ForwardTrace?
    /// Weight bytes this object's own products streamed (attention, router, lm_head).
    public var weightBytesRead = 0
    /// Prompts are processed this many tokens at a time, bounding scratch memory.
    public let chunkSize: Int
    /// Called with each layer's routes of the step (metrics count tokens per expert).
    public var routeObserver: ((Int, Routes) -> Void)?

    private let invFreq: [Float]  // (headDim/2,)
    // Run state, (T, …) for a chunk of T tokens.
    private let x = FloatBuffer()  // (T, dim) residual stream
    private let xb = FloatBuffer()  // (T, dim) normed input of a block
    private let xb2 = FloatBuffer()  // (T, dim) a block's output
    private let q = FloatBuffer()  // (T, heads*headDim)
    private let k = FloatBuffer()  // (T, kvHeads*headDim)
    private let v = FloatBuffer()  // (T, kvHeads*headDim)
    private let attnOut = FloatBuffer()  // (T, heads*headDim)
    private let att = FloatBuffer()  // (heads, capacity) scores of one query
    private let ropeCos = FloatBuffer()  // (T, headDim/2)
    private let ropeSin = FloatBuffer()  // (T, headDim/2)
    private let routerLogits = FloatBuffer()  // (T, experts)
    private let logits = FloatBuffer()  // (T or 1, vocab)
    private var routes = Routes()
    private var chosen: [Int]  // (k,) one token's experts, highest logit first
    private var weight: [Float]  // (k,) their softmax weights
    private var chosenAscending: [(expert: Int, weight: Float)] = []  // (k,) both, by expert
    private var products = ProductBatch()
    private var flat: [Int] = []  // (T,) the step's token ids, segment after segment

    public init(weights: CoordinatorWeights, experts: ExpertBackend, pool: ComputePool, chunkSize: Int = 256) {
        self.config = weights.config
        self.weights = weights
        self.experts = experts
        self.pool = pool
        self.chunkSize = chunkSize
        let hd = weights.config.headDim, theta = weights.config.ropeTheta
        invFreq = (0..<hd / 2).map { i in 1 / powf(theta, Float(2 * i) / Float(hd)) }
                chosen = Array(repeating: 0, count: weights.config.expertsPerToken)
        weight = Array(repeating: 0, count: weights.config.expertsPerToken)
    }

    /// Runs `tokens` at positions `cache.length…`, appends their keys and values to `cache`,
    /// and returns the logits of the last token, or of every token when `allLogits`
    /// (`(T, vocab)`). The buffer is valid until the next call.
    public func forward(_ tokens: [Int], cache: KVCache, allLogits: Bool = false) throws -> UnsafeBufferPointer<Float> {
        try check(tokens, cache: cache)
        let V = config.vocabSize
        let out = logits.reserve(allLogits ? tokens.count * V : V)
        var start = 0
        while start < tokens.count {
            let n = min(tokens.count - start, chunkSize)
            flat.removeAll(keepingCapacity: true)
            flat.append(contentsOf: tokens[start..<start + n])
            try layers([Segment(cache: cache, row: 0, count: n, firstPosition: cache.length)])
            if allLogits {
                product(weights.output, xb.pointer, out + start * V, ldy: V, n: n)
            } else if start + n == tokens.count {
                product(weights.output, xb.pointer + (n - 1) * config.dim, out, ldy: V, n: 1)
            }
            start += n
        }
        return UnsafeBufferPointer(start: out, count: allLogits ? tokens.count * V : V)
    }

    /// One step of several sequences at once: each entry's tokens are appended to its own
    /// cache, attention stays within each sequence, and every other product (projections,
    /// router, experts, lm_head) runs once over all the step's tokens, so each expert sees one
    /// call per layer for the whole batch. Returns the logits of each entry's last token,
    /// `(batch.count, vocab)`, valid until the next call.
    ///
    /// A sequence's results are bit-identical to running it alone: every kernel computes a
    /// token's row the same way whatever the batch (see `gemv_rows`), and attention reads
    /// only the sequence's own cache. The caller bounds the step's total tokens.
    /// - Throws: `InferenceError` for an empty entry, an id outside the vocabulary, a cache
    ///   that would overflow or appears twice; nothing is written then.
    public func forward(batch: [(tokens: [Int], cache: KVCache)]) throws -> UnsafeBufferPointer<Float> {
        guard !batch.isEmpty else { throw InferenceError.emptyInput }
        var seen = Set<ObjectIdentifier>()
        for entry in batch {
            try check(entry.tokens, cache: entry.cache)
            guard seen.insert(ObjectIdentifier(entry.cache)).inserted else { throw InferenceError.sharedCache }
        }
        flat.removeAll(keepingCapacity: true)
        var segments: [Segment] = []
        for entry in batch {
            segments.append(Segment(cache: entry.cache, row: flat.count, count: entry.tokens.count,
                                    firstPosition: entry.cache.length))
            flat.append(contentsOf: entry.tokens)
        }
        try layers(segments)
        // Gather each sequence's last hidden state, then one product for all of them.
        let dim = config.dim, V = config.vocabSize
        let last = xb2.reserve(segments.count * dim)
        for (i, s) in segments.enumerated() {
            (last + i * dim).update(from: xb.pointer + (s.row + s.count - 1) * dim, count: dim)
        }
        let out = logits.reserve(segments.count * V)
        product(weights.output, last, out, ldy: V, n: segments.count)
        return UnsafeBufferPointer(start: out, count: segments.count * V)
    }

    /// Throws unless `tokens` can be appended to `cache`.
    private func check(_ tokens: [Int], cache: KVCache) throws {
        guard !tokens.isEmpty else { throw InferenceError.emptyInput }
        for id in tokens where id < 0 || id >= config.vocabSize {
            throw InferenceError.tokenOutOfRange(id: id, vocabSize: config.vocabSize)
        }
        let needed = cache.length + tokens.count
        guard needed <= cache.capacity else {
            throw InferenceError.contextOverflow(needed: needed, limit: cache.capacity)
        }
    }

    /// One sequence's rows of a step: `count` tokens from row `row` of the batch, at positions
    /// `firstPosition…` of `cache`.
    private struct Segment {
        let cache: KVCache
        let row: Int
        let count: Int
        let firstPosition: Int
    }

    /// Every decoder layer over the tokens in `flat`; leaves the final-normed hidden states in
    /// `xb` and advances each segment's cache.
    private func layers(_ segments: [Segment]) throws {
        let T = flat.count, dim = config.dim
        let qDim = config.heads * config.headDim, kvDim = config.kvHeads * config.headDim
        let x = self.x.reserve(T * dim), xb = self.xb.reserve(T * dim), xb2 = self.xb2.reserve(T * dim)
        let q = self.q.reserve(T * qDim), k = self.k.reserve(T * kvDim), v = self.v.reserve(T * kvDim)
        let attnOut = self.attnOut.reserve(T * qDim)

        // Embeddings.
        for (t, id) in flat.enumerated() { weights.embedding.copyRow(id, into: x + t * dim) }
        trace?.layerOutputs.append(Array(UnsafeBufferPointer(start: x, count: T * dim)))
        prepareRope(segments, count: T)

        for l in 0..<config.layers {
            let w = weights.layers[l]

            // Attention: h = x + wo · attention(rmsnorm(x)).
            rmsnorm(xb, x, w.attentionNorm, count: T)
            products.removeAll()
            products.append(MatMul(matrix: w.wq, x: xb, ldx: dim, n: T, y: q, ldy: qDim))
            products.append(MatMul(matrix: w.wk, x: xb, ldx: dim, n: T, y: k, ldy: kvDim))
            products.append(MatMul(matrix: w.wv, x: xb, ldx: dim, n: T, y: v, ldy: kvDim))
            runProducts()
            applyRope(q, heads: config.heads, count: T)
            applyRope(k, heads: config.kvHeads, count: T)
            for s in segments {
                (s.cache.keys[l] + s.firstPosition * kvDim).update(from: k + s.row * kvDim, count: s.count * kvDim)
                (s.cache.values[l] + s.firstPosition * kvDim).update(from: v + s.row * kvDim, count: s.count * kvDim)
            }
            attention(layer: l, segments, out: attnOut)
            product(w.wo, attnOut, xb2, ldy: dim, n: T)
            for i in 0..<(T * dim) { x[i] += xb2[i] }

            // MoE: x = h + Σ_j weight_j · expert_j(rmsnorm(h)).
            rmsnorm(xb, x, w.ffnNorm, count: T)
            route(layer: l, w.router, xb, count: T)
            routeObserver?(l, routes)
            try experts.moe(layer: l, x: xb, routes: routes, out: xb2)
            for i in 0..<(T * dim) { x[i] += xb2[i] }
            trace?.layerOutputs.append(Array(UnsafeBufferPointer(start: x, count: T * dim)))
        }
        rmsnorm(xb, x, weights.finalNorm, count: T)
        trace?.finalHidden = Array(UnsafeBufferPointer(start: xb, count: T * dim))
        for s in segments { s.cache.length = s.firstPosition + s.count }
    }

    // MARK: - Blocks

    /// out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight, for each of `count` rows.
    private func rmsnorm(_ out: UnsafeMutablePointer<Float>, _ x: UnsafeMutablePointer<Float>, _ weight: [Float], count: Int) {
        let dim = config.dim
        for t in 0..<count {
            let xt = x + t * dim, ot = out + t * dim
            var ss: Double = 0
            for i in 0..<dim { ss += Double(xt[i]) * Double(xt[i]) }
            let scale = 1 / sqrtf(Float(ss / Double(dim)) + config.normEps)
            for i in 0..<dim { ot[i] = (xt[i] * scale) * weight[i] }
        }
    }

    /// cos/sin of position × inverse frequency for every row of the step, in float32 as
    /// transformers computes them.
    private func prepareRope(_ segments: [Segment], count: Int) {
        let half = config.headDim / 2
        let c = ropeCos.reserve(count * half), s = ropeSin.reserve(count * half)
        for segment in segments {
            for i in 0..<segment.count {
                let t = segment.row + i, position = Float(segment.firstPosition + i)
                for j in 0..<half {
                    let angle = position * invFreq[j]
                    c[t * half + j] = cosf(angle)
                    s[t * half + j] = sinf(angle)
                }
            }
        }
    }

    /// Rotates each head's pairs: (i, i+hd/2) for HF files, (2i, 2i+1) for Mistral files.
    private func applyRope(_ v: UnsafeMutablePointer<Float>, heads: Int, count: Int) {
        let hd = config.headDim, half = hd / 2
        let interleaved = weights.ropeStyle == .interleaved
        for t in 0..<count {
            let c = ropeCos.pointer + t * half, s = ropeSin.pointer + t * half
            for h in 0..<heads {
                let head = v + (t * heads + h) * hd
                for i in 0..<half {
                    let a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half
                    let x1 = head[a], x2 = head[b]
                    head[a] = x1 * c[i] - x2 * s[i]
                    head[b] = x2 * c[i] + x1 * s[i]
                }
            }
        }
    }

    /// Causal grouped-query attention of each segment's queries against its own cache, one
    /// key/value head per task: each task runs that head's group of query heads for every
    /// segment, reading each cached key and value once for the whole group.
    private func attention(layer: Int, _ segments: [Segment], out: UnsafeMutablePointer<Float>) {
        let hd = config.headDim, heads = config.heads, group = config.heads / config.kvHeads
        let qDim = heads * hd, kvDim = config.kvHeads * hd, q = self.q.pointer
        let span = segments.reduce(0) { max($0, $1.firstPosition + $1.count) }  // longest context
        let att = self.att.reserve(heads * span)
        let scale = 1 / sqrtf(Float(hd)), window = config.slidingWindow
        // Only a decode step over a few positions (mini: under 16) is cheaper on this thread
        // than on the pool, whose threads are still polling after the q/k/v product. Measured
        // (mini Q8_0, 256 tokens from a 2-token prompt, a scratch timer around this call):
        // inline up to 256 positions 70-76 ms in all, on the pool from 16 47-61 ms.
        let work = segments.reduce(0) { $0 + $1.count * ($1.firstPosition + $1.count) }
        let inline = work * heads * hd < 1 << 14
        let body = { (kv: Int) in
            let scores = att + kv * group * span, first = kv * group * hd
            for segment in segments {
                let keys = segment.cache.keys[layer] + kv * hd, values = segment.cache.values[layer] + kv * hd
                for i in 0..<segment.count {
                    let t = segment.row + i, pos = segment.firstPosition + i
                    let lo = window.map { max(0, pos - $0 + 1) } ?? 0
                    Kernels.attend(q: q + t * qDim + first, group: group, headDim: hd, keys: keys,
                                   values: values, stride: kvDim, positions: lo..<pos + 1, scale: scale,
                                   scores: scores, out: out + t * qDim + first)
                }
            }
        }
        if inline {
            for kv in 0..<config.kvHeads { body(kv) }
        } else {
            pool.parallelFor(config.kvHeads, body)
        }
    }

    /// Router logits, top-k on them, then float32 softmax over the k chosen (mistral-inference
    /// order; HF's softmax-over-all then renormalise is the same function).
    private func route(layer: Int, _ router: Matrix, _ xb: UnsafeMutablePointer<Float>, count T: Int) {
        let E = config.experts, K = config.expertsPerToken
        let r = routerLogits.reserve(T * E)
        product(router, xb, r, ldy: E, n: T)
        routes.removeAll()
        var traceIdx: [Int] = [], traceW: [Float] = []
        for t in 0..<T {
            let rt = r + t * E
            for j in 0..<K {  // highest first; ties keep the lower expert index
                var best = -1
                for e in 0..<E where !chosen[0..<j].contains(e) && (best < 0 || rt[e] > rt[best]) { best = e }
                chosen[j] = best
            }
            var sum: Float = 0
            for j in 0..<K { weight[j] = expf(rt[chosen[j]] - rt[chosen[0]]); sum += weight[j] }
            for j in 0..<K { weight[j] /= sum }
            if trace != nil { traceIdx += chosen; traceW += weight }
            // Routes in ascending expert order: the summation order every backend follows.
            chosenAscending.removeAll(keepingCapacity: true)
            for j in 0..<K { chosenAscending.append((chosen[j], weight[j])) }
            chosenAscending.sort { $0.expert < $1.expert }
            for c in chosenAscending { routes.append(token: t, expert: c.expert, weight: c.weight) }
        }
        if let trace {
            trace.routerLogits.append(Array(UnsafeBufferPointer(start: r, count: T * E)))
            trace.routerIndices.append(traceIdx)
            trace.routerWeights.append(traceW)
        }
    }

    // MARK: - Products

    /// y[t*ldy + r] = m[r,:] · x[t*m.cols + :], as a GEMV for one token.
    private func product(_ m: Matrix, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, ldy: Int, n: Int) {
        products.removeAll()
        products.append(MatMul(matrix: m, x: x, ldx: m.cols, n: n, y: y, ldy: ldy))
        runProducts()
    }

    /// Runs `products` in one dispatch, counting the weight bytes it streams.
    private func runProducts() {
        weightBytesRead += products.weightBytes
        products.run(pool: pool)
    }
}
