import ShoalTensor

/// One layer's weights that the coordinator keeps: attention, norms and the router.
public struct LayerWeights: Sendable {
    public let attentionNorm: [Float]  // (dim,)
    public let wq: Matrix  // (heads*headDim, dim)
    public let wk: Matrix  // (kvHeads*headDim, dim)
    public let wv: Matrix  // (kvHeads*headDim, dim)
    public let wo: Matrix  // (dim, heads*headDim)
    public let ffnNorm: [Float]  // (dim,)
    public let router: Matrix  // (experts, dim)
}

/// Everything but the experts: what a coordinator maps.
public final class CoordinatorWeights: Sendable {
    public let config: ModelConfig
    public let ropeStyle: RopeStyle
    public let embedding: Matrix  // (vocab, dim)
    public let output: Matrix  // (vocab, dim)
    public let finalNorm: [Float]  // (dim,)
    public let layers: [LayerWeights]
    /// Keeps the mapped files alive as long as the matrices that point into them.
    public let checkpoint: Checkpoint

    public init(checkpoint: Checkpoint) throws {
        let c = checkpoint.config
        self.checkpoint = checkpoint
        config = c
        ropeStyle = checkpoint.ropeStyle
        embedding = try checkpoint.matrix(.embedding, rows: c.vocabSize, cols: c.dim)
        output = c.tiedEmbeddings ? embedding : try checkpoint.matrix(.output, rows: c.vocabSize, cols: c.dim)
        finalNorm = try checkpoint.vector(.finalNorm, count: c.dim)
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        layers = try (0..<c.layers).map { l in
            LayerWeights(
                attentionNorm: try checkpoint.vector(.attentionNorm(l), count: c.dim),
                wq: try checkpoint.matrix(.wq(l), rows: q, cols: c.dim),
                wk: try checkpoint.matrix(.wk(l), rows: kv, cols: c.dim),
                wv: try checkpoint.matrix(.wv(l), rows: kv, cols: c.dim),
                wo: try checkpoint.matrix(.wo(l), rows: c.dim, cols: q),
                ffnNorm: try checkpoint.vector(.ffnNorm(l), count: c.dim),
                router: try checkpoint.matrix(.router(l), rows: c.experts, cols: c.dim))
        }
    }

    /// The matrices mapped from the file, in the order a forward pass reads them (the
    /// output matrix once, even when it is the embedding).
    public var matrices: [Matrix] {
        [embedding] + layers.flatMap { [$0.wq, $0.wk, $0.wv, $0.wo, $0.router] }
            + (config.tiedEmbeddings ? [] : [output])
    }
}

/// One (layer, expert) pair.
public struct ExpertKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let layer: Int
    public let expert: Int
    public init(layer: Int, expert: Int) { self.layer = layer; self.expert = expert }
    public static func < (a: Self, b: Self) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
    public var description: String { "layer \(layer) expert \(expert)" }
}

/// One SwiGLU expert: out = w2 · (silu(w1 · x) ⊙ (w3 · x)).
public struct ExpertWeights: Sendable {
    public let w1: Matrix  // (hiddenDim, dim) gate projection
    public let w2: Matrix  // (dim, hiddenDim) down projection
    public let w3: Matrix  // (hiddenDim, dim) up projection
}

/// The experts a process holds, mapped from a checkpoint; nothing else of the model.
public final class ExpertStore: Sendable {
    public let config: ModelConfig
    public let experts: [ExpertKey: ExpertWeights]
    public let checkpoint: Checkpoint

    /// Maps the experts in `pairs` (all of them when nil).
    public static func load(_ checkpoint: Checkpoint, pairs: Set<ExpertKey>? = nil) throws -> ExpertStore {
        let c = checkpoint.config
        let keys = pairs ?? Set((0..<c.layers).flatMap { l in (0..<c.experts).map { ExpertKey(layer: l, expert: $0) } })
        var experts: [ExpertKey: ExpertWeights] = [:]
        for key in keys.sorted() {
            guard key.layer >= 0, key.layer < c.layers, key.expert >= 0, key.expert < c.experts else {
                throw ModelLoadError.badConfig(
                    file: checkpoint.folder,
                    detail: "\(key) is outside the model's \(c.layers) layers × \(c.experts) experts")
            }
            experts[key] = ExpertWeights(
                w1: try checkpoint.matrix(.expert(key.layer, key.expert, "w1"), rows: c.hiddenDim, cols: c.dim),
                w2: try checkpoint.matrix(.expert(key.layer, key.expert, "w2"), rows: c.dim, cols: c.hiddenDim),
                w3: try checkpoint.matrix(.expert(key.layer, key.expert, "w3"), rows: c.hiddenDim, cols: c.dim))
        }
        return ExpertStore(config: c, experts: experts, checkpoint: checkpoint)
    }

    private init(config: ModelConfig, experts: [ExpertKey: ExpertWeights], checkpoint: Checkpoint) {
        self.config = config
        self.experts = experts
        self.checkpoint = checkpoint
    }

    /// Bytes of weights held.
    public var byteCount: Int { experts.values.reduce(0) { $0 + $1.w1.byteCount + $1.w2.byteCount + $1.w3.byteCount } }

    /// The held matrices in ascending (layer, expert) order, w1, w3, w2 of each.
    public var matrices: [Matrix] {
        experts.keys.sorted().flatMap { [experts[$0]!.w1, experts[$0]!.w3, experts[$0]!.w2] }
    }

    /// Reads every page of the held weights into memory, in `matrices` order, calling
    /// `progress(bytesDone, bytesTotal)` after each matrix.
    public func preload(progress: (Int, Int) -> Void = { _, _ in }) {
        MappedPages.touch(matrices, progress: progress)
    }

    /// Bytes of weights held per stored type (a Q4_K_M file mixes Q4_K and Q6_K experts),
    /// largest first.
    public var bytesByType: [(type: DType, bytes: Int)] {
        var total: [DType: Int] = [:]
        for e in experts.values { for m in [e.w1, e.w2, e.w3] { total[m.dtype, default: 0] += m.byteCount } }
        return total.map { ($0.key, $0.value) }.sorted { ($0.bytes, $0.type.rawValue) > ($1.bytes, $1.type.rawValue) }
    }
}
