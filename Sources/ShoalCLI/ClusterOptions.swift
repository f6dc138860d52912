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

    func validate() throws {
        guard rpcTimeout > 0 else { throw ValidationError("--rpc-timeout must be positive") }
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
    /// `startWithMissingPairs`: a service starts before its workers are all up.
    func engine(folder: String, threads: Int, startWithMissingPairs: Bool = false) throws -> Engine {
        let cpus = try parseCPUs(cpus)
        guard let addresses = try addresses() else {
            return try Engine(folder: folder, threads: threads, cpus: cpus, quantize: quantize)
        }
        let node = try NodeSecurity(tls: tls, insecure: insecure)
        if let warning = try node.checkPlaintext(addresses, role: "--workers") { printErr(warning) }
        return try clusterEngine(folder: folder, threads: threads, cpus: cpus, quantize: quantize, workers: addresses,
                                 wire: wireDType.value, security: node.security, timeoutSeconds: rpcTimeout,
                                 startWithMissingPairs: startWithMissingPairs)
    }

    static func isHostPort(_ s: String) -> Bool {
        guard let colon = s.lastIndex(of: ":"), colon != s.startIndex,
              let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return false }
        return true
    }
}

/// A coordinator over `folder` whose experts are on `workers`; warnings go to stderr.
func clusterEngine(folder: String, threads: Int, cpus: [Int] = [], quantize: QuantizationMix? = nil, workers: [String], wire: WireDType,
                   security: RPCSecurity = .insecure, timeoutSeconds: Double = 30, startWithMissingPairs: Bool = false) throws -> Engine {
    var options = RemoteExperts.Options()
    options.startWithMissingPairs = startWithMissingPairs
    options.wireDType = wire
    options.security = security
    options.timeout = .milliseconds(Int64(timeoutSeconds * 1000))
    options.helloTimeout = min(options.timeout, .seconds(10))
    return try Engine(folder: folder, threads: threads, cpus: cpus, quantize: quantize) { checkpoint, pool in
        try RemoteExperts(checkpoint: checkpoint, workers: workers, options: options, pool: pool) {
            printErr("warning: \($0)")
        }
    }
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
