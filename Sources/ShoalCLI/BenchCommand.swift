import ArgumentParser
import Foundation
import ShoalCluster
import ShoalModel
import ShoalTensor

/// `shoal bench`: prefill and decode speed, and decode's share of the memory bandwidth; with
/// `--workers N`, the same decode through N loopback expert workers beside the single process.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill and decode tokens/s and weight streaming against memory bandwidth.")

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @Option(help: "Prompt length for the prefill measurement.") var promptTokens = 512
    @Option(help: "Tokens decoded per repeat.") var genTokens = 64
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Repeats; medians are reported.") var repeats = 3
    @Option(help: "Expert workers to start on loopback: each repeat then decodes in one process and through them, in alternating order, and the ratio is reported.")
    var workers: Int?
    @Option(help: "Compute threads per worker (default: one per core).") var workerThreads = Engine.defaultThreads
    @Option(name: .customLong("wire-dtype"), help: "Activations on the wire with --workers: f32 (exact) or bf16.")
    var wireDType: WireDTypeArgument = .bf16
    @Flag(name: .customLong("pin-cpus"), inversion: .prefixedNo, help: "With --workers: pin the single process's, the coordinator's and the workers' threads to CPUs, worker i starting i CPUs along (README: the cluster on one machine).")
    var pinCPUs = true
    @Flag(help: "With --workers: the workers and the coordinator talk over mutual TLS (certificates made for the run), as a real cluster does.")
    var tls = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard promptTokens >= 1, genTokens >= 1, repeats >= 1, threads >= 1, workerThreads >= 1 else {
            throw ValidationError("--prompt-tokens, --gen-tokens, --repeats, --threads and --worker-threads must be at least 1")
        }
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            if let workers { return try runCluster(workers: workers) }
            // The experts made here, so their bytes read are counted without reaching through
            // the engine's `ExpertBackend`.
            nonisolated(unsafe) var made: LocalExperts?
            let engine = try Engine(folder: model, threads: threads) { checkpoint, pool in
                let experts = LocalExperts(store: try ExpertStore.load(checkpoint), pool: pool)
                made = experts
                return experts
            }
            let m = engine.model, config = m.config
            let local = made
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
                bytesPerToken.append(Double(bytes + m.weights.embedding.rowBytes) / Double(genTokens))
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
                let fields = jsonFields(report)
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

