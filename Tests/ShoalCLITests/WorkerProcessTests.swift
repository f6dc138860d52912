import Foundation
import ShoalTestSupport
import Testing
@testable import ShoalCLI

/// `shoal worker` and `shoal generate --workers` as separate processes on loopback: the ready
/// line, exact output with the f32 wire, a worker killed mid-generation, clean stops.
@Suite(.serialized) struct WorkerProcessTests {
    /// A process started by this test, its output in files; killed at the end if still running.
    final class Child {
        let process = Process()
        let base = NSTemporaryDirectory() + "shoal-proc-" + UUID().uuidString

        init(_ arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: ShoalBinary.path)
            process.arguments = arguments
            for suffix in [".out", ".err"] { _ = FileManager.default.createFile(atPath: base + suffix, contents: nil) }
            process.standardOutput = FileHandle(forWritingAtPath: base + ".out")
            process.standardError = FileHandle(forWritingAtPath: base + ".err")
            try process.run()
        }

        deinit {
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }

        var stdout: String { (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? "" }
        var stderr: String { (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? "" }

        /// Waits up to `seconds` for the process to end; its exit status, or nil if it did not.
        func wait(seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { return nil }
            process.waitUntilExit()
            return process.terminationStatus
        }

        /// The address from a worker's ready line, waiting up to 60 s for it.
        func readyAddress() throws -> String {
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                if let range = stdout.range(of: "listening on "), let comma = stdout[range.upperBound...].firstIndex(of: ",") {
                    return String(stdout[range.upperBound..<comma])
                }
                if !process.isRunning { break }
                usleep(20_000)
            }
            Issue.record("no ready line; stderr: \(stderr)")
            throw CancellationError()
        }
    }

    @Test func workersServeExactlyAndADeadOneIsNamed() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let w1 = try Child(["worker", "--model", model, "--experts", "0-3", "--listen", "127.0.0.1:0", "--threads", "1"])
        let w2 = try Child(["worker", "--model", model, "--experts", "4-7", "--listen", "127.0.0.1:0", "--threads", "1"])
        let a1 = try w1.readyAddress(), a2 = try w2.readyAddress()
        #expect(w1.stdout.hasPrefix("shoal worker ready: listening on 127.0.0.1:") && w1.stdout.contains("8 pairs"))

        let prompt = ["--ids", "1,415,1984,302", "--max-tokens", "12", "--ignore-eos", "--json"]
        let single = try CLITests().shoal(["generate", "--model", model] + prompt)
        let cluster = try CLITests().shoal(["generate", "--model", model, "--workers", "\(a1),\(a2)", "--wire-dtype", "f32"] + prompt)
        #expect(single.status == 0 && cluster.status == 0, "\(cluster.stderr)")
        #expect(cluster.stdout == single.stdout && single.stdout.hasPrefix("{\"ids\":["))
        #expect(cluster.stderr.contains("decode fan-out per layer: median "))

        // A long generation; worker 2 dies under it. The coordinator fails fast, by name.
        let long = try Child(["generate", "--model", model, "--workers", "\(a1),\(a2)", "--ids", "1,415",
                              "--max-tokens", "20000", "--ignore-eos", "--json", "--rpc-timeout", "5"])
        usleep(500_000)
        #expect(long.process.isRunning, "the generation ended before the worker was killed: \(long.stderr)")
        kill(w2.process.processIdentifier, SIGKILL)
        let killedAt = Date()
        let status = long.wait(seconds: 20)
        #expect(status == 1, "\(long.stderr)")
        #expect(Date().timeIntervalSince(killedAt) < 6)
        #expect(long.stderr.hasPrefix("error: worker \(a2) failed layer ") && long.stderr.contains(" experts "),
                "\(long.stderr)")

        // The survivor stops cleanly on SIGTERM.
        kill(w1.process.processIdentifier, SIGTERM)
        #expect(w1.wait(seconds: 10) == 0, "\(w1.stderr)")
    }

    @Test func workerRefusesABadSpecAndCoordinatorABadList() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let spec = try CLITests().shoal(["worker", "--model", model, "--experts", "0-9", "--listen", "127.0.0.1:0"])
        #expect(spec.status == 1 && spec.stderr.hasPrefix("error: --experts \"0-9\": the model has layers 0-1 and experts 0-7"),
                "\(spec.stderr)")
        let syntax = try CLITests().shoal(["worker", "--model", model, "--experts", "3-1", "--listen", "127.0.0.1:0"])
        #expect(syntax.status == 1 && syntax.stderr.contains("\"3-1\" is not EXPERTS[@LAYERS]"), "\(syntax.stderr)")
        let list = try CLITests().shoal(["generate", "--model", model, "--ids", "1", "--workers", "nohost"])
        #expect(list.status == 1 && list.stderr.hasPrefix("error: --workers \"nohost\""), "\(list.stderr)")
    }
}

