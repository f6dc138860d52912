import ArgumentParser
import Foundation
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import SwiftProtobuf
import Synchronization

/// `shoal cluster`: the placement of experts on workers.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Plan where a model's experts live on workers; see and drain a running cluster.",
        subcommands: [Plan.self, Status.self, Drain.self])

    /// How `status` and `drain` reach a coordinator's cluster listener (`--cluster-listen`).
    struct Connection: ParsableArguments {
        @Option(help: "The coordinator's cluster address (serve --placement auto --cluster-listen), HOST:PORT.")
        var coordinator = "127.0.0.1:50050"
        @Option(help: "Folder with a node identity of the cluster (shoal certs issue): mutual TLS, as the coordinator requires when it has --tls.")
        var tls: String?
        @Flag(help: "Allow plaintext to a coordinator off loopback.") var insecure = false

        func call<M: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message, _ type: M.Type,
                                            timeout: Duration) throws -> M {
            let node = try NodeSecurity(tls: tls, insecure: insecure)
            if let warning = try node.checkPlaintext([coordinator], role: "--coordinator") { printErr(warning) }
            let channel = RPCChannel(target: coordinator, security: node.security)
            defer { channel.close() }
            do {
                return try channel.unaryWaiting(method, request: try RPCPayload(message: request), timeout: timeout).message(M.self)
            } catch let status as RPCStatus {
                throw ValidationError("\(coordinator): \(status.message.isEmpty ? "\(status.code)" : status.message)")
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a running coordinator's workers and where each expert lives.",
            discussion: "The same JSON as GET /v1/cluster on the HTTP API with --json.")

        @OptionGroup var connection: Connection
        @Flag(help: "Print the JSON document.") var json = false

        func run() throws {
            try reportingErrors {
                let response = try connection.call(ClusterServiceMethod.status, Shoal_V1_StatusRequest(),
                                                   Shoal_V1_StatusResponse.self, timeout: .seconds(10))
                if json { return print(response.json) }
                let status = try ClusterStatus.decode(Data(response.json.utf8))
                print(describe(status), terminator: "")
            }
        }
    }

    struct Drain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a joined worker's experts to the others, then release it (it exits 0).",
            discussion: "Fails, leaving the worker serving, when the others have no room for its experts.")

        @OptionGroup var connection: Connection
        @Argument(help: "The worker: the address it joined with, or its name.") var worker: String
        @Option(help: "Seconds to wait for the experts to move.") var timeout: Double = 600

        func run() throws {
            try reportingErrors {
                var request = Shoal_V1_DrainRequest()
                request.worker = worker
                let response = try connection.call(ClusterServiceMethod.drain, request, Shoal_V1_DrainResponse.self,
                                                   timeout: .milliseconds(Int64(timeout * 1000)))
                print("drained \(worker): its experts moved (\(formatBytes(Int(response.movedBytes))) loaded by the others); it has been released")
            }
        }
    }

    struct Plan: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the placement of a model's experts on described workers, without starting anything.",
            discussion: """
                FILE is a JSON array of workers: [{"name": "a", "memory": "12GiB", "speed": 1.0}, …]
                (memory: bytes of expert weights the worker may hold, as a number or with
                KB/MB/GB/KiB/MiB/GiB; speed: relative, default 1). Every (layer, expert) gets a
                holder where memory allows, faster workers more of them; spare memory becomes
                replicas, up to --replicas extra holders per pair.
                """)

        @Option(help: "Model folder or GGUF file (its expert sizes).") var model: String
        @Option(name: .customLong("workers"), help: "The workers, a JSON file (see above).") var workersFile: String
        @Option(help: "Most extra holders per (layer, expert).") var replicas = 1
        @Option(help: "Size the experts as quantized at load by this mix (\(QuantizationMix.allCases.map(\.rawValue).joined(separator: ", "))).")
        var quantize: QuantizationMix?
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard replicas >= 0 else { throw ValidationError("--replicas must not be negative") }
        }

        func run() throws {
            try reportingErrors {
                let workers = try readWorkers(workersFile)
                let checkpoint = try Checkpoint(folder: model, quantize: quantize)
                let planner = PlacementPlanner(pairBytes: try PlacementPlanner.pairBytes(of: checkpoint), replicas: replicas)
                let plan = planner.plan(workers)
                json ? printJSON(plan, workers, planner) : printText(plan, workers, planner, checkpoint.config)
                if !plan.unplaced.isEmpty { throw ExitCode(2) }
            }
        }

        private func printText(_ plan: PlacementPlanner.Plan, _ workers: [PlacementPlanner.Worker],
                               _ planner: PlacementPlanner, _ config: ModelConfig) {
            let total = planner.pairBytes.joined().reduce(0, +)
            print("model: \(model) (\(config.layers) layers × \(config.experts) experts, \(formatBytes(total)) of experts)")
            print("worker".padding(toLength: 16, withPad: " ", startingAt: 0) + "  offered      holds        pairs (replicas)  speed")
            for (w, worker) in workers.enumerated() {
                let held = plan.holders.joined().filter { $0.contains(w) }
                let replicas = plan.holders.joined().count { $0.dropFirst().contains(w) }
                print(worker.name.padding(toLength: 16, withPad: " ", startingAt: 0)
                      + "  " + formatBytes(worker.memoryBytes).padding(toLength: 11, withPad: " ", startingAt: 0)
                      + "  " + formatBytes(plan.usedBytes[w]).padding(toLength: 11, withPad: " ", startingAt: 0)
                      + "  " + "\(held.count) (\(replicas))".padding(toLength: 16, withPad: " ", startingAt: 0)
                      + "  " + String(format: "%.2f", worker.speed))
            }
            print("\(plan.holders.joined().count { !$0.isEmpty }) of \(config.layers * config.experts) pairs placed, "
                  + "\(plan.replicatedPairs) with a replica")
            if !plan.unplaced.isEmpty {
                print("unplaced: \(plan.unplaced.count) pairs (\(plan.unplaced.prefix(8).map { "\($0.layer)/\($0.expert)" }.joined(separator: ", "))"
                      + (plan.unplaced.count > 8 ? ", …" : "") + "): workers offering \(formatBytes(plan.missingBytes)) more are needed")
            }
        }

        private func printJSON(_ plan: PlacementPlanner.Plan, _ workers: [PlacementPlanner.Worker], _ planner: PlacementPlanner) {
            let object: [String: Any] = [
                "workers": workers.enumerated().map { w, worker in
                    ["name": worker.name, "memory_bytes": worker.memoryBytes, "used_bytes": plan.usedBytes[w], "speed": worker.speed] as [String: Any]
                },
                "holders": plan.holders.map { layer in layer.map { $0.map { workers[$0].name } } },
                "unplaced": plan.unplaced.map { ["layer": $0.layer, "expert": $0.expert] },
                "missing_bytes": plan.missingBytes,
                "replicated_pairs": plan.replicatedPairs,
            ]
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// The workers of a `--workers FILE.json` description.
func readWorkers(_ path: String) throws -> [PlacementPlanner.Worker] {
    guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("--workers \(path): cannot read it") }
    guard let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]], !list.isEmpty else {
        throw ValidationError("--workers \(path): expected a JSON array of {\"name\", \"memory\", \"speed\"} objects")
    }
    return try list.enumerated().map { i, entry in
        let name = entry["name"] as? String ?? "worker-\(i)"
        let memory: Int?
        switch entry["memory"] {
        case let n as Int: memory = n
        case let text as String: memory = parseByteSize(text)
        default: memory = nil
        }
        guard let memory, memory >= 0 else {
            throw ValidationError("--workers \(path): worker \(name): \"memory\" must be bytes, e.g. 12GiB or 12000000000")
        }
        let speed = (entry["speed"] as? Double) ?? (entry["speed"] as? Int).map(Double.init) ?? 1
        guard speed > 0 else { throw ValidationError("--workers \(path): worker \(name): \"speed\" must be positive") }
        return PlacementPlanner.Worker(name: name, memoryBytes: memory, speed: speed)
    }
}

