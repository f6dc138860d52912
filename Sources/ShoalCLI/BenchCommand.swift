import ArgumentParser
import Foundation
import ShoalModel
import ShoalTensor

/// `shoal bench`: prefill and decode speed, and decode's share of the memory bandwidth.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill and decode tokens/s and weight streaming against memory bandwidth.")

    @Option(help: "Model folder (Hugging Face or Mistral layout).") var model: String
    @Option(help: "Prompt length for the prefill measurement.") var promptTokens = 512
    @Option(help: "Tokens decoded per repeat.") var genTokens = 64
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Repeats; medians are reported.") var repeats = 3
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard promptTokens >= 1, genTokens >= 1, repeats >= 1, threads >= 1 else {
            throw ValidationError("--prompt-tokens, --gen-tokens, --repeats and --threads must be at least 1")
        }
    }

    func run() throws {
        try reportingErrors {
            let engine = try Engine(folder: model, threads: threads)
            let m = engine.model, config = m.config
            let local = m.experts as? LocalExperts
            var rng = Xoshiro256(seed: 7)
            let prompt = (0..<promptTokens).map { _ in 3 + Int(rng.next() % UInt64(config.vocabSize - 3)) }
            let cache = KVCache(config: config, capacity: promptTokens + genTokens)

            // Warm-up: fault in every mapped page once.
            cache.reset()
            _ = try m.forward(Array(prompt.prefix(8)), cache: cache)

            // The machine's bandwidth drifts with its neighbours' load from one second to the
            // next, so each repeat measures it between every `segment` decode tokens (and after
            // the last), and compares the decode with the mean of those readings.
            let segment = 16
            var prefill: [Double] = [], decode: [Double] = [], bytesPerToken: [Double] = []
            var bandwidths: [Double] = [], fractions: [Double] = []
            for _ in 0..<repeats {
                cache.reset()
                let t0 = now()
                var logits = try m.forward(prompt, cache: cache)
                prefill.append(Double(promptTokens) / (now() - t0))

                var readings: [Double] = [], decoding = 0.0, done = 0
                let bytes0 = m.weightBytesRead + (local?.weightBytesRead ?? 0)
                while done < genTokens {
                    readings.append(MemoryBandwidth.measureRead(pool: engine.pool, bytes: 256 << 20, repeats: 3))
                    let t1 = now()
                    for _ in 0..<min(segment, genTokens - done) {
                        logits = try m.forward([Sampler.argmax(logits)], cache: cache)
                        done += 1
                    }
                    decoding += now() - t1
                }
                readings.append(MemoryBandwidth.measureRead(pool: engine.pool, bytes: 256 << 20, repeats: 3))
                bandwidths.append(readings.reduce(0, +) / Double(readings.count))
                decode.append(Double(genTokens) / decoding)
                let bytes = m.weightBytesRead + (local?.weightBytesRead ?? 0) - bytes0
                bytesPerToken.append(Double(bytes + config.dim * m.weights.embedding.dtype.size) / Double(genTokens))
                fractions.append(decode.last! * bytesPerToken.last! / 1e9 / bandwidths.last!)
            }
            let decodeRate = median(decode), perToken = median(bytesPerToken), bandwidth = median(bandwidths)
            let weightsGBs = decodeRate * perToken / 1e9
            let report: [(String, Double)] = [
                ("prefill_tokens_per_s", median(prefill)), ("decode_tokens_per_s", decodeRate),
                ("weights_gb_per_s", weightsGBs), ("memory_read_gb_per_s", bandwidth),
                ("bandwidth_fraction", median(fractions)), ("weight_bytes_per_token", perToken),
            ]
            if json {
                let fields = report.map { "\"\($0.0)\":\(String(format: "%.4f", $0.1))" }
                    + ["\"threads\":\(threads)", "\"isa\":\(jsonString(Kernels.isa))",
                       "\"prompt_tokens\":\(promptTokens)", "\"gen_tokens\":\(genTokens)"]
                print("{" + fields.joined(separator: ",") + "}")
            } else {
                print("model: \(model) (\(config.layers) layers, dim \(config.dim), \(config.experts) experts, \(m.weights.embedding.dtype.rawValue))")
                print("threads: \(threads), kernels: \(Kernels.isa), repeats: \(repeats) (medians)")
                print(String(format: "prefill: %.1f tokens/s (%d-token prompt)", median(prefill), promptTokens))
                print(String(format: "decode:  %.1f tokens/s (%d tokens)", decodeRate, genTokens))
                print(String(format: "weights streamed: %.1f MB/token, %.2f GB/s", perToken / 1e6, weightsGBs))
                print(String(format: "memory read bandwidth: %.2f GB/s; decode reaches %.1f%% of it (median of per-repeat ratios; read measured every %d decode tokens)", bandwidth, 100 * median(fractions), segment))
            }
        }
    }
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
