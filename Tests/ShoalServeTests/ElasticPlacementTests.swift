import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalServe
import ShoalTestSupport
import Synchronization
import Testing

/// Elastic placement while requests stream (issue 16's proof, on loopback): a coordinator with
/// no fixed workers; one worker joins, then two more (the placement spreads), one is drained,
/// one dies, a new one joins. Requests run back to back all along, and every one gives exactly
/// the tokens one process gives (f32 wire).
@Suite(.serialized) struct ElasticPlacementTests {
    /// Submits the prompts round after round, one request at a time, until stopped.
    final class Traffic: @unchecked Sendable {
        private let stopFlag = Atomic<Bool>(false)
        private let runs = Mutex<[(prompt: Int, log: EventLog)]>([])
        private let done = DispatchSemaphore(value: 0)

        init(_ scheduler: Scheduler, _ requests: [GenerationRequest]) {
            Thread.detachNewThread { [self] in
                var i = 0
                while !stopFlag.load(ordering: .acquiring) {
                    let log = EventLog()
                    guard (try? scheduler.submit(requests[i % requests.count], onEvent: log.add)) != nil else { break }
                    runs.withLock { $0.append((i % requests.count, log)) }
                    _ = log.summary(within: 60)
                    i += 1
                }
                done.signal()
            }
        }

        var finished: Int { runs.withLock { $0.count { $0.log.summary(within: 0) != nil } } }

        /// Waits until `count` more requests have finished (at most `seconds`).
        func waitFor(_ count: Int, within seconds: Double) -> Bool {
            let target = finished + count, deadline = Date(timeIntervalSinceNow: seconds)
            while finished < target {
                guard Date() < deadline else { return false }
                usleep(5_000)
            }
            return true
        }

        func stop() -> [(prompt: Int, log: EventLog)] {
            stopFlag.store(true, ordering: .releasing)
            done.wait()
            return runs.withLock { $0 }
        }
    }