/// `"12GiB"` → 12884901888; `"1.5GB"`, `"800MiB"`, `"4096"` likewise; nil if not a size.
func parseByteSize(_ text: String) -> Int? {
    let units: [(String, Double)] = [("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776),
                                      ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1)]
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
        guard let value = Double(trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), value >= 0 else { return nil }
        return Int(value * scale)
    }
    return Int(trimmed)
}

/// `shoal cluster status` as text: one line per worker, then the placement map (one row per
/// layer, one column per expert, each cell the workers holding it by their number).
func describe(_ status: ClusterStatus) -> String {
    var out = ""
    let layers = status.holders.count, experts = status.holders.first?.count ?? 0
    let held = status.holders.joined().count { !$0.isEmpty }
    out += "placement \(status.placement), \(status.workers.count) workers, \(held) of \(layers * experts) pairs held, "
        + "\(status.holders.joined().count { $0.count > 1 }) with a replica; "
        + (status.complete ? "serving" : "not serving (some experts have no live holder: /health is 503)") + "\n"
    out += "#  worker                 state     offered     holds       pairs  calls    failed  mean ms\n"
    for (i, w) in status.workers.enumerated() {
        let pairs = w.experts.reduce(0) { $0 + $1.count }
        out += "\(i + 1)".padding(toLength: 3, withPad: " ", startingAt: 0)
            + w.address.padding(toLength: 23, withPad: " ", startingAt: 0)
            + w.state.padding(toLength: 10, withPad: " ", startingAt: 0)
            + (w.memoryOfferedBytes.map(formatBytes) ?? "-").padding(toLength: 12, withPad: " ", startingAt: 0)
            + formatBytes(w.memoryUsedBytes).padding(toLength: 12, withPad: " ", startingAt: 0)
            + "\(pairs)".padding(toLength: 7, withPad: " ", startingAt: 0)
            + "\(w.calls)".padding(toLength: 9, withPad: " ", startingAt: 0)
            + "\(w.failedCalls)".padding(toLength: 8, withPad: " ", startingAt: 0)
            + (w.meanCallMilliseconds.map { String(format: "%.2f", $0) } ?? "-")
            + (w.name.isEmpty ? "" : "  \(w.name)") + (w.lastError.map { "  (\($0))" } ?? "") + "\n"
    }
    if !status.unplaced.isEmpty {
        out += "unplaced: \(status.unplaced.count) pairs; workers offering \(formatBytes(status.missingBytes)) more are needed\n"
    }
    guard layers > 0 else { return out }
    let number = Dictionary(status.workers.enumerated().map { ($1.address, $0 + 1) }, uniquingKeysWith: { a, _ in a })
    let cells = status.holders.map { $0.map { $0.compactMap { number[$0] }.map(String.init).joined(separator: ",") } }
    let width = max(3, cells.joined().map(\.count).max() ?? 1) + 2
    out += "holders (worker numbers) per layer and expert:\n"
    out += "layer " + (0..<experts).map { "e\($0)".padding(toLength: width, withPad: " ", startingAt: 0) }.joined() + "\n"
    for (l, row) in cells.enumerated() {
        out += "\(l)".padding(toLength: 6, withPad: " ", startingAt: 0)
            + row.map { ($0.isEmpty ? "-" : $0).padding(toLength: width, withPad: " ", startingAt: 0) }.joined() + "\n"
    }
    return out
}
