import ArgumentParser
import Dispatch
import Foundation
import ShoalCluster
import ShoalModel
import ShoalRPC
import ShoalServe
import ShoalTensor

/// Where a coordinator and its loopback workers run when they share this machine: each takes
/// as many consecutive CPUs (wrapping) of those this process may use as it has threads,
/// worker `i` starting `i` CPUs further along than the coordinator. The two workers called in
/// one layer then usually start their requests on different cores, and a pinned thread yields
/// between chunks of work to the request thread it shares a core with (`ComputePool`).
/// Measured in the README ("The cluster on one machine"); all lists empty when the system
/// cannot pin.
struct LocalCPUPlan {
    var coordinator: [Int] = []
    var workers: [[Int]]

    /// - Parameter cpus: the CPUs to share out (default: those this process may use).
    init(workers: Int, workerThreads: Int, threads: Int, pin: Bool, cpus: [Int]? = CPUAffinity.allowedCPUs) {
        self.workers = Array(repeating: [], count: workers)
        guard pin, let cpus, !cpus.isEmpty else { return }
        func take(_ count: Int, from start: Int) -> [Int] { (0..<count).map { cpus[(start + $0) % cpus.count] } }
        coordinator = take(threads, from: 0)
        self.workers = (0..<workers).map { take(workerThreads, from: $0) }
    }
}

/// Worker processes started by this process, and only those: each is stopped (SIGTERM, then
/// SIGKILL after 5 s) when the fleet stops, on Ctrl-C and on SIGTERM.
final class WorkerFleet: @unchecked Sendable {
    private let lock = NSLock()
    private var processes: [Process] = []
    private var logs: [String] = []  // per worker: stdout file (ready line), stderr file
    /// Each worker's ready line, in start order, once `waitUntilReady` returned.
    private(set) var readyLines: [String] = []

    /// Starts `shoal ARGUMENTS…` (this same executable) with stdout and stderr in files.
    func start(arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        let base = NSTemporaryDirectory() + "shoal-demo-\(getpid())-\(processes.count)"
        for suffix in [".out", ".err"] { _ = FileManager.default.createFile(atPath: base + suffix, contents: nil) }
        process.standardOutput = FileHandle(forWritingAtPath: base + ".out")
        process.standardError = FileHandle(forWritingAtPath: base + ".err")
        try lock.withLock {
            try process.run()
            processes.append(process)
            logs.append(base)
        }
    }

    /// Starts `workers` loopback workers on `folder`, each holding a contiguous range of its
    /// `experts` experts in every layer (the first ones one larger when the split is uneven),
    /// and returns their addresses once all are ready.
    /// - Throws: `UsageError` before starting any when there are more workers than experts.
    /// - Parameter cpus: per worker, the CPUs to pin it to (`shoal worker --cpus`); empty: none.
    /// - Parameter tls: the workers' identity folder (`shoal worker --tls`); nil: plaintext.
    func startSplit(folder: String, experts: Int, workers: Int, threads: Int, cpus: [[Int]] = [],
                    tls: String? = nil, name: String) throws -> [String] {
        guard workers <= experts else {
            throw UsageError.conflicting("--workers \(workers): the model has only \(experts) experts to split")
        }
        var first = 0
        for i in 0..<workers {
            let count = experts / workers + (i < experts % workers ? 1 : 0)
            let spec = count == 1 ? "\(first)" : "\(first)-\(first + count - 1)"
            first += count
            let pin = i < cpus.count && !cpus[i].isEmpty ? ["--cpus", cpusArgument(cpus[i])] : []
            try start(arguments: [
                "worker", "--model", folder, "--experts", spec, "--listen", "127.0.0.1:0",
                "--threads", "\(threads)", "--log-level", "warning", "--name", "\(name)-\(i)",
            ] + pin + (tls.map { ["--tls", $0] } ?? []))
        }
        return try waitUntilReady(timeout: 300)
    }

    /// Waits for every worker's ready line and returns their addresses; a worker that exits
    /// or stays silent fails the wait with its stderr.
    func waitUntilReady(timeout: Double) throws -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        var addresses: [String?] = Array(repeating: nil, count: processes.count)
        readyLines = Array(repeating: "", count: processes.count)
        while addresses.contains(where: { $0 == nil }) {
            for i in processes.indices where addresses[i] == nil {
                let out = (try? String(contentsOfFile: logs[i] + ".out", encoding: .utf8)) ?? ""
                if let line = out.split(separator: "\n").first(where: { $0.contains("listening on ") }),
                   let range = line.range(of: "listening on "),
                   let comma = line[range.upperBound...].firstIndex(of: ",") {
                    addresses[i] = String(line[range.upperBound..<comma])
                    readyLines[i] = String(line)
                } else if !processes[i].isRunning {
                    let err = (try? String(contentsOfFile: logs[i] + ".err", encoding: .utf8)) ?? ""
                    throw UsageError.conflicting("worker \(i) exited before it was ready: \(err.trimmingCharacters(in: .whitespacesAndNewlines))")
                }
            }
            if Date() > deadline { throw UsageError.conflicting("workers not ready after \(Int(timeout)) s") }
            usleep(20_000)
        }
        return addresses.map { $0! }
    }

    /// Each running worker's resident memory (`VmRSS`), as `"0: 412 MB, 1: 398 MB"`.
    func residentLine() -> String {
        let running = lock.withLock { processes }
        return running.enumerated().map { i, p in
            let status = (try? String(contentsOfFile: "/proc/\(p.processIdentifier)/status", encoding: .utf8)) ?? ""
            let kb = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
                .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") }
            return "\(i): " + (kb.map { formatBytes($0 * 1024) } ?? "?")
        }.joined(separator: ", ")
    }

    /// Stops every worker still running and removes their log files. Idempotent.
    func stopAll() {
        let (running, files) = lock.withLock { () -> ([Process], [String]) in
            defer { processes = []; logs = [] }
            return (processes, logs)
        }
        for p in running where p.isRunning { p.terminate() }
        let deadline = Date().addingTimeInterval(5)
        for p in running {
            while p.isRunning && Date() < deadline { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        for base in files {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
    }

    /// On SIGINT or SIGTERM: stop the workers and exit 130. Keep the sources alive.
    func stopOnSignals() -> [DispatchSourceSignal] {
        [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                printErr("\ninterrupted: stopping the workers")
                stopAll()
                exit(130)
            }
            source.resume()
            return source
        }
    }
}
