import ArgumentParser
import Dispatch
import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalRPC
import ShoalHTTP
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
    @Flag(help: "Read the weights this process computes with (attention, embeddings, output, and the experts when they are local) into memory before listening, with a progress bar; otherwise the first requests page them in from disk.")
    var preload = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info
    @Option(help: "Seconds running requests get to finish at shutdown.") var grace: Double = 10
    @Option(help: "API keys, one per line (re-read when the file changes): every request then needs Authorization: Bearer KEY (HTTP) or authorization metadata (gRPC). SHOAL_API_KEYS (comma-separated) adds keys too.")
    var apiKeyFile: String?
    @Option(help: "Host names (comma-separated) the HTTP API answers to besides its listen address (and, on loopback, localhost); others get 403. Guards against DNS rebinding.")
    var allowedHosts: String?
    @Option(help: "A web origin (https://app.example) whose pages may call the HTTP API from a browser; repeat for several, * for any. Default: same-origin pages only.")
    var corsOrigin: [String] = []
    @Option(help: "A second HTTP listener, HOST:PORT, serving only /metrics and /health without a key (for Prometheus and probes); off loopback it needs --insecure.")
    var metrics: String?
    @Option(help: "PEM certificate (chain) of the prompt APIs: HTTP is then HTTPS, and gRPC clients connect over TLS (the metrics listener stays plain).")
    var tlsCert: String?
    @Option(help: "PEM private key of --tls-cert.") var tlsKey: String?
    @Option(help: "Most KV-cache positions (prompt plus max_tokens) one request may reserve (default: a quarter of the KV cache, within the context).")
    var maxRequestTokens: Int?
    @Option(help: "The fraction of the batch places and of the KV cache one client (API key, or address without keys) may hold.")
    var clientShare = 0.75

    func validate() throws {
        guard maxBatch >= 1, maxQueue >= 0, stepTokens >= 1, threads >= 1, defaultMaxTokens >= 1 else {
            throw ValidationError(
                "--max-batch, --step-tokens, --default-max-tokens and --threads must be at least 1, --max-queue at least 0")
        }
        if let kvCacheTokens, kvCacheTokens < 1 { throw ValidationError("--kv-cache-tokens must be at least 1") }
        guard grace >= 0 else { throw ValidationError("--grace must not be negative") }
        if let maxRequestTokens, maxRequestTokens < 2 { throw ValidationError("--max-request-tokens must be at least 2") }
        guard clientShare > 0, clientShare <= 1 else { throw ValidationError("--client-share must be in (0, 1]") }
        guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    func run() throws {
        try reportingErrors {
            bootstrapLogging(logLevel)
            let log = Logger(label: "shoal.serve")
            let stop = StopSignal()
            let keys = try APIKeys.load(file: apiKeyFile, list: ProcessInfo.processInfo.environment["SHOAL_API_KEYS"])
            try checkListeners(keys: keys)
            let grpcSecurity = try tlsCert.map { cert in
                RPCSecurity.tls(rootCertificatesPEM: nil, privateKeyPEM: try readPEM(tlsKey!, "--tls-key"),
                                certificateChainPEM: try readPEM(cert, "--tls-cert"))
            }
            // Workers may come up after the service (systemd starts them in any order): /health
            // is 503 until every pair has a live holder.
            let coordinator = try cluster.coordinator(folder: model, threads: threads, startWithMissingPairs: true)
            defer { withExtendedLifetime(coordinator) {} }
            let engine = coordinator.engine
            if preload { engine.preload(progress: preloadProgress("preloading weights")) }
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
            options.scheduler.maxRequestTokens = maxRequestTokens
                ?? min(config.maxContext, max(2, options.scheduler.kvCacheTokens / 4))
            options.scheduler.clientShare = clientShare
            options.metrics = metrics
            options.grpcSecurity = grpcSecurity
            options.httpTLS = tlsCert.map { HTTPServerTLS(certificateChainFile: $0, privateKeyFile: tlsKey!) }
            if let controller = coordinator.elastic?.controller {
                options.clusterJSON = { controller.status().json() }
            }
            options.access = HTTPAccess(
                keys: keys,
                allowedHosts: try allowedHosts.map { list in
                    let (host, _) = try PromptServer.split(http)
                    let extra = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                    return HTTPAccess.defaultHosts(listening: host, extra: extra)!
                },
                corsOrigins: corsOrigin)
            let server = try PromptServer(engine: engine, cluster: coordinator.remote, options: options, log: log)
            if let controller = coordinator.elastic?.controller {
                let metrics = server.metrics
                controller.setHeat { metrics.expertHeat() }
            }
            let kv = options.scheduler.kvCacheTokens
            let experts = if let elastic = coordinator.elastic {
                "experts placed on workers that join at \(elastic.address), \(cluster.replicas) replica(s) where memory allows; /health is 503 until they hold every expert"
            } else {
                coordinator.remote.map { remote in
                    "\(remote.workers.count) workers" + (remote.coverage.isComplete ? "" : ", some pairs not served yet: /health is 503")
                } ?? "local experts"
            }
            // Written unbuffered: whoever started us may wait for this line on a pipe.
            FileHandle.standardOutput.write(Data((
                "shoal serve ready: \(tlsCert == nil ? "http" : "https") \(server.httpPort.map { boundAddress(http, port: $0) } ?? "off"), "
                    + "grpc \(server.grpcPort.map { boundAddress(grpc, port: $0) } ?? "off"), model \(options.modelName) "
                    + "(\(experts)), batch \(maxBatch), KV cache \(kv) tokens (\(formatBytes(kv * bytesPerToken))), "
                    + "\(options.scheduler.maxRequestTokens) per request, "
                    + (keys == nil ? "no API keys" : "API keys required")
                    + (server.metricsPort.map { ", metrics \(boundAddress(metrics!, port: $0))" } ?? "") + "\n").utf8))
            stop.wait()
            log.info("stopping", metadata: ["grace_seconds": "\(grace)"])
            server.shutdown(grace: .milliseconds(Int64(grace * 1000)))
            log.info("stopped")
        }
    }

    /// Refuses a listener off loopback that would take anyone's prompts (no API keys) or
    /// show anyone the metrics, unless `--insecure`; warns about keys sent in plaintext.
    private func checkListeners(keys: APIKeys?) throws {
        for address in [http, grpc, metrics ?? "off"] where address != "off" { _ = try PromptServer.split(address) }
        let exposed = { (address: String) in address != "off" && !(Endpoint(address)?.isLoopback ?? false) }
        var open: [String] = keys == nil ? [http, grpc].filter(exposed) : []
        if let metrics, exposed(metrics) { open.append(metrics) }
        if !open.isEmpty {
            let what = open.joined(separator: ", ")
            guard cluster.insecure else {
                throw UsageError.conflicting(
                    "\(what) is not loopback and would serve anyone who reaches it: give --api-key-file (or SHOAL_API_KEYS)"
                        + (metrics.map { exposed($0) ? "; --metrics has no keys, keep it on loopback" : "" } ?? "")
                        + ", or --insecure to accept that")
            }
            printErr("warning: --insecure: \(what) serves anyone who can reach it, without a key")
        }
        if keys != nil, exposed(http), tlsCert == nil {
            printErr("warning: the HTTP API on \(http) is plain HTTP: API keys and prompts cross the network unencrypted; give --tls-cert and --tls-key (or put a TLS proxy in front of it)")
        }
        if keys != nil, exposed(grpc), tlsCert == nil {
            printErr("warning: the gRPC API on \(grpc) has no --tls-cert: API keys and prompts cross the network unencrypted")
        }
    }
}

/// The text of a PEM file named by `flag`.
func readPEM(_ path: String, _ flag: String) throws -> String {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8), text.contains("-----BEGIN ") else {
        throw ValidationError("\(flag) \(path): not a readable PEM file")
    }
    return text
}