/// The main job end to end on a fixture: workers, the cluster against one process, then the
/// served rounds; with the exact wire the tokens must match.
@Suite struct DemoTests {
    @Test(.timeLimit(.minutes(2))) func demoRunsEveryPartAndStopsItsWorkers() throws {
        let model = try Fixtures.path("models/tiny-bf16/hf")
        let demo = try CLITests().shoal([
            "demo", "--model", model, "--workers", "2", "--max-tokens", "6", "--wire-dtype", "f32", "--serve-streams", "1,3",
        ])
        #expect(demo.status == 0, "\(demo.stderr)")
        #expect(demo.stdout.contains("same tokens as one process: yes"))
        // Over mutual TLS, every worker too.
        #expect(demo.stdout.contains("workers on loopback, mutual TLS"), "\(demo.stdout)")
        #expect(demo.stdout.components(separatedBy: "mutual TLS as CN=loopback-worker").count == 3, "\(demo.stdout)")
        let rows = demo.stdout.split(separator: "\n").filter { $0.hasPrefix("      1 ") || $0.hasPrefix("      3 ") }
        #expect(rows.count == 2, "\(demo.stdout)")
        #expect(demo.stdout.hasSuffix("stopping the server and the workers\n"))
    }

    /// The cluster benchmark: both sides per repeat, the same greedy tokens with the exact wire.
    @Test(.timeLimit(.minutes(2))) func clusterBenchReportsBothSidesAndTheirRatio() throws {
        let model = try Fixtures.path("models/tiny-bf16/hf")
        let bench = try CLITests().shoal([
            "bench", "--model", model, "--workers", "2", "--wire-dtype", "f32",
            "--prompt-tokens", "4", "--gen-tokens", "6", "--repeats", "3", "--json",
        ])
        #expect(bench.status == 0, "\(bench.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any] ?? [:]
        #expect(report["same_tokens"] as? Bool == true, "\(bench.stdout)")
        let ratios = report["decode_ratios"] as? [Double] ?? []
        let single = report["single_decode_tokens_per_s"] as? Double ?? 0
        let cluster = report["cluster_decode_tokens_per_s"] as? Double ?? 0
        #expect(ratios.count == 3 && ratios.allSatisfy { $0 > 0 } && single > 0 && cluster > 0, "\(bench.stdout)")
        #expect(report["decode_ratio"] as? Double == ratios.sorted()[1], "\(bench.stdout)")
        #expect((report["sent_bytes_per_token"] as? Double ?? 0) > 0, "\(bench.stdout)")
        #expect(report["pinned"] as? Bool == true, "\(bench.stdout)")

        let unpinned = try CLITests().shoal([
            "bench", "--model", model, "--workers", "2", "--prompt-tokens", "4", "--gen-tokens", "2",
            "--repeats", "1", "--no-pin-cpus", "--json",
        ])
        let other = try JSONSerialization.jsonObject(with: Data(unpinned.stdout.utf8)) as? [String: Any] ?? [:]
        #expect(unpinned.status == 0 && other["pinned"] as? Bool == false, "\(unpinned.stdout) \(unpinned.stderr)")
    }
}

