import ShoalTensor
import ShoalTokenizer

/// A model folder or GGUF file loaded for generation in one process: weights, tokenizer, compute pool.
public final class Engine {
    public let checkpoint: Checkpoint
    public let tokenizer: SentencePieceTokenizer
    public let model: MixtralModel
    public let generator: Generator
    public let pool: ComputePool

    /// Loads `folder` (either layout) on `threads` threads, with every expert local unless
    /// `experts` makes another backend (the cluster's remote experts); then no expert tensor
    /// of the folder is mapped here. `cpus` pins the threads (`ComputePool.init`); `quantize`
    /// quantizes float weights as they load (`Checkpoint.init`).
    public init(folder: String, threads: Int = Engine.defaultThreads, cpus: [Int] = [], quantize: QuantizationMix? = nil,
                experts makeExperts: ((Checkpoint, ComputePool) throws -> ExpertBackend)? = nil) throws {
        checkpoint = try Checkpoint(folder: folder, quantize: quantize)
        tokenizer = try checkpoint.loadTokenizer()
        pool = ComputePool(threads: threads, cpus: cpus)
        let experts = try makeExperts?(checkpoint, pool)
            ?? LocalExperts(store: try ExpertStore.load(checkpoint), pool: pool)
        model = MixtralModel(weights: try CoordinatorWeights(checkpoint: checkpoint), experts: experts, pool: pool)
        generator = Generator(model: model, tokenizer: tokenizer)
    }

    /// One thread per online core.
    public static var defaultThreads: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

#if canImport(Glibc)
import Glibc
#endif
