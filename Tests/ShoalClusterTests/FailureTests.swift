import Foundation
import Logging
import ShoalTestSupport
import Testing
import ShoalCluster
import ShoalModel
import ShoalRPC

/// Bad clusters are refused at start with the reason; a worker dying fails the request that
/// needed it, naming the worker, the layer and the experts, and the coordinator carries on.
@Suite struct FailureTests {
    @Test func workerForAnotherModelIsRefusedAtHello() async throws {
        // Same architecture, other weights: only the fingerprint tells them apart.
        let other = try LocalCluster(folder: try Fixtures.path("models/tiny-f32/hf"), specs: ["0-7"])
        let folder = try Fixtures.path("models/tiny-bf16/hf"), addresses = other.addresses
        let text = await errorText { _ = try clusterEngine(folder, addresses) }
        await other.stop()
        #expect(text?.contains("worker \(addresses[0]) refused") == true, "\(text ?? "no error")")
        #expect(text?.contains("model_fingerprint") == true, "\(text ?? "no error")")
    }

    @Test func missingPairsAreListed() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-6"])
        let addresses = cluster.addresses
        let text = await errorText { _ = try clusterEngine(folder, addresses) }
        await cluster.stop()
        #expect(text?.hasPrefix("no live worker holds 2 (layer/expert) pairs: 0/7, 1/7") == true, "\(text ?? "no error")")
    }

    @Test func unreachableWorkerWithoutReplicaIsNamed() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7"])
        let addresses = cluster.addresses
        await cluster.servers[1].shutdown(grace: .zero)
        let text = await errorText { _ = try clusterEngine(folder, addresses) }
        await cluster.stop()
        #expect(text?.contains("no live worker holds 8") == true && text?.contains("down: \(addresses[1])") == true,
                "\(text ?? "no error")")
    }

    @Test func deadWorkerFailsTheRequestAndTheNextOneUsesTheReplica() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        // Experts 4-7 are held twice, by workers 1 and 2.
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7", "4-7"])
        let addresses = cluster.addresses
        let engines = try await offPool {
            Engines(remote: try clusterEngine(folder, addresses), local: try Engine(folder: folder, threads: 1))
        }
        let expected = try await offPool { try greedy(engines.local, prompt) }
        #expect(try await offPool { try greedy(engines.remote, prompt) } == expected)

        await cluster.servers[1].shutdown(grace: .zero)
        // Holders alternate call by call, so within a few requests one lands on the dead
        // worker and fails, quickly and by name; every later request succeeds.
        var failure: String?
        for _ in 0..<4 where failure == nil {
            let start = ContinuousClock.now
            failure = await errorText { _ = try greedy(engines.remote, prompt, tokens: 4) }
            #expect(ContinuousClock.now - start < .seconds(5))
        }
        #expect(failure?.hasPrefix("worker \(addresses[1]) failed layer ") == true, "\(failure ?? "no request failed")")
        #expect(failure?.contains(" experts ") == true, "\(failure ?? "no request failed")")
        #expect(try await offPool { try greedy(engines.remote, prompt) } == expected)
        #expect(try await offPool { try greedy(engines.remote, prompt) } == expected)
        await cluster.stop()
    }

    @Test func deadWorkerWithoutReplicaFailsEveryRequestByName() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7"])
        let addresses = cluster.addresses
        let engine = try await offPool { Engines(remote: try clusterEngine(folder, addresses), local: nil) }
        _ = try await offPool { try greedy(engine.remote, prompt, tokens: 2) }
        await cluster.servers[0].shutdown(grace: .zero)
        for _ in 0..<2 {
            let text = await errorText { _ = try greedy(engine.remote, prompt, tokens: 2) }
            #expect(text?.contains(addresses[0]) == true, "\(text ?? "no error")")
        }
        await cluster.stop()
    }

    /// The coordinator keeps one Compute stream per worker open between requests. A worker
    /// restarted in between ends it unseen; the next request still succeeds (its layer is
    /// sent again on a new stream), as it would have with a call per layer.
    @Test func workerRestartedBetweenRequestsServesTheNext() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7"])
        let addresses = cluster.addresses
        let engines = try await offPool {
            Engines(remote: try clusterEngine(folder, addresses), local: try Engine(folder: folder, threads: 1))
        }
        let expected = try await offPool { try greedy(engines.local, prompt, tokens: 4) }
        #expect(try await offPool { try greedy(engines.remote, prompt, tokens: 4) } == expected)
        await cluster.servers[1].shutdown(grace: .zero)
        let checkpoint = try Checkpoint(folder: folder)
        let pairs = try ExpertSpec("4-7").pairs(layers: checkpoint.config.layers, experts: checkpoint.config.experts)
        let again = try ExpertWorker(checkpoint: checkpoint, pairs: pairs, threads: 1, name: "restarted",
                                     logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let restarted = try again.startServer(listen: addresses[1])
        #expect(try await offPool { try greedy(engines.remote, prompt, tokens: 4) } == expected)
        await restarted.shutdown(grace: .zero)
        await cluster.stop()
    }
}

/// Engines handed between the test and the threads that drive them, one thread at a time.
struct Engines: @unchecked Sendable {
    let remote: Engine
    let local: Engine!
}

/// Answers are never trusted: a worker sending NaN activations (right size, right dtype) is a
/// broken worker, named in the error; with a replica the request fails once and the next ones
/// are served by the replica, exactly.
@Suite struct UntrustedAnswerTests {
    @Test func aNaNWorkerWithoutReplicaIsNamed() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7"], faults: [1: .nanAnswers])
        let addresses = cluster.addresses
        let engine = try await offPool { Engines(remote: try clusterEngine(folder, addresses), local: nil) }
        let text = await errorText { _ = try greedy(engine.remote, prompt, tokens: 2) }
        await cluster.stop()
        #expect(text?.contains("worker \(addresses[1])") == true && text?.contains("non-finite value") == true,
                "\(text ?? "no error")")
    }

    @Test func aNaNWorkerWithAReplicaStopsBeingUsed() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7", "4-7"], faults: [1: .nanAnswers])
        let addresses = cluster.addresses
        let engines = try await offPool {
            Engines(remote: try clusterEngine(folder, addresses), local: try Engine(folder: folder, threads: 1))
        }
        let expected = try await offPool { try greedy(engines.local, prompt) }
        var outcomes: [String] = []
        for _ in 0..<3 {
            let text = await errorText {
                guard try greedy(engines.remote, prompt) == expected else { throw CancellationError() }
            }
            outcomes.append(text ?? "same")
        }
        await cluster.stop()
        // At most the first request meets the NaN worker; every one after it is exact.
        #expect(outcomes.dropFirst().allSatisfy { $0 == "same" }, "\(outcomes)")
        #expect(outcomes[0] == "same" || outcomes[0].contains("non-finite value"), "\(outcomes)")
    }
}