extension BenchCommand {
    /// Single process and cluster, repeat by repeat: which one runs first alternates, so a
    /// drift in the machine's speed (its neighbours) weighs on both; the ratio is taken per
    /// repeat and its median reported.
    private func runCluster(workers: Int) throws {
        let plan = LocalCPUPlan(workers: workers, workerThreads: workerThreads, threads: threads, pin: pinCPUs)
        let single = try Engine(folder: model, threads: threads, cpus: plan.coordinator)
        let config = single.model.config
        let certificates = tls ? try LoopbackCertificates() : nil
        defer { certificates?.remove() }
        let fleet = WorkerFleet()
        let stopOnSignal = fleet.stopOnSignals()
        defer { fleet.stopAll(); withExtendedLifetime(stopOnSignal) {} }
        let addresses = try fleet.startSplit(folder: model, experts: config.experts, workers: workers,
                                             threads: workerThreads, cpus: plan.workers,
                                             tls: certificates?.workerFolder, name: "bench-worker")
        let (cluster, remote) = try clusterEngine(folder: model, threads: threads, cpus: plan.coordinator,
                                                  workers: addresses, wire: wireDType.value,
                                                  security: certificates?.coordinator.security ?? .insecure)

        var rng = Xoshiro256(seed: 7)
        let prompt = (0..<promptTokens).map { _ in 3 + Int(rng.next() % UInt64(config.vocabSize - 3)) }
        /// Prefill and greedy decode tokens/s, and the tokens decoded.
        struct Run { var prefill: Double, decode: Double, ids: [Int] }
        func measure(_ m: MixtralModel) throws -> Run {
            let cache = KVCache(config: config, capacity: promptTokens + genTokens)
            let t0 = now()
            var logits = try m.forward(prompt, cache: cache)
            let t1 = now()
            var ids: [Int] = []
            for _ in 0..<genTokens {
                ids.append(Sampler.argmax(logits))
                logits = try m.forward([ids.last!], cache: cache)
            }
            return Run(prefill: Double(promptTokens) / (t1 - t0), decode: Double(genTokens) / (now() - t1), ids: ids)
        }
        // Warm-up: each side's mapped weights faulted in, the workers' streams open.
        for m in [single.model, cluster.model] {
            _ = try m.forward(Array(prompt.prefix(8)), cache: KVCache(config: config, capacity: 8))
        }
        remote.stats.reset()

        var rows: [(single: Run, cluster: Run)] = []
        for r in 0..<repeats {
            if r % 2 == 0 {
                let s = try measure(single.model)
                rows.append((s, try measure(cluster.model)))
            } else {
                let c = try measure(cluster.model)
                rows.append((try measure(single.model), c))
            }
        }
        let ratios = rows.map { $0.cluster.decode / $0.single.decode }
        let singleDecode = median(rows.map(\.single.decode)), clusterDecode = median(rows.map(\.cluster.decode))
        let singlePrefill = median(rows.map(\.single.prefill)), clusterPrefill = median(rows.map(\.cluster.prefill))
        let decodeCalls = remote.stats.summary { $0.tokens == 1 }
        let same = rows.allSatisfy { $0.single.ids == $0.cluster.ids }
        let micros = { (d: Duration) in Double(d / .microseconds(1)) }

        if json {
            let numbers: [(String, Double)] = [
                ("single_prefill_tokens_per_s", singlePrefill), ("cluster_prefill_tokens_per_s", clusterPrefill),
                ("single_decode_tokens_per_s", singleDecode), ("cluster_decode_tokens_per_s", clusterDecode),
                ("decode_ratio", median(ratios)),
                ("fanout_median_us", micros(decodeCalls.fanOut(percentile: 50))),
                ("fanout_mean_us", micros(decodeCalls.meanFanOut)),
                ("fanout_p99_us", micros(decodeCalls.fanOut(percentile: 99))),
                ("worker_compute_median_us", micros(decodeCalls.medianWorkerCompute)),
                ("sent_bytes_per_token", decodeCalls.sentPerToken),
                ("received_bytes_per_token", decodeCalls.receivedPerToken),
            ]
            let fields = jsonFields(numbers)
                + ["\"decode_ratios\":[\(ratios.map { String(format: "%.4f", $0) }.joined(separator: ","))]",
                   "\"workers\":\(workers)", "\"worker_threads\":\(workerThreads)", "\"threads\":\(threads)",
                   "\"pinned\":\(!plan.coordinator.isEmpty)", "\"tls\":\(tls)",
                   "\"wire_dtype\":\(jsonString(wireDType.rawValue))", "\"same_tokens\":\(same)",
                   "\"prompt_tokens\":\(promptTokens)", "\"gen_tokens\":\(genTokens)"]
            print("{" + fields.joined(separator: ",") + "}")
            return
        }
        print("model: \(model) (\(config.layers) layers, dim \(config.dim), \(config.experts) experts)")
        print("\(workers) workers on loopback, \(workerThreads) threads each, \(wireDType.rawValue) wire, "
              + (tls ? "mutual TLS; " : "plaintext; ")
              + "coordinator and single process \(threads) threads; kernels: \(Kernels.isa)")
        print(plan.coordinator.isEmpty ? "threads not pinned"
              : "threads pinned: single process and coordinator to CPUs \(cpusArgument(plan.coordinator)), "
                + plan.workers.enumerated().map { "worker \($0) to \(cpusArgument($1))" }.joined(separator: ", "))
        print("repeat  single decode  cluster decode   ratio  (tokens/s, \(genTokens) tokens after a \(promptTokens)-token prompt)")
        func line(_ label: String, _ a: Double, _ b: Double, _ ratio: Double) {
            print(label.padding(toLength: 6, withPad: " ", startingAt: 0)
                  + String(format: "%15.1f %15.1f %7.2f×", a, b, ratio))
        }
        for (r, row) in rows.enumerated() {
            line("\(r + 1)" + (r % 2 == 0 ? "" : "*"), row.single.decode, row.cluster.decode, ratios[r])
        }
        line("median", singleDecode, clusterDecode, median(ratios))
        print("(* the cluster ran first; the median ratio is the median of the per-repeat ratios)")
        print(String(format: "prefill: single %.1f tokens/s, cluster %.1f tokens/s (medians)", singlePrefill, clusterPrefill))
        print("decode " + decodeCalls.line)
        print(sameTokensLine(same, wire: wireDType))
    }
}

/// `"name":value` with four decimals, for the one-line JSON reports.
private func jsonFields(_ numbers: [(String, Double)]) -> [String] {
    numbers.map { "\"\($0.0)\":\(String(format: "%.4f", $0.1))" }
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
