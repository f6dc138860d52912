import ArgumentParser
import Dispatch
import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalRPC
import ShoalTensor

/// `shoal worker`: an expert-worker daemon serving some experts of a model over gRPC.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve some experts of a model to coordinators (shoal generate/logits --workers).",
        discussion: """
            Either fixed experts, --experts SPEC, for coordinators started with --workers: SPEC is a
            comma-separated list of EXPERTS[@LAYERS] ranges (0-3 serves experts 0-3 of every layer,
            0-3@0-15,4-7@16-31 splits by layer). Or --join COORDINATOR (its --cluster-listen
            address; serve --placement auto): the worker offers --memory and is given experts,
            keeps a heartbeat, joins again if the coordinator restarts, and on SIGINT or SIGTERM
            asks to be drained (its experts move to other workers first). Only the experts held
            are mapped. Prints one ready line on stdout once listening; stops on SIGINT or SIGTERM
            (running calls get --grace seconds to finish) with exit code 0.
            """)

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @Option(help: "Experts to serve: EXPERTS[@LAYERS][,…] (not with --join).") var experts: String?
    @Option(help: "Join a coordinator started with --placement auto, at its --cluster-listen HOST:PORT: it assigns the experts. Off loopback it needs --tls (or --insecure).")
    var join: String?
    @Option(help: "With --join: bytes of expert weights to offer, e.g. 12GiB (default: what the host has available, minus a tenth of its memory, at least 1 GiB).")
    var memory: String?
    @Option(help: "With --join: HOST:PORT the coordinator dials to reach this worker (default: --listen with its bound port; needed when listening on 0.0.0.0).")
    var advertise: String?
    @Option(help: "With --join: the read bandwidth to offer, in GB/s, instead of measuring it at start (a short read that a busy host can get wrong by tens of percent); the coordinator gives a worker well above or below the others' median more or fewer experts.")
    var readBandwidth: Double?
    @Option(help: "Address to listen on; port 0 picks a free port (see the ready line). Off loopback it needs --tls (or --insecure).")
    var listen = "127.0.0.1:50051"
    @Option(help: "Folder with this node's identity (shoal certs issue): accept only coordinators the same authority signed, over mutual TLS.")
    var tls: String?
    @Flag(help: "Allow listening (or joining) off loopback without --tls: plaintext, and anyone who reaches the port can use it.")
    var insecure = false
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @Option(help: "Most tokens one call may carry.") var maxTokens = 4096
    @Option(help: "A name for coordinators' logs (default: shoal-worker@HOSTNAME).") var name: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info
    @Option(help: "Seconds running calls get to finish at shutdown.") var grace: Double = 5
    @Option(help: "Quantize the experts' float weights as they load, as `shoal quantize --type` would write them (\(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", "))); the coordinator must say the same.")
    var quantize: QuantizationMix?
    @Flag(help: "Read the experts' weights into memory before saying ready (and, joined, before answering an assignment), with a progress bar; otherwise the first requests page them in from disk.")
    var preload = false
    @Option(help: "CPUs to pin the compute threads to, e.g. 1,0 (the thread serving calls on the first, helpers on the next ones); for workers sharing a machine. Default: not pinned.")
    var cpus: String?

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard grace >= 0 else { throw ValidationError("--grace must not be negative") }
        _ = try parseCPUs(cpus)
        guard (experts == nil) != (join == nil) else {
            throw ValidationError("give either --experts SPEC (fixed experts) or --join COORDINATOR (experts assigned), not both")
        }
        if join == nil, memory != nil || advertise != nil || readBandwidth != nil {
            throw ValidationError("--memory, --advertise and --read-bandwidth go with --join")
        }
        if let readBandwidth, !(readBandwidth > 0 && readBandwidth.isFinite) {
            throw ValidationError("--read-bandwidth \(readBandwidth): expected GB/s above 0")
        }
        if let memory, parseByteSize(memory) == nil { throw ValidationError("--memory \(memory): expected a size like 12GiB") }
    }

    func run() throws {
        try reportingErrors {
            bootstrapLogging(logLevel)
            let logger = Logger(label: "shoal.worker")
            let node = try NodeSecurity(tls: tls, insecure: insecure)
            if let warning = try node.checkPlaintext([listen], role: "--listen") { printErr(warning) }
            // The coordinator it joins assigns its experts and gets its hidden states: the same
            // rule as the coordinator's own --workers.
            if let join, let warning = try node.checkPlaintext([join], role: "--join") { printErr(warning) }
            let checkpoint = try Checkpoint(folder: model, quantize: quantize)
            let config = checkpoint.config
            let pairs = try experts.map { try ExpertSpec($0).pairs(layers: config.layers, experts: config.experts) } ?? []
            let cpus = try parseCPUs(self.cpus)
            let offered = memory.flatMap(parseByteSize) ?? defaultOfferedMemory().offered
            let workerName = name ?? "shoal-worker@\(ProcessInfo.processInfo.hostName)"
            let worker = try ExpertWorker(
                checkpoint: checkpoint, pairs: pairs, threads: threads, maxTokens: maxTokens, cpus: cpus,
                name: workerName, assignableBytes: join == nil ? nil : offered,
                preload: preload ? preloadProgress("preloading experts") : nil, logger: logger)
            // Signals are taken before the server starts, so none is lost between the two.
            let stop = StopSignal()
            let server = try worker.startServer(listen: listen, security: node.security)
            let address = boundAddress(listen, port: server.port)
            // Written unbuffered: whoever started us waits for this line on a pipe.
            var membership: JoinClient?
            let holds: String
            if let join {
                let advertised = advertise ?? address
                guard Endpoint(advertised)?.isDialable ?? false else {
                    throw ValidationError(advertise == nil
                        ? "--listen \(listen) has no address a coordinator can dial: give --advertise HOST:PORT"
                        : "--advertise \(advertised): expected HOST:PORT that a coordinator can dial")
                }
                let bandwidth = readBandwidth
                    ?? MemoryBandwidth.measureRead(pool: ComputePool(threads: threads), bytes: 64 << 20, repeats: 3)
                let defaults = defaultOfferedMemory()
                membership = JoinClient(
                    coordinator: join, security: node.security, worker: worker,
                    offer: .init(address: advertised, name: workerName, memoryBytes: offered, readBytesPerSecond: bandwidth * 1e9),
                    log: logger)
                holds = "joining \(join) as \(advertised), offering \(formatBytes(offered)) of weights"
                    + (memory == nil ? " (\(formatBytes(defaults.available)) available minus \(formatBytes(defaults.margin)) kept back)" : "")
                    + String(format: ", reads %.1f GB/s", bandwidth) + (readBandwidth == nil ? "" : " (as told)")
            } else {
                holds = "experts \(experts!) of \(checkpoint.folder) "
                    + "(\(pairs.count) pairs, \(formatBytes(worker.weightBytes)) of weights: "
                    + worker.weightTypes.map { "\($0.type.rawValue) \(formatBytes($0.bytes))" }.joined(separator: ", ") + ")"
            }
            FileHandle.standardOutput.write(Data((
                "shoal worker ready: listening on \(address), \(holds), "
                    + "fingerprint \(worker.fingerprint), \(node.summary)"
                    + (cpus.isEmpty ? "" : ", threads pinned to CPUs \(cpusArgument(cpus))")
                    + "\n").utf8))
            logger.info("serving", metadata: ["address": "\(address)", "pairs": "\(pairs.count)"])
            if let membership {
                // Membership runs on a thread of its own; a signal asks it to drain first.
                let ended = DispatchSemaphore(value: 0)
                nonisolated(unsafe) var outcome = JoinClient.Outcome.released
                Thread.detachNewThread {
                    outcome = membership.run()
                    ended.signal()
                }
                let signalled = DispatchSemaphore(value: 0)
                Thread.detachNewThread {
                    stop.wait()
                    signalled.signal()
                    membership.leave()
                }
                ended.wait()
                if case .leftUnreleased(let why) = outcome {
                    if signalled.wait(timeout: .now()) == .timedOut { throw ValidationError("left the cluster: \(why)") }
                    logger.warning("stopping without a drain", metadata: ["reason": "\(why)"])
                }
            } else {
                stop.wait()
            }
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
final class StopSignal: @unchecked Sendable {
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

/// `--preload`'s progress (`worker`, `serve`): a bar per load (a worker's experts at start,
/// each assignment).
func preloadProgress(_ title: String) -> @Sendable (Int, Int) -> Void {
    let state = PreloadBar(title: title)
    return { done, total in state.update(done, total) }
}

/// One progress bar at a time, made when a load starts and finished when it ends.
private final class PreloadBar: @unchecked Sendable {
    private let title: String
    private let lock = NSLock()
    private var bar: ProgressBar?

    init(title: String) { self.title = title }

    func update(_ done: Int, _ total: Int) {
        lock.withLock {
            if bar == nil { bar = ProgressBar(title, totalBytes: total) }
            bar!.update(done)
            if done >= total {
                bar!.finish()
                bar = nil
            }
        }
    }
}
