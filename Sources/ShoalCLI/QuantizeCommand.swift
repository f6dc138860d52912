import ArgumentParser
import Foundation
import ShoalModel
import ShoalTensor

/// `shoal quantize`: a checkpoint to a GGUF file in one of llama.cpp's quantization mixes.
struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a model as a GGUF file (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, or bf16/f32) that Shoal and llama.cpp read.")

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @Option(name: .customLong("type"), help: "The mix: \(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mix: QuantizationMix
    @Option(help: "The GGUF file to write.") var out: String
    @Option(help: "Threads quantizing rows (default: one per core).") var threads = Engine.defaultThreads

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            try writeGGUF(try Checkpoint(folder: model), mix: mix, to: out, threads: threads)
            let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            print("wrote \(out): \(formatBytes(size)), \(mix.rawValue)")
        }
    }
}

extension QuantizationMix: ExpressibleByArgument {}

/// Writes `checkpoint` as a GGUF file at `path` in `mix` with a progress bar on stderr: into
/// `path.partial` first, renamed at the end, so an interrupted write never leaves a file that
/// looks whole (the partial one is removed on error).
func writeGGUF(_ checkpoint: Checkpoint, mix: QuantizationMix, to path: String, threads: Int) throws {
    let partial = path + ".partial"
    var bar: ProgressBar?
    do {
        try GGUFExport.write(checkpoint, mix: mix, to: partial, pool: ComputePool(threads: threads)) { step in
            if bar == nil { bar = ProgressBar("quantize \(mix.rawValue)", totalBytes: step.bytesTotal) }
            bar?.update(step.bytesDone, label: step.tensor.isEmpty ? "" : "tensor \(step.tensorIndex + 1)/\(step.tensorCount) \(step.tensor)")
        }
        bar?.finish()
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: partial, toPath: path)
    } catch {
        try? FileManager.default.removeItem(atPath: partial)
        throw error
    }
}
