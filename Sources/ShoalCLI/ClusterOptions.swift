import ArgumentParser
import Foundation
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTensor

/// The options that put a command's experts on worker daemons: `--workers`, `--wire-dtype`,
/// `--rpc-timeout`. Without `--workers` every expert is computed in this process.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Expert workers, HOST:PORT[,HOST:PORT…]; without it, experts run in this process.")
    var workers: String?
    @Option(name: .customLong("wire-dtype"), help: "Activations on the wire: f32 (exact) or bf16 (half the bytes).")
    var wireDType: WireDTypeArgument = .bf16
    @Option(help: "The longest deadline of one layer's call to a worker, in seconds; once calls are measured the deadline is 10 times their time per token (at least 1.5 s), so a hung worker is given up on quickly.")
    var rpcTimeout: Double = 30
    @Option(help: "CPUs to pin this process's compute threads to, e.g. 0,1 (the forward pass on the first, helpers on the next ones); for a coordinator sharing its machine with workers. Default: not pinned.")
    var cpus: String?
    @Option(help: "Folder with this node's identity (shoal certs issue): talk to workers over mutual TLS, accepting only those the same authority signed for the host dialled.")
    var tls: String?
    @Flag(help: "Allow plaintext off loopback: to workers without --tls, and (serve) listeners without keys or TLS.")
    var insecure = false
    @Option(help: "Quantize the checkpoint's float weights as they load, as `shoal quantize --type` would write them (\(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", "))).")
    var quantize: QuantizationMix?
    @Option(help: "fixed: the --workers given, each serving its --experts; auto: workers join (shoal worker --join) and are given experts by memory and speed.")
    var placement: PlacementMode = .fixed
    @Option(help: "With --placement auto: extra holders per (layer, expert) where memory allows (replicas keep requests alive when a worker dies).")
    var replicas = 1
    @Option(help: "With --placement auto: where workers join and shoal cluster status/drain connect, HOST:PORT (mutual TLS with --tls; plaintext only on loopback without it).")
    var clusterListen = "127.0.0.1:50050"
    @Option(help: "With --placement auto (generate, logits): seconds to wait for joining workers to hold every expert.")
    var joinWait: Double = 120

    func validate() throws {
        guard rpcTimeout > 0 else { throw ValidationError("--rpc-timeout must be positive") }
        guard replicas >= 0 else { throw ValidationError("--replicas must not be negative") }
        guard joinWait >= 0 else { throw ValidationError("--join-wait must not be negative") }
        if placement == .auto, workers != nil {
            throw ValidationError("--workers and --placement auto: with auto placement workers join by themselves (shoal worker --join)")
        }
        _ = try parseCPUs(cpus)
    }

    /// The worker addresses, or nil when experts are local.
    func addresses() throws -> [String]? {
        guard let workers else { return nil }
        let list = workers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !list.isEmpty, list.allSatisfy({ Self.isHostPort($0) }) else {
            throw ClusterError.badWorkerList(workers)
        }
        return list
    }

    /// Loads `folder` for generation, with remote experts when `--workers` is given.
    /// `startWithMissingPairs`: a service starts before its workers are all up. With
    /// `--placement auto`, the placement controller starts too, and (unless
    /// `startWithMissingPairs`) this waits up to `--join-wait` for workers to hold every pair.
    func coordinator(folder: String, threads: Int, startWithMissingPairs: Bool = false) throws -> Coordinator {
        guard placement == .auto else {
            return try fixedCoordinator(folder: folder, threads: threads, startWithMissingPairs: startWithMissingPairs)
        }
        let node = try NodeSecurity(tls: tls, insecure: insecure)
        if let warning = try node.checkPlaintext([clusterListen], role: "--cluster-listen") { printErr(warning) }
        var options = remoteOptions(security: node.security)
        options.startWithMissingPairs = true
        nonisolated(unsafe) var made: RemoteExperts?
        let engine = try Engine(folder: folder, threads: threads, cpus: try parseCPUs(cpus), quantize: quantize) { checkpoint, pool in
            let remote = try RemoteExperts(checkpoint: checkpoint, workers: [], options: options, pool: pool)
            made = remote
            return remote
        }
        let remote = made!
        var controllerOptions = PlacementController.Options()
        controllerOptions.replicas = replicas
        controllerOptions.security = node.security
        let controller = try PlacementController(remote: remote, checkpoint: engine.checkpoint, options: controllerOptions)
        let server = try RPCServer.start(listen: clusterListen, security: node.security, unary: controller.handlers)
        let elastic = Coordinator.Elastic(controller: controller, server: server, address: boundAddress(clusterListen, port: server.port))
        if !startWithMissingPairs {
            printErr("waiting for workers to join on \(elastic.address) (shoal worker --join \(elastic.address))")
            let deadline = ContinuousClock.now + .milliseconds(Int64(joinWait * 1000))
            while !remote.coverage.isComplete {
                guard ContinuousClock.now < deadline else {
                    let status = controller.status()
                    throw ClusterError.missingPairs(status.unplaced.map { ExpertKey(layer: $0[0], expert: $0[1]) }, down: [])
                }
                remote.probe()  // takes a staged placement in: nothing else runs the forward pass yet
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        return Coordinator(engine: engine, remote: remote, elastic: elastic)
    }

    private func remoteOptions(security: RPCSecurity) -> RemoteExperts.Options {
        var options = RemoteExperts.Options()
        options.wireDType = wireDType.value
        options.security = security
        options.timeout = .milliseconds(Int64(rpcTimeout * 1000))
        options.helloTimeout = min(options.timeout, .seconds(10))
        return options
    }

    /// Loads `folder` with its experts on `--workers` (fixed placement).
    private func fixedCoordinator(folder: String, threads: Int, startWithMissingPairs: Bool) throws -> Coordinator {
        let cpus = try parseCPUs(cpus)
        guard let addresses = try addresses() else {
            return Coordinator(engine: try Engine(folder: folder, threads: threads, cpus: cpus, quantize: quantize))
        }
        let node = try NodeSecurity(tls: tls, insecure: insecure)
        if let warning = try node.checkPlaintext(addresses, role: "--workers") { printErr(warning) }
        let (engine, remote) = try clusterEngine(
            folder: folder, threads: threads, cpus: cpus, quantize: quantize, workers: addresses, wire: wireDType.value,
            security: node.security, timeoutSeconds: rpcTimeout, startWithMissingPairs: startWithMissingPairs)
        return Coordinator(engine: engine, remote: remote)
    }

    /// An address to dial: `HOST:PORT` with a host and a port other than 0.
    static func isHostPort(_ s: String) -> Bool {
        guard let endpoint = Endpoint(s) else { return false }
        return !endpoint.host.isEmpty && endpoint.port > 0
    }
}

/// A coordinator over `folder` whose experts are on `workers`, and those remote experts (what
/// statistics, coverage and probes are read from); warnings go to stderr.
func clusterEngine(folder: String, threads: Int, cpus: [Int] = [], quantize: QuantizationMix? = nil, workers: [String], wire: WireDType,
                   security: RPCSecurity = .insecure, timeoutSeconds: Double = 30,
                   startWithMissingPairs: Bool = false) throws -> (engine: Engine, remote: RemoteExperts) {
    var options = RemoteExperts.Options()
    options.startWithMissingPairs = startWithMissingPairs
    options.wireDType = wire
    options.security = security
    options.timeout = .milliseconds(Int64(timeoutSeconds * 1000))
    options.helloTimeout = min(options.timeout, .seconds(10))
    nonisolated(unsafe) var made: RemoteExperts?
    let engine = try Engine(folder: folder, threads: threads, cpus: cpus, quantize: quantize) { checkpoint, pool in
        let remote = try RemoteExperts(checkpoint: checkpoint, workers: workers, options: options, pool: pool) {
            printErr("warning: \($0)")
        }
        made = remote
        return remote
    }
    return (engine, made!)
}

/// A `--cpus` list (`0,2-3`), each CPU one this process may run on; empty when not given.
func parseCPUs(_ text: String?) throws -> [Int] {
    guard let text else { return [] }
    guard let cpus = CPUAffinity.parse(text), !cpus.isEmpty else {
        throw ValidationError("--cpus \(text): expected CPU numbers and ranges, like 0,2-3")
    }
    guard let allowed = CPUAffinity.allowedCPUs else {
        throw ValidationError("--cpus: this system cannot pin threads to CPUs")
    }
    if let cpu = cpus.first(where: { !allowed.contains($0) }) {
        throw ValidationError("--cpus \(text): CPU \(cpu) is not one this process may run on (\(formatCPUs(allowed)))")
    }
    return cpus
}

/// `[1, 0]` → `"1,0"`: a list as `--cpus` takes it, in its order.
func cpusArgument(_ cpus: [Int]) -> String { cpus.map(String.init).joined(separator: ",") }

/// `[0, 1, 2, 5]` → `"0-2,5"`.
func formatCPUs(_ cpus: [Int]) -> String {
    var items: [String] = [], i = 0
    while i < cpus.count {
        var j = i
        while j + 1 < cpus.count && cpus[j + 1] == cpus[j] + 1 { j += 1 }
        items.append(i == j ? "\(cpus[i])" : "\(cpus[i])-\(cpus[j])")
        i = j + 1
    }
    return items.joined(separator: ",")
}

/// `--wire-dtype` values.
enum WireDTypeArgument: String, ExpressibleByArgument, CaseIterable {
    case f32, bf16
    var value: WireDType { self == .f32 ? .f32 : .bf16 }
}

/// `--placement` values.
enum PlacementMode: String, ExpressibleByArgument, CaseIterable {
    case fixed, auto
}

/// A coordinator's engine and, with `--placement auto`, what places its experts (kept alive
/// as long as the engine serves).
struct Coordinator {
    struct Elastic {
        let controller: PlacementController
        let server: RPCServer
        /// Where workers join: the cluster listener's address with its bound port.
        let address: String
    }

    let engine: Engine
    /// The engine's experts when they are on workers: the typed handle for statistics,
    /// coverage and probes (the engine itself only knows an `ExpertBackend`).
    var remote: RemoteExperts?
    var elastic: Elastic?
}
