import ArgumentParser
import Dispatch
import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalServe

/// `shoal serve`: the coordinator as a service (OpenAI HTTP API, gRPC prompt API, metrics).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve prompts over an OpenAI-compatible HTTP API and a gRPC API, with continuous batching.",
        discussion: """
            HTTP: POST /v1/chat/completions, POST /v1/completions (stream: true for server-sent
            events), GET /v1/models, GET /health (200 when every expert has a live holder),
            GET /metrics (Prometheus). gRPC: shoal.v1.Coordinator (shoal chat / shoal generate
            --coordinator). Prints one ready line on stdout once listening; SIGINT or SIGTERM
            stops taking requests, lets running ones finish for --grace seconds, then exits 0.
            """)

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @OptionGroup var cluster: ClusterOptions
    @Option(help: "HTTP address, HOST:PORT (port 0: any free port; 'off': no HTTP).") var http = "127.0.0.1:8080"
    @Option(help: "gRPC address, HOST:PORT (port 0: any free port; 'off': no gRPC).") var grpc = "127.0.0.1:7000"
    @Option(help: "Most sequences decoding together.") var maxBatch = 16
    @Option(help: "Most requests waiting for a place; more get HTTP 429.") var maxQueue = 64
    @Option(help: "KV-cache positions across all running sequences (default: 4 GiB worth).")
    var kvCacheTokens: Int?
    @Option(help: "Most tokens per step: one per decoding sequence, the rest prompt chunks.") var stepTokens = 128
    @Option(help: "Tokens a request may generate when it sets no max_tokens.") var defaultMaxTokens = 1024
    @Option(help: "The model id clients use (default: the folder's name).") var modelName: String?
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info
    @Option(help: "Seconds running requests get to finish at shutdown.") var grace: Double = 10

    func validate() throws {
        guard maxBatch >= 1, maxQueue >= 0, stepTokens >= 1, threads >= 1, defaultMaxTokens >= 1 else {
            throw ValidationError(
                "--max-batch, --step-tokens, --default-max-tokens and --threads must be at least 1, --max-queue at least 0")
        }
        if let kvCacheTokens, kvCacheTokens < 1 { throw ValidationError("--kv-cache-tokens must be at least 1") }
        guard grace >= 0 else { throw ValidationError("--grace must not be negative") }
    }

    func run() throws {
        try reportingErrors {
            bootstrapLogging(logLevel)
            let log = Logger(label: "shoal.serve")
            let stop = StopSignal()
            // Workers may come up after the service (systemd starts them in any order): /health
            // is 503 until every pair has a live holder.
            let engine = try cluster.engine(folder: model, threads: threads, startWithMissingPairs: true)
            let config = engine.model.config
            let bytesPerToken = config.kvCacheBytesPerPosition
            var options = PromptServer.Options()
            options.http = http == "off" ? nil : http
            options.grpc = grpc == "off" ? nil : grpc
            options.modelName = modelName ?? URL(fileURLWithPath: model).standardizedFileURL.lastPathComponent
            options.scheduler.maxBatch = maxBatch
            options.scheduler.maxQueue = maxQueue
            options.scheduler.stepTokens = stepTokens
            options.scheduler.defaultMaxTokens = defaultMaxTokens
            options.scheduler.kvCacheTokens = kvCacheTokens ?? max(1, (4 << 30) / bytesPerToken)
            let server = try PromptServer(engine: engine, options: options, log: log)
            let kv = options.scheduler.kvCacheTokens
            let experts = (engine.model.experts as? RemoteExperts).map { remote in
                "\(remote.workers.count) workers" + (remote.coverage.isComplete ? "" : ", some pairs not served yet: /health is 503")
            } ?? "local experts"
            // Written unbuffered: whoever started us may wait for this line on a pipe.
            FileHandle.standardOutput.write(Data((
                "shoal serve ready: http \(server.httpPort.map { address(http, $0) } ?? "off"), "
                    + "grpc \(server.grpcPort.map { address(grpc, $0) } ?? "off"), model \(options.modelName) "
                    + "(\(experts)), batch \(maxBatch), KV cache \(kv) tokens (\(formatBytes(kv * bytesPerToken)))\n").utf8))
            stop.wait()
            log.info("stopping", metadata: ["grace_seconds": "\(grace)"])
            server.shutdown(grace: .milliseconds(Int64(grace * 1000)))
            log.info("stopped")
        }
    }

    /// `listen` with the bound port in place of the one asked for (0).
    private func address(_ listen: String, _ port: Int) -> String {
        "\(listen[..<(listen.lastIndex(of: ":") ?? listen.endIndex)]):\(port)"
    }
}