    @Test(.timeLimit(.minutes(3))) func joinDrainKillAndJoinWhileStreaming() async throws {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let requests = try ServeFixtures.prompts("tiny-f32").map {
            GenerationRequest(prompt: $0, parameters: GenerationParameters(maxTokens: 24, ignoreEOS: true))
        }
        let checkpoint = try Checkpoint(folder: folder)
        let total = try PlacementPlanner.pairBytes(of: checkpoint).joined().reduce(0, +)
        struct Setup: @unchecked Sendable {
            let scheduler: Scheduler
            let remote: RemoteExperts
            let controller: PlacementController
            let server: RPCServer
            let alone: [[Int]]
        }
        let setup = try await offPool {
            let local = try Engine(folder: folder, threads: 1)
            let alone = try requests.map { try local.generator.generate(prompt: $0.prompt, parameters: $0.parameters).ids }
            let (engine, remote) = try remoteEngine(folder: folder, workers: [], timeout: .seconds(10)) {
                $0.startWithMissingPairs = true
            }
            var controllerOptions = PlacementController.Options()
            controllerOptions.replicas = 1
            controllerOptions.heartbeat = .milliseconds(100)
            controllerOptions.timeout = .milliseconds(800)
            let controller = try PlacementController(remote: remote, checkpoint: engine.checkpoint, options: controllerOptions,
                                                     log: quietLogger)
            let server = try RPCServer.start(listen: "127.0.0.1:0", unary: controller.handlers)
            let coverage = remote.coverage
            let scheduler = Scheduler(engine: engine, isReady: { coverage.isComplete }, probe: { remote.probe() })
            scheduler.start()
            return Setup(scheduler: scheduler, remote: remote, controller: controller, server: server, alone: alone)
        }
        let coordinator = "127.0.0.1:\(setup.server.port)"

        // One worker: it is given every expert, and requests flow.
        let w1 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w1", memory: total)
        let oneHolds = try await offPool { eventually(within: 30) { setup.remote.coverage.isComplete } }
        #expect(oneHolds, "the first worker was not given every expert")
        #expect(w1.worker.weightBytes == total)
        let traffic = Traffic(setup.scheduler, requests)
        #expect(try await offPool { traffic.waitFor(2, within: 60) })

        // Two more join: each ends up holding about two thirds (every pair twice, spread).
        let w2 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w2", memory: total)
        let w3 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w3", memory: total)
        let pair = total / 16
        let spread = try await offPool {
            eventually(within: 30) {
                let status = setup.controller.status()
                return status.workers.count { $0.state == "serving" } == 3 && status.holders.joined().allSatisfy { $0.count == 2 }
                    && [w1, w2, w3].allSatisfy { abs($0.worker.weightBytes - 2 * total / 3) <= 2 * pair }
            }
        }
        #expect(spread, "each of 3 workers should hold about 2/3 of \(total) bytes: \([w1, w2, w3].map(\.worker.weightBytes))")
        #expect(try await offPool { traffic.waitFor(2, within: 60) })

        // Drain w2 over the cluster API: its pairs move first, then it is released.
        let drained = try await offPool { () throws -> Bool in
            let channel = RPCChannel(target: coordinator)
            defer { channel.close() }
            var request = Shoal_V1_DrainRequest()
            request.worker = "w2"
            _ = try channel.unaryWaiting(ClusterServiceMethod.drain, request: try RPCPayload(message: request), timeout: .seconds(60))
            return true
        }
        #expect(drained)
        #expect(try await offPool { w2.outcome(within: 10) } == .released)
        #expect(w2.worker.pairs.isEmpty, "a drained worker lets its experts go")
        #expect(setup.controller.status().holders.joined().allSatisfy { !$0.contains(w2.address) })
        await w2.server.shutdown(grace: .zero)
        #expect(try await offPool { traffic.waitFor(2, within: 60) })
        // Joins and a drain cost no call: routes switch only to workers that hold their pairs
        // and leave a worker only before it lets them go (a failed step would be retried and
        // hide it from the tokens).
        let failedSoFar = setup.controller.status().workers.map(\.failedCalls).reduce(0, +)
        #expect(failedSoFar == 0, "\(failedSoFar) worker calls failed while workers joined and one drained")

        // w3 dies: its replicas serve, then its pairs are re-placed.
        await w3.kill()
        #expect(try await offPool { traffic.waitFor(2, within: 60) })
        let replaced = try await offPool {
            eventually(within: 30) { setup.controller.status().workers.contains { $0.address == w3.address && $0.state == "gone" } }
        }
        #expect(replaced)

        // A new worker joins and takes its share.
        let w4 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w4", memory: total)
        let rejoined = try await offPool {
            eventually(within: 30) {
                let status = setup.controller.status()
                return status.workers.count { $0.state == "serving" } == 2 && status.holders.joined().allSatisfy { $0.count == 2 }
            }
        }
        #expect(rejoined)
        #expect(try await offPool { traffic.waitFor(2, within: 60) })

        let runs = try await offPool { traffic.stop() }
        #expect(runs.count >= 10)
        for (i, run) in runs.enumerated() {
            #expect(run.log.summary(within: 0) != nil, "request \(i) failed or hung")
            #expect(run.log.ids == setup.alone[run.prompt], "request \(i) (prompt \(run.prompt)) differs from one process")
        }
        try await offPool { setup.scheduler.shutdown(grace: .zero) }
        await w4.kill()
        await w1.kill()
        await setup.server.shutdown(grace: .zero)
    }

    /// The order that keeps every call answerable, watched step by step: with the forward pass
    /// held (nothing calls `probe()` or computes), a joining worker loads its share, but the
    /// worker giving it up keeps it until the routes have switched; only then is it released.
    @Test(.timeLimit(.minutes(1))) func aWorkerKeepsWhatItGivesUpUntilRoutesSwitch() async throws {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let checkpoint = try Checkpoint(folder: folder)
        let total = try PlacementPlanner.pairBytes(of: checkpoint).joined().reduce(0, +)
        let setup = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0) }
        let coordinator = setup.address
        let w1 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w1", memory: total)
        // This test is the forward pass: the first placement switches when it probes.
        let first = try await offPool {
            eventually(within: 20) {
                setup.remote.probe()
                return setup.remote.coverage.isComplete
            }
        }
        #expect(first && w1.worker.pairs.count == 16)

        let w2 = try JoiningWorker(folder: folder, coordinator: coordinator, name: "w2", memory: total)
        let loaded = try await offPool { eventually(within: 20) { w2.worker.pairs.count == 8 } }
        #expect(loaded, "the joining worker did not load its half")
        // Routes have not switched: w1 must keep all it holds (watched for a second).
        let releasedEarly = try await offPool { eventually(within: 1) { w1.worker.pairs.count < 16 } }
        #expect(!releasedEarly, "w1 let pairs go while calls could still be routed to it")
        // The switch, then the release.
        let released = try await offPool {
            eventually(within: 20) {
                setup.remote.probe()
                return w1.worker.pairs.count == 8
            }
        }
        #expect(released)
        #expect(Set(w1.worker.pairs).isDisjoint(with: w2.worker.pairs))
        await w1.kill()
        await w2.kill()
        await setup.stop()
    }
}
