import ShoalTensor
import ShoalTokenizer

/// A model folder or GGUF file loaded for generation in one process: weights, tokenizer, compute pool.
public final class Engine {
    public let checkpoint: Checkpoint
    public let tokenizer: SentencePieceTokenizer
    public let model: MixtralModel
    public let generator: Generator
    public let pool: ComputePool
    /// The experts this engine made itself (no `experts` backend given): they live in this process.
    public let localExperts: ExpertStore?

    /// Loads `folder` (either layout) on `threads` threads, with every expert local unless
    /// `experts` makes another backend (the cluster's remote experts); then no expert tensor
    /// of the folder is mapped here. `cpus` pins the threads (`ComputePool.init`); `quantize`
    /// quantizes float weights as they load (`Checkpoint.init`).
    public init(folder: String, threads: Int = Engine.defaultThreads, cpus: [Int] = [], quantize: QuantizationMix? = nil,
                experts makeExperts: ((Checkpoint, ComputePool) throws -> ExpertBackend)? = nil) throws {
        checkpoint = try Checkpoint(folder: folder, quantize: quantize)
        tokenizer = try checkpoint.loadTokenizer()
        pool = ComputePool(threads: threads, cpus: cpus)
        let experts: ExpertBackend
        if let makeExperts {
            experts = try makeExperts(checkpoint, pool)
            localExperts = nil
        } else {
            let store = try ExpertStore.load(checkpoint)
            experts = LocalExperts(store: store, pool: pool)
            localExperts = store
        }
        model = MixtralModel(weights: try CoordinatorWeights(checkpoint: checkpoint), experts: experts, pool: pool)
        generator = Generator(model: model, tokenizer: tokenizer)
    }

    /// Reads every page of the weights this process computes with (the coordinator's
    /// matrices, and the experts when they are local) into memory, so the first requests do
    /// not page them in from disk; `progress(bytesDone, bytesTotal)` after each matrix.
    public func preload(progress: (Int, Int) -> Void = { _, _ in }) {
        MappedPages.touch(model.weights.matrices + (localExperts?.matrices ?? []), progress: progress)
    }

    /// One thread per online core.
    public static var defaultThreads: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

#if canImport(Glibc)
import Glibc
#endif