/// Bad serving and benchmark options: one clear line naming the option, exit code non-zero,
/// nothing left listening.
@Suite struct ServeOptionTests {
    @Test func badServeLoadDemoAndKernelOptionsAreRefused() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let cases: [([String], String)] = [
            (["serve", "--model", model, "--http", "nowhere"], "error: 'nowhere' is not HOST:PORT"),
            (["serve", "--model", model, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:99999"], "error: '127.0.0.1:99999' is not HOST:PORT"),
            (["serve", "--model", model, "--max-batch", "0"], "--max-batch"),
            (["serve", "--model", model, "--kv-cache-tokens", "0"], "--kv-cache-tokens must be at least 1"),
            (["load", "--streams", "4,zero"], "--streams must list positive integers"),
            (["load", "--url", "https://x:1"], "--url must be http://HOST:PORT"),
            (["load", "--url", "http://x"], "--url must be http://HOST:PORT"),
            (["load", "--url", "http://:8080/"], "--url must be http://HOST:PORT"),
            (["load", "--url", "http://x:8080/v1"], "--url must be http://HOST:PORT"),
            (["demo", "--model", model, "--serve-streams", "0"], "'0' is not a list of positive integers"),
            (["bench-kernels", "--tokens", ""], "'' is not a list of positive integers"),
            (["bench", "--model", model, "--workers", "2", "--worker-threads", "0"], "--worker-threads must be at least 1"),
            (["bench", "--model", model, "--workers", "2", "--wire-dtype", "f16"], "--wire-dtype"),
            (["serve", "--model", model, "--max-request-tokens", "1"], "--max-request-tokens must be at least 2"),
            (["serve", "--model", model, "--client-share", "0"], "--client-share must be in (0, 1]"),
            (["serve", "--model", model, "--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
            (["serve", "--model", model, "--api-key-file", "/nonexistent/keys"], "/nonexistent/keys: cannot read it"),
            (["serve", "--model", model, "--metrics", "0.0.0.0:0", "--http", "off", "--grpc", "off"], "keep it on loopback"),
            (["cluster", "plan", "--model", model, "--workers", "/nonexistent.json"], "/nonexistent.json: cannot read it"),
        ]
        for (arguments, message) in cases {
            let run = try CLITests().shoal(arguments)
            #expect(run.status != 0 && run.stderr.contains(message), "\(arguments): \(run.stderr)")
        }
    }
}

/// Bad cluster options on the command line: one clear line, nothing started.
@Suite struct ClusterOptionTests {
    @Test func badWireDTypeTimeoutAndWorkerCountAreRefused() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let wire = try CLITests().shoal(["generate", "--model", model, "--ids", "1", "--workers", "127.0.0.1:1", "--wire-dtype", "f16"])
        #expect(wire.status != 0 && wire.stderr.contains("--wire-dtype") && wire.stderr.contains("f16"), "\(wire.stderr)")
        let timeout = try CLITests().shoal(["generate", "--model", model, "--ids", "1", "--workers", "127.0.0.1:1", "--rpc-timeout", "0"])
        #expect(timeout.status != 0 && timeout.stderr.contains("--rpc-timeout must be positive"), "\(timeout.stderr)")
        let demo = try CLITests().shoal(["demo", "--model", model, "--workers", "9"])
        #expect(demo.status == 1 && demo.stderr.hasPrefix("error: --workers 9: the model has only 8 experts"), "\(demo.stderr)")
        let bench = try CLITests().shoal(["bench", "--model", model, "--workers", "9"])
        #expect(bench.status == 1 && bench.stderr.hasPrefix("error: --workers 9: the model has only 8 experts"), "\(bench.stderr)")
        let none = try CLITests().shoal(["bench", "--model", model, "--workers", "0"])
        #expect(none.status != 0 && none.stderr.contains("--workers must be at least 1"), "\(none.stderr)")
    }

    @Test func badCPUListsAreRefused() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let malformed = try CLITests().shoal(["worker", "--model", model, "--experts", "0-7", "--listen", "127.0.0.1:0", "--cpus", "1-x"])
        #expect(malformed.status != 0 && malformed.stderr.contains("--cpus 1-x: expected CPU numbers and ranges"), "\(malformed.stderr)")
        let missing = try CLITests().shoal(["generate", "--model", model, "--ids", "1", "--cpus", "0,1000"])
        #expect(missing.status != 0 && missing.stderr.contains("--cpus 0,1000: CPU 1000 is not one this process may run on"),
                "\(missing.stderr)")
    }

