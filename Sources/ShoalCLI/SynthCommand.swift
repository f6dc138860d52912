import ArgumentParser
import Foundation
import ShoalModel
import ShoalTensor

/// `shoal synth`: a random-weight Mixtral checkpoint in the Hugging Face layout.
struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a random-weight Mixtral checkpoint (HF layout, with a generated tokenizer).",
        discussion: """
            Presets: tiny (dim 64, 2 layers), mini (vocab 32000, dim 1024, FFN 3584, 8 layers, \
            16 heads, 4 KV heads, 8 experts top-2), real-layers N (Mixtral-8x7B's dimensions, N layers).
            Other options override the preset's fields.
            """)

    @Option(help: "Folder to write.") var out: String
    @Option(parsing: .upToNextOption, help: "tiny | mini | real-layers N") var shape: [String] = ["tiny"]
    @Option(help: "Model width.") var dim: Int?
    @Option(help: "Decoder layers.") var layers: Int?
    @Option(help: "Experts per layer.") var experts: Int?
    @Option(help: "Experts chosen per token.") var expertsPerToken: Int?
    @Option(help: "Expert FFN width.") var hidden: Int?
    @Option(help: "Attention heads.") var heads: Int?
    @Option(help: "Key/value heads.") var kvHeads: Int?
    @Option(help: "Vocabulary size (>= 300).") var vocab: Int?
    @Option(help: "Context length.") var context: Int?
    @Option(help: "Weights dtype: bf16 or f32.") var dtype = "bf16"
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Largest shard in MiB; bigger checkpoints are sharded with an index.") var maxShardMib = 1024

    func run() throws {
        try reportingErrors {
            let name = shape.first ?? "tiny"
            let presetLayers = shape.count > 1 ? Int(shape[1]) : nil
            guard shape.count <= 2, shape.count == 1 || presetLayers != nil,
                  var config = Synth.preset(name, layers: presetLayers)
            else { throw UsageError.conflicting("--shape takes tiny, mini or real-layers N") }
            if let dim { config.dim = dim; config.headDim = dim / (heads ?? config.heads) }
            if let layers { config.layers = layers }
            if let experts { config.experts = experts }
            if let expertsPerToken { config.expertsPerToken = expertsPerToken }
            if let hidden { config.hiddenDim = hidden }
            if let heads { config.heads = heads; config.headDim = config.dim / heads }
            if let kvHeads { config.kvHeads = kvHeads }
            if let vocab { config.vocabSize = vocab }
            if let context { config.maxContext = context }
            guard config.vocabSize >= 300 else { throw UsageError.conflicting("--vocab must be at least 300") }
            guard let type = ["bf16": DType.bf16, "f32": .f32][dtype] else {
                throw UsageError.conflicting("--dtype takes bf16 or f32")
            }
            try writeSynth(config, to: out, dtype: type, seed: seed, maxShardBytes: maxShardMib << 20)
            print("wrote \(out): \(config.layers) layers, dim \(config.dim), \(config.experts) experts, vocab \(config.vocabSize), \(dtype)")
        }
    }
}

/// `Synth.write` with a progress bar on stderr, one step per layer.
func writeSynth(_ config: ModelConfig, to folder: String, dtype: DType = .bf16, seed: UInt64 = 0,
                maxShardBytes: Int = 1 << 30) throws {
    var bar: ProgressBar?
    try Synth.write(config, to: folder, dtype: dtype, seed: seed, maxShardBytes: maxShardBytes) { done, total, tensor in
        if bar == nil { bar = ProgressBar("synth", totalBytes: total) }
        // "model.layers.3.mlp…" → "layer 3"; the embedding and the head by name.
        let parts = tensor.split(separator: ".")
        let label = parts.count > 2 && parts[1] == "layers" ? "layer \(parts[2])" : tensor
        bar?.update(done, label: label)
    }
    bar?.finish()
}
