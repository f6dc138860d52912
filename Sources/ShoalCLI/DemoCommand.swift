import ArgumentParser
import Dispatch
import Foundation
import ShoalCluster
import ShoalModel
import ShoalRPC
import ShoalServe
import ShoalTensor

/// `shoal demo`: the whole cluster on one machine. Worker processes on loopback, a
/// generation through them streamed to the terminal, then the same generation in one process,
/// and what the distribution cost; then `shoal serve` over the same workers, measured with
/// concurrent streaming clients.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a model across expert-worker processes on this machine and compare with one process.",
        discussion: """
            Without --model it writes a random-weight `mini` checkpoint (1.5 GB, bf16) into --cache
            once and reuses it. The workers split the experts into contiguous ranges; they are
            stopped when the demo ends, also on Ctrl-C. Then the coordinator is served over HTTP
            on loopback and --serve-streams clients at a time stream completions from it. Last,
            with the cached mini model, the same generation runs on workers holding it quantized
            (--quantized, written once into the cache as GGUF).
            """)

    @Option(help: "Model folder (either layout); default: the cached random mini model.") var model: String?
    @Option(help: "Where the random mini model is kept.") var cache = DemoCommand.defaultCache
    @Option(help: "Worker processes to start.") var workers = 4
    // One per core, as `shoal worker` defaults to: measured here (2 cores, 4 workers) decode
    // went from 0.60-0.66x of one process with 1 thread per worker to 0.67-0.75x with 2, as a
    // worker holding both of a token's experts no longer computes them on one core.
    @Option(help: "Compute threads per worker (default: one per core).") var workerThreads = Engine.defaultThreads
    @Option(help: "Coordinator compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Prompt text.") var prompt = "The shoal of small machines"
    @Option(help: "Tokens to generate (greedy; end-of-sequence ignored).") var maxTokens = 48
    @Option(name: .customLong("wire-dtype"), help: "Activations on the wire: f32 (exact) or bf16.") var wireDType: WireDTypeArgument = .bf16
    @Option(help: "Concurrent streams served, per round (comma-separated).") var serveStreams = "1,8"
    @Flag(name: .customLong("pin-cpus"), inversion: .prefixedNo, help: "Pin the coordinator's and the workers' threads to CPUs, worker i starting i CPUs along (README: the cluster on one machine).")
    var pinCPUs = true
    @Option(help: "With the cached mini model: also run it quantized by this mix (written once into the cache as GGUF), or none.")
    var quantized = "q4_k_m"

    static var defaultCache: String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        return base + "/shoal/mini"
    }

    func validate() throws {
        guard workers >= 1, workerThreads >= 1, threads >= 1, maxTokens >= 2 else {
            throw ValidationError("need --workers, --worker-threads, --threads >= 1 and --max-tokens >= 2")
        }
        _ = try parseCounts(serveStreams)
        guard quantized == "none" || QuantizationMix(rawValue: quantized) != nil else {
            throw ValidationError("--quantized \(quantized): expected none or one of \(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        try reportingErrors {
            let folder = try model ?? cachedMini()
            let experts = try Checkpoint(folder: folder).config.experts
            // The workers and the coordinator talk over mutual TLS, as a real cluster does, with
            // certificates from an authority made for this run.
            let certificates = try LoopbackCertificates()
            defer { certificates.remove() }
            let fleet = WorkerFleet()
            let stopOnSignal = fleet.stopOnSignals()
            defer { fleet.stopAll(); withExtendedLifetime(stopOnSignal) {} }

            let plan = LocalCPUPlan(workers: workers, workerThreads: workerThreads, threads: threads, pin: pinCPUs)
            say("starting \(workers) workers on loopback (mutual TLS, an authority made for this run); each says when ready")
            let addresses = try fleet.startSplit(folder: folder, experts: experts, workers: workers,
                                                 threads: workerThreads, cpus: plan.workers,
                                                 tls: certificates.workerFolder, name: "demo-worker")
            for (i, line) in fleet.readyLines.enumerated() { say("worker \(i): \(line)") }
            // The quantized workers start now too: processes started later would inherit the
            // CPU the coordinator's thread is pinned to once it has computed.
            let quantizedFleet = WorkerFleet()
            let stopQuantizedOnSignal = quantizedFleet.stopOnSignals()
            defer { quantizedFleet.stopAll(); withExtendedLifetime(stopQuantizedOnSignal) {} }
            var quantizedRun: (mix: QuantizationMix, path: String, addresses: [String])?
            if model == nil, let mix = QuantizationMix(rawValue: quantized) {
                let path = try cachedQuantized(mix, from: folder)
                say("starting \(workers) more workers on the \(mix.rawValue) file, for the last part")
                let addresses = try quantizedFleet.startSplit(folder: path, experts: experts, workers: workers,
                                                              threads: workerThreads, cpus: plan.workers,
                                                              tls: certificates.workerFolder, name: "demo-\(mix.rawValue)-worker")
                quantizedRun = (mix, path, addresses)
            }

            let parameters = GenerationParameters(maxTokens: maxTokens, ignoreEOS: true)
            say("\n== \(workers) workers on loopback, mutual TLS, \(wireDType.rawValue) wire: \(prompt)", terminator: "")
            let (remoteEngine, remote) = try clusterEngine(folder: folder, threads: threads, cpus: plan.coordinator,
                                                           workers: addresses, wire: wireDType.value,
                                                           security: certificates.coordinator.security)
            let ids = remoteEngine.tokenizer.encode(prompt, bos: true)
            let clustered = try remoteEngine.generator.generate(prompt: ids, parameters: parameters) { piece in
                FileHandle.standardOutput.write(Data(piece.utf8))
            }
            let decodeStats = remote.stats.summary { $0.tokens == 1 }
            let prefillStats = remote.stats.summary { $0.tokens > 1 }

            say("\n\n== one process, all experts local")
            let local = try Engine(folder: folder, threads: threads, cpus: plan.coordinator)
            let single = try local.generator.generate(prompt: ids, parameters: parameters)

            func row(_ name: String, _ a: String, _ b: String) {
                say(name.padding(toLength: 18, withPad: " ", startingAt: 0)
                    + String(repeating: " ", count: max(0, 14 - a.count)) + a
                    + String(repeating: " ", count: max(0, 14 - b.count)) + b)
            }
            row("", "prefill tok/s", "decode tok/s")
            row("\(workers) workers", String(format: "%.1f", clustered.prefillTokensPerSecond),
                String(format: "%.1f", clustered.decodeTokensPerSecond))
            row("single process", String(format: "%.1f", single.prefillTokensPerSecond),
                String(format: "%.1f", single.decodeTokensPerSecond))
            say(String(format: "decode speed, cluster / single: %.2f×",
                         clustered.decodeTokensPerSecond / max(single.decodeTokensPerSecond, 1e-9))
                + " (one pair of runs; `shoal bench --model \(folder) --workers \(workers)` repeats them)")
            say("prefill " + prefillStats.line)
            say("decode  " + decodeStats.line)
            say(sameTokensLine(clustered.ids == single.ids, wire: wireDType))
            say("workers' resident memory: " + fleet.residentLine())

            // The same coordinator as a service: each step batches every stream's token, so a
            // layer's experts get one call per worker for all of them.
            var options = PromptServer.Options()
            options.http = "127.0.0.1:0"
            options.grpc = nil
            options.modelName = "demo"
            let server = try PromptServer(engine: remoteEngine, cluster: remote, options: options)
            defer { server.shutdown(grace: .zero) }
            say("\n== shoal serve on http://127.0.0.1:\(server.httpPort!) over the same workers: "
                + "streams of \(maxTokens) greedy tokens at once (tokens/s: all streams, prefill included)")
            let load = LoadGenerator(host: "127.0.0.1", port: server.httpPort!, maxTokens: maxTokens, promptWords: 8)
            try load.report(counts: try parseCounts(serveStreams), rounds: 1, print: { say($0) })

            if let run = quantizedRun {
                try runQuantized(run.mix, path: run.path, fleet: quantizedFleet, addresses: run.addresses,
                                 security: certificates.coordinator.security, plan: plan,
                                 ids: ids, parameters: parameters, bf16Decode: single.decodeTokensPerSecond)
            }
            say("stopping the server and the workers")
        }
    }

    /// The cached model quantized by `mix` as a GGUF file beside it, written once.
    private func cachedQuantized(_ mix: QuantizationMix, from folder: String) throws -> String {
        let path = cache + ".\(mix.rawValue).gguf"
        if FileManager.default.fileExists(atPath: path) { return path }
        say("writing the mini model quantized as \(mix.rawValue) to \(path) (once)")
        try writeGGUF(try Checkpoint(folder: folder), mix: mix, to: path, threads: threads)
        return path
    }

    /// The same generation with quantized weights: workers on the GGUF file, their memory, and
    /// decode through them beside one process.
    private func runQuantized(_ mix: QuantizationMix, path: String, fleet: WorkerFleet, addresses: [String],
                              security: RPCSecurity, plan: LocalCPUPlan, ids: [Int], parameters: GenerationParameters, bf16Decode: Double) throws {
        say("\n== the same with \(mix.rawValue) weights (\(path))")
        for (i, line) in fleet.readyLines.enumerated() { say("worker \(i): \(line)") }
        say("\n== \(workers) workers holding \(mix.rawValue) experts, \(wireDType.rawValue) wire: \(prompt)", terminator: "")
        let (engine, _) = try clusterEngine(folder: path, threads: threads, cpus: plan.coordinator, workers: addresses,
                                            wire: wireDType.value, security: security)
        let clustered = try engine.generator.generate(prompt: ids, parameters: parameters) { piece in
            FileHandle.standardOutput.write(Data(piece.utf8))
        }
        let single = try Engine(folder: path, threads: threads, cpus: plan.coordinator).generator
            .generate(prompt: ids, parameters: parameters)
        say("\n" + String(format: "decode tok/s: %d workers %.1f, single process %.1f (bf16 above: %.1f), cluster / single %.2f×",
                          workers, clustered.decodeTokensPerSecond, single.decodeTokensPerSecond, bf16Decode,
                          clustered.decodeTokensPerSecond / max(single.decodeTokensPerSecond, 1e-9)))
        say(sameTokensLine(clustered.ids == single.ids, wire: wireDType))
        say("workers' resident memory: " + fleet.residentLine())
    }

    /// The random mini checkpoint in `cache`, written first if missing (into a temporary
    /// folder renamed at the end, so an interrupted write is never mistaken for a model).
    private func cachedMini() throws -> String {
        if FileManager.default.fileExists(atPath: cache + "/config.json") {
            say("using the random-weight mini model cached in \(cache)")
            return cache
        }
        say("writing a random-weight mini model to \(cache) (1.5 GB, once)")
        let partial = cache + ".partial-\(getpid())"
        try? FileManager.default.removeItem(atPath: partial)
        try writeSynth(Synth.preset("mini")!, to: partial)
        try? FileManager.default.removeItem(atPath: cache)
        try FileManager.default.moveItem(atPath: partial, toPath: cache)
        return cache
    }
}

/// Whether the cluster's greedy tokens matched one process's, and why they may not.
func sameTokensLine(_ same: Bool, wire: WireDTypeArgument) -> String {
    "same tokens as one process: \(same ? "yes" : "no")"
        + (same || wire == .f32 ? "" : " (the bf16 wire rounds activations; --wire-dtype f32 is exact)")
}

/// Writes to stdout unbuffered, in order with the streamed text (which is written the same way).
func say(_ s: String, terminator: String = "\n") {
    FileHandle.standardOutput.write(Data((s + terminator).utf8))
}