    /// Coordinator on the first CPUs, worker i starting i CPUs along, wrapping.
    @Test func localPlansShiftEachWorkerOneCPUAlong() {
        let two = LocalCPUPlan(workers: 4, workerThreads: 2, threads: 2, pin: true, cpus: [0, 1])
        #expect(two.coordinator == [0, 1] && two.workers == [[0, 1], [1, 0], [0, 1], [1, 0]])
        let three = LocalCPUPlan(workers: 2, workerThreads: 2, threads: 3, pin: true, cpus: [0, 2, 5])
        #expect(three.coordinator == [0, 2, 5] && three.workers == [[0, 2], [2, 5]])
        let off = LocalCPUPlan(workers: 2, workerThreads: 2, threads: 2, pin: false, cpus: [0, 1])
        #expect(off.coordinator.isEmpty && off.workers == [[], []])
    }
}

/// The cluster as an operator sets it up: `shoal certs` makes the authority and the nodes'
/// folders, a worker and a coordinator started with `--tls` give the plaintext cluster's exact
/// tokens, and a coordinator of another cluster is refused and logged by the worker.
@Suite(.serialized) struct NodeTLSProcessTests {
    @Test(.timeLimit(.minutes(2))) func certsWorkerAndCoordinatorOverMutualTLS() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let dir = NSTemporaryDirectory() + "shoal-certs-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cli = CLITests()
        for arguments in [
            ["certs", "init", "--out", "\(dir)/ca"],
            ["certs", "issue", "--ca", "\(dir)/ca", "--name", "w1", "--host", "127.0.0.1", "--out", "\(dir)/w1"],
            ["certs", "issue", "--ca", "\(dir)/ca", "--name", "coordinator", "--out", "\(dir)/c"],
            ["certs", "init", "--out", "\(dir)/other-ca"],
            ["certs", "issue", "--ca", "\(dir)/other-ca", "--name", "coordinator", "--out", "\(dir)/stranger"],
        ] {
            let run = try cli.shoal(arguments)
            #expect(run.status == 0 && run.stdout.hasPrefix("shoal certs: "), "\(arguments): \(run.stderr)")
        }
        let again = try cli.shoal(["certs", "init", "--out", "\(dir)/ca"])
        #expect(again.status == 1 && again.stderr.contains("refusing to replace a key"), "\(again.stderr)")

        let worker = try WorkerProcessTests.Child([
            "worker", "--model", model, "--experts", "0-7", "--listen", "127.0.0.1:0", "--threads", "1", "--tls", "\(dir)/w1"])
        let address = try worker.readyAddress()
        #expect(worker.stdout.contains("mutual TLS as CN=w1"), "\(worker.stdout)")

        let prompt = ["--ids", "1,415,1984,302", "--max-tokens", "8", "--ignore-eos", "--json"]
        let single = try cli.shoal(["generate", "--model", model] + prompt)
        let secure = try cli.shoal(["generate", "--model", model, "--workers", address, "--tls", "\(dir)/c", "--wire-dtype", "f32"] + prompt)
        #expect(secure.status == 0 && secure.stdout == single.stdout, "\(secure.stderr)")

