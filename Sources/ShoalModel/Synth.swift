import Foundation
import ShoalTensor
import ShoalTokenizer

/// Writes random-weight Mixtral checkpoints in the Hugging Face layout, with a generated
/// tokenizer, so that demos, tests and benchmarks need nothing from outside.
public enum Synth {
    /// Named shapes: `tiny` (the fixtures' size), `mini` (benchmarks), and Mixtral-8x7B's
    /// true dimensions with fewer layers.
    public static func preset(_ name: String, layers: Int? = nil) -> ModelConfig? {
        switch name {
        case "tiny":
            return ModelConfig(dim: 64, layers: layers ?? 2, heads: 4, kvHeads: 2, hiddenDim: 128, vocabSize: 32000)
        case "mini":
            return ModelConfig(dim: 1024, layers: layers ?? 8, heads: 16, kvHeads: 4, hiddenDim: 3584, vocabSize: 32000)
        case "real-layers", "real":
            return ModelConfig(dim: 4096, layers: layers ?? 32, heads: 32, kvHeads: 8, hiddenDim: 14336, vocabSize: 32000)
        default:
            return nil
        }
    }

    /// Writes `config` as a checkpoint folder at `folder`: `config.json`, `model.safetensors`
    /// (or shards of at most `maxShardBytes` plus an index), `tokenizer.model`.
    /// Weights are uniform with the variance of N(0, gain²/fan_in); norms are 1 ± 0.1.
    /// `progress` gets the bytes written so far, the total, and the tensor just written.
    public static func write(_ config: ModelConfig, to folder: String, dtype: DType = .bf16, seed: UInt64 = 0,
                             maxShardBytes: Int = 1 << 30,
                             progress: (_ done: Int, _ total: Int, _ tensor: String) -> Void = { _, _, _ in }) throws {
        try config.validate(source: "synth")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let specs = tensorSpecs(config)
        let type: ElementType = dtype == .f32 ? .f32 : .bf16

        // Greedy shard packing in tensor order.
        var shards: [[TensorSpec]] = [[]]
        var shardBytes = 0
        for spec in specs {
            let bytes = spec.count * type.size
            if shardBytes > 0 && shardBytes + bytes > maxShardBytes { shards.append([]); shardBytes = 0 }
            shards[shards.count - 1].append(spec)
            shardBytes += bytes
        }
        var weightMap: [String: String] = [:]
        let totalBytes = specs.reduce(0) { $0 + $1.count * type.size }
        var written = 0
        for (i, shard) in shards.enumerated() {
            let name = shards.count == 1 ? "model.safetensors"
                : String(format: "model-%05d-of-%05d.safetensors", i + 1, shards.count)
            let writer = try SafetensorsWriter(
                path: (folder as NSString).appendingPathComponent(name),
                tensors: shard.map { SafetensorsWriter.tensor($0.name, type, $0.shape) })
            for spec in shard {
                try writeRandom(spec, type: type, seed: seed, to: writer)
                weightMap[spec.name] = name
                written += spec.count * type.size
                progress(written, totalBytes, spec.name)
            }
            try writer.finish()
        }
        if shards.count > 1 {
            let total = specs.reduce(0) { $0 + $1.count * type.size }
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent("model.safetensors.index.json")))
        }
        try configJSON(config, dtype: dtype).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent("config.json")))
        let tokenizer = SentencePieceModelWriter.synthetic(vocabSize: config.vocabSize)
        try Data(tokenizer).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent("tokenizer.model")))
    }

    struct TensorSpec {
        let name: String
        let shape: [Int]
        /// Standard deviation of the weights; nil for a norm (1 ± 0.1).
        let std: Float?
        let index: Int
        var count: Int { shape.reduce(1, *) }
    }

    static func tensorSpecs(_ c: ModelConfig) -> [TensorSpec] {
        let hf = CheckpointLayout.huggingFace
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        var specs: [(TensorName, [Int], Float?)] = [(.embedding, [c.vocabSize, c.dim], 1)]
        func std(_ gain: Float, _ fanIn: Int) -> Float { gain / Float(fanIn).squareRoot() }
        for l in 0..<c.layers {
            specs += [
                (.attentionNorm(l), [c.dim], nil), (.ffnNorm(l), [c.dim], nil),
                (.wq(l), [q, c.dim], std(1.5, c.dim)), (.wk(l), [kv, c.dim], std(1.5, c.dim)),
                (.wv(l), [kv, c.dim], std(1, c.dim)), (.wo(l), [c.dim, q], std(1, q)),
                (.router(l), [c.experts, c.dim], std(2, c.dim)),
            ]
            for e in 0..<c.experts {
                specs += [
                    (.expert(l, e, "w1"), [c.hiddenDim, c.dim], std(1, c.dim)),
                    (.expert(l, e, "w2"), [c.dim, c.hiddenDim], std(1, c.hiddenDim)),
                    (.expert(l, e, "w3"), [c.hiddenDim, c.dim], std(1, c.dim)),
                ]
            }
        }
        specs += [(.finalNorm, [c.dim], nil), (.output, [c.vocabSize, c.dim], std(2, c.dim))]
        return specs.enumerated().map { TensorSpec(name: hf.name($1.0), shape: $1.1, std: $1.2, index: $0) }
    }

    /// Streams one tensor's random values in blocks, each tensor seeded on its own so the
    /// result does not depend on how tensors are sharded.
    static func writeRandom(_ spec: TensorSpec, type: ElementType, seed: UInt64, to writer: SafetensorsWriter) throws {
        var rng = Xoshiro256(seed: seed &* 0x9E37_79B9 &+ UInt64(spec.index))
        // Uniform on [-a, a] has variance a²/3.
        let a = (spec.std ?? 0.1) * Float(3).squareRoot()
        let center: Float = spec.std == nil ? 1 : 0
        // Writes of 2 MiB and more let the page cache keep large folios, which the loader maps
        // with huge pages (see SafetensorsFile).
        let block = min(1 << 20, spec.count)
        var f = [Float](repeating: 0, count: block)
        var h = [UInt16](repeating: 0, count: block)
        var done = 0
        while done < spec.count {
            let n = min(block, spec.count - done)
            for i in 0..<n { f[i] = center + a * (2 * rng.nextFloat() - 1) }
            if type == .f32 {
                try f.withUnsafeBytes { try writer.append(UnsafeRawBufferPointer(rebasing: $0[0..<(n * 4)])) }
            } else {
                for i in 0..<n { h[i] = floatToBF16(f[i]) }
                try h.withUnsafeBytes { try writer.append(UnsafeRawBufferPointer(rebasing: $0[0..<(n * 2)])) }
            }
            done += n
        }
    }

    /// A transformers 4.x style `config.json` (the style of the published Mixtral).
    static func configJSON(_ c: ModelConfig, dtype: DType) throws -> Data {
        let object: [String: Any] = [
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "hidden_size": c.dim, "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
            "num_key_value_heads": c.kvHeads, "head_dim": c.headDim, "intermediate_size": c.hiddenDim,
            "vocab_size": c.vocabSize, "num_local_experts": c.experts, "num_experts_per_tok": c.expertsPerToken,
            "rms_norm_eps": Double(c.normEps), "rope_theta": Double(c.ropeTheta),
            "max_position_embeddings": c.maxContext, "bos_token_id": c.bosId, "eos_token_id": c.eosId,
            "tie_word_embeddings": false, "hidden_act": "silu",
            "torch_dtype": dtype == .f32 ? "float32" : "bfloat16",
        ]
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }
}
