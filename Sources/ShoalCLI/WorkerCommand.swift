import ArgumentParser
import Dispatch
import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalRPC

/// `shoal worker`: an expert-worker daemon serving some experts of a model over gRPC.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve some experts of a model to coordinators (shoal generate/logits --workers).",
        discussion: """
            SPEC is a comma-separated list of EXPERTS[@LAYERS] ranges: 0-3 serves experts 0-3 of
            every layer, 0-3@0-15,4-7@16-31 splits by layer. Only those experts' tensors are mapped.
            Prints one ready line on stdout once listening; stops on SIGINT or SIGTERM (running
            calls get --grace seconds to finish) with exit code 0.
            """)

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @Option(help: "Experts to serve: EXPERTS[@LAYERS][,…].") var experts: String
    @Option(help: "Address to listen on; port 0 picks a free port (see the ready line). Off loopback it needs --tls (or --insecure).")
    var listen = "127.0.0.1:50051"
    @Option(help: "Folder with this node's identity (shoal certs issue): accept only coordinators the same authority signed, over mutual TLS.")
    var tls: String?
    @Flag(help: "Allow listening off loopback without --tls: plaintext, and anyone who reaches the port can use it.")
    var insecure = false
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Most tokens one call may carry.") var maxTokens = 4096
    @Option(help: "A name for coordinators' logs (default: shoal-worker@HOSTNAME).") var name: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info
    @Option(help: "Seconds running calls get to finish at shutdown.") var grace: Double = 5
    @Option(help: "Quantize the experts' float weights as they load, as `shoal quantize --type` would write them (\(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", "))); the coordinator must say the same.")
    var quantize: QuantizationMix?
    @Option(help: "CPUs to pin the compute threads to, e.g. 1,0 (the thread serving calls on the first, helpers on the next ones); for workers sharing a machine. Default: not pinned.")
    var cpus: String?

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard grace >= 0 else { throw ValidationError("--grace must not be negative") }
        _ = try parseCPUs(cpus)
    }

    func run() throws {
        try reportingErrors {
            bootstrapLogging(logLevel)
            let logger = Logger(label: "shoal.worker")
            let node = try NodeSecurity(tls: tls, insecure: insecure)
            if let warning = try node.checkPlaintext([listen], role: "--listen") { printErr(warning) }
            let checkpoint = try Checkpoint(folder: model, quantize: quantize)
            let config = checkpoint.config
            let pairs = try ExpertSpec(experts).pairs(layers: config.layers, experts: config.experts)
            let cpus = try parseCPUs(self.cpus)
            let worker = try ExpertWorker(
                checkpoint: checkpoint, pairs: pairs, threads: threads, maxTokens: maxTokens, cpus: cpus,
                name: name ?? "shoal-worker@\(ProcessInfo.processInfo.hostName)", logger: logger)
            // Signals are taken before the server starts, so none is lost between the two.
            let stop = StopSignal()
            let server = try worker.startServer(listen: listen, security: node.security)
            let host = listen[..<(listen.lastIndex(of: ":") ?? listen.endIndex)]
            let address = "\(host):\(server.port)"
            // Written unbuffered: whoever started us waits for this line on a pipe.
            FileHandle.standardOutput.write(Data((
                "shoal worker ready: listening on \(address), experts \(experts) of \(checkpoint.folder) "
                    + "(\(pairs.count) pairs, \(formatBytes(worker.weightBytes)) of weights: "
                    + worker.weightTypes.map { "\($0.type.rawValue) \(formatBytes($0.bytes))" }.joined(separator: ", ") + "), "
                    + "fingerprint \(worker.fingerprint), \(node.summary)"
                    + (cpus.isEmpty ? "" : ", threads pinned to CPUs \(cpusArgument(cpus))")
                    + "\n").utf8))
            logger.info("serving", metadata: ["address": "\(address)", "pairs": "\(pairs.count)"])
            stop.wait()
            logger.info("stopping", metadata: ["grace_seconds": "\(grace)"])
            let stopped = DispatchSemaphore(value: 0)
            let grace = Duration.milliseconds(Int64(self.grace * 1000))
            Task {
                await server.shutdown(grace: grace)
                stopped.signal()
            }
            stopped.wait()
            logger.info("stopped")
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Log lines to stderr at `level` and above, for the daemons (`worker`, `serve`).
func bootstrapLogging(_ level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
    let grpc = Logger(label: "shoal.grpc")
    RPCLog.route { line in
        if line.isHandshakeFailure {
            grpc.warning("refused a peer at the TLS handshake: not a node of this cluster (no certificate from its authority, another cluster's, or plaintext)",
                         metadata: ["reason": "\(line.message)"])
        } else {
            switch line.severity {
            case .debug: grpc.debug("\(line.message)", metadata: ["source": "\(line.file)"])
            case .info: grpc.info("\(line.message)", metadata: ["source": "\(line.file)"])
            case .error: grpc.error("\(line.message)", metadata: ["source": "\(line.file)"])
            }
        }
    }
}

/// SIGINT and SIGTERM, taken from the moment this is made: `wait()` returns once either
/// arrives (the daemons then stop gracefully and exit 0).
final class StopSignal {
    private let semaphore = DispatchSemaphore(value: 0)
    private var sources: [DispatchSourceSignal] = []

    init() {
        sources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [semaphore] in semaphore.signal() }
            source.resume()
            return source
        }
    }

    func wait() { semaphore.wait() }
}

/// `1536000000` → `"1.54 GB"`.
func formatBytes(_ n: Int) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var value = Double(n), unit = 0
    while value >= 1000, unit < units.count - 1 { value /= 1000; unit += 1 }
    return unit == 0 ? "\(n) B" : String(format: "%.2f %@", value, units[unit])
}