        for refused in [["--tls", "\(dir)/stranger"], []] {
            let run = try cli.shoal(["generate", "--model", model, "--workers", address, "--rpc-timeout", "5"] + refused + prompt)
            #expect(run.status == 1 && run.stderr.contains("is unreachable"), "\(refused): \(run.stderr)")
        }
        // The plaintext attempt reaches the worker's handshake: it says so in its log (written
        // from the core's thread, so waited for, up to 10 s).
        let deadline = Date().addingTimeInterval(10)
        while !worker.stderr.contains("refused a peer"), Date() < deadline { usleep(20_000) }
        #expect(worker.stderr.contains("refused a peer at the TLS handshake"), "\(worker.stderr)")
    }

    @Test func plaintextOffLoopbackNeedsInsecure() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let worker = try CLITests().shoal(["worker", "--model", model, "--experts", "0-7", "--listen", "0.0.0.0:0"])
        #expect(worker.status == 1 && worker.stderr.contains("--listen 0.0.0.0:0 is not loopback: give --tls DIR"),
                "\(worker.stderr)")
        let coordinator = try CLITests().shoal(["generate", "--model", model, "--ids", "1", "--workers", "10.1.2.3:5"])
        #expect(coordinator.status == 1 && coordinator.stderr.contains("--workers 10.1.2.3:5 is not loopback"),
                "\(coordinator.stderr)")
        let joining = try CLITests().shoal(["worker", "--model", model, "--join", "10.1.2.3:50050"])
        #expect(joining.status == 1 && joining.stderr.contains("--join 10.1.2.3:50050 is not loopback: give --tls DIR"),
                "\(joining.stderr)")
        let missing = try CLITests().shoal(["worker", "--model", model, "--experts", "0-7", "--tls", "/nonexistent"])
        #expect(missing.status == 1 && missing.stderr.contains("/nonexistent/ca.pem: no such file"), "\(missing.stderr)")
    }
}

/// `shoal cluster plan` on a fixture: every pair placed with room to spare (replicas), and a
/// cluster too small says what is unplaced and exits 2.
@Suite struct ClusterPlanTests {
    @Test func planPlacesEveryPairOrSaysWhatIsMissing() throws {
        let model = try Fixtures.path("models/tiny-f32/hf")
        let file = NSTemporaryDirectory() + "shoal-workers-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try #"[{"name": "a", "memory": "1MiB"}, {"name": "b", "memory": "1MiB", "speed": 2}]"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let run = try CLITests().shoal(["cluster", "plan", "--model", model, "--workers", file, "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let plan = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] ?? [:]
        let holders = plan["holders"] as? [[[String]]] ?? []
        #expect(holders.count == 2 && holders.allSatisfy { $0.count == 8 && $0.allSatisfy { !$0.isEmpty } }, "\(run.stdout)")
        #expect((plan["replicated_pairs"] as? Int ?? 0) > 0 && (plan["missing_bytes"] as? Int) == 0, "\(run.stdout)")

        try #"[{"name": "small", "memory": "200KiB"}]"#.write(toFile: file, atomically: true, encoding: .utf8)
        let small = try CLITests().shoal(["cluster", "plan", "--model", model, "--workers", file])
        #expect(small.status == 2 && small.stdout.contains("unplaced: ") && small.stdout.contains("more are needed"),
                "\(small.stdout) \(small.stderr)")
        try #"[{"name": "x", "memory": "lots"}]"#.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try CLITests().shoal(["cluster", "plan", "--model", model, "--workers", file])
        #expect(bad.status != 0 && bad.stderr.contains("\"memory\" must be bytes"), "\(bad.stderr)")
    }
}

/// `shoal synth` shows its progress: off a terminal, a line per layer and a last one at 100%.
@Suite struct SynthProgressTests {
    @Test func synthPrintsALinePerLayerAndTheEnd() throws {
        let out = NSTemporaryDirectory() + "shoal-synth-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let run = try CLITests().shoal(["synth", "--out", out, "--shape", "tiny", "--layers", "3"])
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stderr.split(separator: "\n").filter { $0.hasPrefix("synth: ") }
        for layer in 0..<3 { #expect(lines.contains { $0.hasSuffix("layer \(layer)") }, "\(run.stderr)") }
        #expect(lines.last?.hasPrefix("synth: 100% ") == true, "\(run.stderr)")
    }
}
