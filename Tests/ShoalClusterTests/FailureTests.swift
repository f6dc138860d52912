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

    /// A hello the prober sent just before a worker died can be answered and taken in after a
    /// call found the worker dead. It says nothing of the worker now: taken as a sign of life it
    /// routes the next request to the dead worker again (the retried step of a server then
    /// fails too: a flake of ElasticPlacementTests when a worker is killed while serving).
    @Test func aHelloAnsweredBeforeADeathDoesNotReviveTheWorker() async throws {
        let folder = try Fixtures.path("models/tiny-f32/hf")
        let prompt = try Fixtures.prompts("tiny-f32")[0]
        let death = Death()
        // Both hold every expert: each is the other's replica.
        let cluster = try LocalCluster(folder: folder, specs: ["0-7", "0-7"], faults: [0: .diesWithAHelloInFlight(death)])
        let addresses = cluster.addresses
        struct Setup: @unchecked Sendable {
            let engines: Engines
            let remote: RemoteExperts
        }
        let setup = try await offPool {
            // Hellos may take long: the held one must come back as an answer, not a timeout.
            let (engine, remote) = try remoteEngine(folder: folder, workers: addresses, timeout: .seconds(20)) {
                $0.probeDeadline = .seconds(30)
            }
            return Setup(engines: Engines(remote: engine, local: try Engine(folder: folder, threads: 1)), remote: remote)
        }
        let expected = try await offPool { try greedy(setup.engines.local, prompt, tokens: 4) }

        // The idle coordinator's round of hellos: worker 0's is held.
        death.hold.set(true)
        let sentBefore = death.hellos
        let asked = try await offPool {
            eventually(within: 10) {
                setup.remote.probe()
                return death.hellos > sentBefore
            }
        }
        #expect(asked, "no hello reached worker 0")
        // It dies; a request finds it dead (holders alternate layer by layer) and fails.
        death.dead.set(true)
        let failure = await errorText { _ = try greedy(setup.engines.remote, prompt, tokens: 4) }
        #expect(failure?.hasPrefix("worker \(addresses[0]) failed layer ") == true, "\(failure ?? "no request failed")")
        // The held hello's answer comes back. The prober files it before its next round, whose
        // hello to the dead worker is the sign that it has.
        let held = death.hellos
        death.hold.set(false)
        #expect(try await offPool { eventually(within: 10) { death.hellos > held } }, "the prober asked no more")
        let revived = try await offPool {
            setup.remote.probe()
            return setup.remote.workers[0].alive
        }
        #expect(!revived, "a hello sent before the worker died brought it back")
        #expect(try await offPool { try greedy(setup.engines.remote, prompt, tokens: 4) } == expected)
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
