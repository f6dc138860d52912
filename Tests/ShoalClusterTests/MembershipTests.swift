import Foundation
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTestSupport
import SwiftProtobuf
import Synchronization
import Testing

/// Joining, assigning and draining: what a worker and a coordinator accept from each other,
/// and what they do when memory runs short or the coordinator restarts.
@Suite(.serialized) struct MembershipTests {
    static func fixture() throws -> (folder: String, checkpoint: Checkpoint, total: Int) {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let checkpoint = try Checkpoint(folder: folder)
        return (folder, checkpoint, try PlacementPlanner.pairBytes(of: checkpoint).joined().reduce(0, +))
    }

    static func assign(_ pairs: [(Int, Int)], leaving: [(Int, Int)] = [], fingerprint: String) throws -> RPCPayload {
        var request = Shoal_V1_AssignRequest()
        request.hello.protocolVersion = ProtocolVersion.current
        request.hello.modelFingerprint = fingerprint
        request.layers = pairs.map { UInt32($0.0) }
        request.experts = pairs.map { UInt32($0.1) }
        request.leavingLayers = leaving.map { UInt32($0.0) }
        request.leavingExperts = leaving.map { UInt32($0.1) }
        return try RPCPayload(message: request)
    }

    static func code(_ body: () throws -> Void) -> RPCStatusCode? {
        do {
            try body()
            return nil
        } catch {
            return (error as? RPCStatus)?.code
        }
    }

    @Test func assignIsCheckedBeforeAnythingLoads() throws {
        let (_, checkpoint, total) = try Self.fixture()
        let pair = total / 16
        let fixed = try ExpertWorker(checkpoint: checkpoint, pairs: [ExpertKey(layer: 0, expert: 0)], threads: 1, name: "fixed",
                                     logger: quietLogger)
        let fp = fixed.configFingerprint
        #expect(Self.code { _ = try fixed.assign(try Self.assign([(0, 1)], fingerprint: fp)) } == .failedPrecondition)
        #expect(fixed.pairs == [ExpertKey(layer: 0, expert: 0)])

        let joined = try ExpertWorker(checkpoint: checkpoint, pairs: [], threads: 1, name: "joined",
                                      assignableBytes: 3 * pair, logger: quietLogger)
        #expect(Self.code { _ = try joined.assign(try Self.assign([(0, 1)], fingerprint: "0123456789abcdef")) } == .failedPrecondition)
        #expect(Self.code { _ = try joined.assign(try Self.assign([(0, 1), (0, 1)], fingerprint: fp)) } == .invalidArgument)
        #expect(Self.code { _ = try joined.assign(try Self.assign([(0, 8)], fingerprint: fp)) } == .invalidArgument)
        #expect(Self.code { _ = try joined.assign(try Self.assign([(9, 0)], fingerprint: fp)) } == .invalidArgument)
        #expect(Self.code { _ = try joined.assign(try Self.assign([], leaving: [(0, 0), (0, 0)], fingerprint: fp)) } == .invalidArgument)
        #expect(Self.code { _ = try joined.assign(try Self.assign([(0, 0), (0, 1), (1, 0), (1, 1)], fingerprint: fp)) } == .resourceExhausted)
        #expect(joined.pairs.isEmpty, "a refused assignment loads nothing")

        // Three pairs fit; pairs being let go do not count against the memory offered.
        let answer = try joined.assign(try Self.assign([(0, 0), (0, 1), (1, 0)], fingerprint: fp))
        let hello = try answer.message(Shoal_V1_HelloResponse.self)
        #expect(hello.layers.count == 3 && hello.weightBytes == UInt64(3 * pair))
        _ = try joined.assign(try Self.assign([(1, 1), (1, 2), (1, 3)], leaving: [(0, 0), (0, 1), (1, 0)], fingerprint: fp))
        #expect(joined.pairs.count == 6, "pairs leaving are kept until the next assignment")
        _ = try joined.assign(try Self.assign([(1, 1), (1, 2), (1, 3)], fingerprint: fp))
        #expect(joined.pairs == [(1, 1), (1, 2), (1, 3)].map { ExpertKey(layer: $0.0, expert: $0.1) })
    }

    /// `--preload`: the held experts' pages are read before the worker serves them, at start and
    /// for each assignment (only what it then holds), and the progress covers every byte.
    @Test func preloadReadsWhatIsHeld() throws {
        let (_, checkpoint, total) = try Self.fixture()
        let pair = total / 16
        let reports = Mutex<[(done: Int, total: Int)]>([])
        let worker = try ExpertWorker(
            checkpoint: checkpoint, pairs: [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 1, expert: 7)], threads: 1,
            name: "preloading", assignableBytes: total, preload: { done, all in reports.withLock { $0.append((done, all)) } },
            logger: quietLogger)
        var seen = reports.withLock { $0 }
        #expect(seen.last.map { $0.done == 2 * pair && $0.total == 2 * pair } == true, "\(seen)")
        #expect(zip(seen, seen.dropFirst()).allSatisfy { $0.done < $1.done }, "progress only grows")
        reports.withLock { $0.removeAll() }
        _ = try worker.assign(try Self.assign([(0, 1), (0, 2), (1, 3)], fingerprint: worker.configFingerprint))
        seen = reports.withLock { $0 }
        #expect(seen.last.map { $0.done == 3 * pair && $0.total == 3 * pair } == true, "\(seen)")
        #expect(seen.count == 9, "three matrices of each of the three pairs")
    }

    /// Measured read bandwidths within 1.5× of each other count as equal (a short read on a
    /// shared host varies that much); a worker three times faster carries more.
    @Test(.timeLimit(.minutes(1))) func onlyAReallyFasterWorkerCarriesMore() async throws {
        let speeds: [Double] = PlacementController.relativeSpeeds([10e9, 14e9, 30e9, 6e9])
        let expected: [Double] = [1, 1, 30.0 / 14, 6.0 / 14]
        #expect(speeds == expected)
        #expect(PlacementController.relativeSpeeds([0, 5e9]) == [1, 1], "an unmeasured worker counts as the median")
        let (folder, checkpoint, total) = try Self.fixture()
        let coordinator = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0) }
        let slow = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "a", memory: total, readBytesPerSecond: 10e9)
        let alike = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "b", memory: total, readBytesPerSecond: 13e9)
        let fast = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "c", memory: total, readBytesPerSecond: 30e9)
        let settled = try await offPool {
            eventually(within: 20) {
                coordinator.remote.probe()
                let held = [slow, alike, fast].map(\.worker.pairs.count)
                return held.reduce(0, +) == 16 && coordinator.controller.status().workers.count { $0.state == "serving" } == 3
                    && held[2] >= held[0] + 3 && abs(held[0] - held[1]) <= 1
            }
        }
        #expect(settled)
        let (a, b, c) = (slow.worker.pairs.count, alike.worker.pairs.count, fast.worker.pairs.count)
        #expect(abs(a - b) <= 1, "10 and 13 GB/s hold \(a) and \(b) pairs")
        #expect(c >= a + 3 && c >= b + 3, "30 GB/s holds \(c), the others \(a) and \(b)")
        for w in [slow, alike, fast] { await w.kill() }
        await coordinator.stop()
    }

    /// Calls a method of the coordinator's cluster service, returning the answer or the status.
    static func call<M: SwiftProtobuf.Message>(_ address: String, _ method: String, _ request: some SwiftProtobuf.Message,
                                               _ type: M.Type) async -> Result<M, RPCStatus> {
        let channel = RPCChannel(target: address)
        defer { channel.close() }
        do {
            let payload = try await channel.unary(method, request: try RPCPayload(message: request), timeout: .seconds(20))
            return .success(try payload.message(M.self))
        } catch {
            return .failure(error as? RPCStatus ?? RPCStatus(code: .unknown, message: "\(error)"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func joinsAreChecked() async throws {
        let (_, checkpoint, _) = try Self.fixture()
        let coordinator = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 1) }
        let good = { () -> Shoal_V1_JoinRequest in
            var request = Shoal_V1_JoinRequest()
            request.protocolVersion = ProtocolVersion.current
            request.modelFingerprint = (try? ModelFingerprint.of(checkpoint, pairs: [])) ?? ""
            request.address = "127.0.0.1:1"
            request.memoryBytes = 1 << 30
            request.readBytesPerSecond = 1e10
            return request
        }
        var cases: [(String, Shoal_V1_JoinRequest, RPCStatusCode)] = []
        var r = good(); r.modelFingerprint = "ffffffffffffffff"; cases.append(("another model", r, .failedPrecondition))
        r = good(); r.protocolVersion = 1; cases.append(("another protocol", r, .failedPrecondition))
        r = good(); r.address = "nowhere"; cases.append(("no port", r, .invalidArgument))
        r = good(); r.address = "host:0"; cases.append(("port 0", r, .invalidArgument))
        r = good(); r.address = "0.0.0.0:80"; cases.append(("every interface, not an address to dial", r, .invalidArgument))
        r = good(); r.address = "a b:80"; cases.append(("a space", r, .invalidArgument))
        r = good(); r.address = String(repeating: "h", count: 300) + ":80"; cases.append(("300 bytes", r, .invalidArgument))
        r = good(); r.memoryBytes = 1 << 60; cases.append(("an exabyte", r, .invalidArgument))
        r = good(); r.readBytesPerSecond = .nan; cases.append(("NaN speed", r, .invalidArgument))
        r = good(); r.readBytesPerSecond = -1; cases.append(("negative speed", r, .invalidArgument))
        r = good(); r.layers = [0, 0]; r.experts = [1, 1]; cases.append(("a pair twice", r, .invalidArgument))
        r = good(); r.layers = [0]; r.experts = [8]; cases.append(("no such expert", r, .invalidArgument))
        r = good(); r.layers = [0, 1]; r.experts = [1]; cases.append(("ragged pairs", r, .invalidArgument))
        for (what, request, expected) in cases {
            let answer = await Self.call(coordinator.address, ClusterServiceMethod.join, request, Shoal_V1_JoinResponse.self)
            guard case .failure(let status) = answer else {
                Issue.record("\(what): accepted")
                continue
            }
            #expect(status.code == expected, "\(what): \(status)")
        }
        #expect(coordinator.controller.status().workers.isEmpty, "a refused join is not a worker")

        var heartbeat = Shoal_V1_HeartbeatRequest()
        heartbeat.address = "127.0.0.1:9"
        let beat = await Self.call(coordinator.address, ClusterServiceMethod.heartbeat, heartbeat, Shoal_V1_HeartbeatResponse.self)
        #expect((try? beat.get().state) == .unknown, "a stranger's heartbeat is told to join")
        var drain = Shoal_V1_DrainRequest()
        drain.worker = "nobody"
        let drained = await Self.call(coordinator.address, ClusterServiceMethod.drain, drain, Shoal_V1_DrainResponse.self)
        guard case .failure(let status) = drained else { Issue.record("drained nobody"); return }
        #expect(status.code == .notFound)
        await coordinator.stop()
    }

    /// Two workers with room for half the experts each, no replicas: the first alone leaves
    /// half unplaced (and says how much memory is missing); with the second every pair is
    /// held; draining one is refused (the other has no room) and it keeps serving.
    @Test(.timeLimit(.minutes(1))) func tooLittleMemoryIsReportedAndADrainWithoutRoomRefused() async throws {
        let (folder, checkpoint, total) = try Self.fixture()
        let coordinator = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0) }
        let w1 = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "w1", memory: total / 2)
        let half = try await offPool {
            eventually(within: 20) {
                coordinator.remote.probe()
                return w1.worker.pairs.count == 8 && coordinator.controller.status().unplaced.count == 8
            }
        }
        #expect(half)
        #expect(!coordinator.remote.coverage.isComplete)
        #expect(coordinator.controller.status().missingBytes == total / 2)
        let w2 = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "w2", memory: total / 2)
        #expect(try await offPool { coordinator.waitUntilComplete(within: 20) })
        #expect(coordinator.controller.status().unplaced.isEmpty)

        var drain = Shoal_V1_DrainRequest()
        drain.worker = w2.address
        let drained = await Self.call(coordinator.address, ClusterServiceMethod.drain, drain, Shoal_V1_DrainResponse.self)
        guard case .failure(let status) = drained else { Issue.record("drained a worker whose pairs had nowhere to go"); return }
        #expect(status.code == .failedPrecondition, "\(status)")
        #expect(w2.worker.pairs.count == 8)
        #expect(coordinator.controller.status().workers.first { $0.address == w2.address }?.state == "serving")
        await w1.kill()
        await w2.kill()
        await coordinator.stop()
    }

    /// The coordinator restarts on the same address: its workers join again saying what they
    /// hold, and the new coordinator keeps it where it is (nothing moves).
    @Test(.timeLimit(.minutes(1))) func aRestartedCoordinatorKeepsWhatWorkersHold() async throws {
        let (folder, checkpoint, total) = try Self.fixture()
        let first = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0) }
        let address = first.address
        let w1 = try JoiningWorker(folder: folder, coordinator: address, name: "w1", memory: total)
        #expect(try await offPool { first.waitUntilComplete(within: 20) })
        let w2 = try JoiningWorker(folder: folder, coordinator: address, name: "w2", memory: total)
        #expect(try await offPool {
            eventually(within: 20) {
                first.remote.probe()
                return w1.worker.pairs.count == 8 && w2.worker.pairs.count == 8
            }
        })
        let before = (w1.worker.pairs, w2.worker.pairs)
        await first.stop()

        let second = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0, listen: address) }
        #expect(try await offPool { second.waitUntilComplete(within: 20) }, "the workers did not join the new coordinator")
        #expect(w1.worker.pairs == before.0 && w2.worker.pairs == before.1, "pairs moved after the restart")
        #expect(second.controller.status().workers.count { $0.state == "serving" } == 2)
        await w1.kill()
        await w2.kill()
        await second.stop()
    }

    /// No replicas: a worker dies, the next generation fails naming the pairs it held; once
    /// its heartbeats have stopped for the timeout, its pairs are placed on the worker left (it
    /// has room) and generation works again, as one process computes it, without a restart.
    @Test(.timeLimit(.minutes(1))) func pairsOfADeadWorkerWithoutReplicaArePlacedAgain() async throws {
        let (folder, checkpoint, total) = try Self.fixture()
        let coordinator = try await offPool { try TestCoordinator(checkpoint: checkpoint, replicas: 0) }
        let w1 = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "w1", memory: total)
        let w2 = try JoiningWorker(folder: folder, coordinator: coordinator.address, name: "w2", memory: total)
        #expect(try await offPool {
            eventually(within: 20) {
                coordinator.remote.probe()
                return w1.worker.pairs.count == 8 && w2.worker.pairs.count == 8 && coordinator.remote.coverage.isComplete
            }
        })
        struct Engines: @unchecked Sendable { let local: Engine; let remote: Engine }
        let engines = try await offPool {
            Engines(local: try Engine(folder: folder, threads: 1),
                    remote: try Engine(folder: folder, threads: 1) { _, _ in coordinator.remote })
        }
        let prompt = [1, 2, 3, 4, 5]
        let parameters = GenerationParameters(maxTokens: 8, ignoreEOS: true)
        let alone = try await offPool { try engines.local.generator.generate(prompt: prompt, parameters: parameters).ids }
        #expect(try await offPool { try engines.remote.generator.generate(prompt: prompt, parameters: parameters).ids } == alone)

        let lost = Set(w2.worker.pairs)
        await w2.kill()
        let failure = try await offPool { () -> String? in
            do {
                _ = try engines.remote.generator.generate(prompt: prompt, parameters: parameters)
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(failure?.contains(w2.address) == true, "the failure names the dead worker: \(failure ?? "none")")
        let replaced = try await offPool { coordinator.waitUntilComplete(within: 20) }
        #expect(replaced, "the dead worker's pairs were not placed again")
        #expect(lost.isSubset(of: Set(w1.worker.pairs)))
        #expect(try await offPool { try engines.remote.generator.generate(prompt: prompt, parameters: parameters).ids } == alone)
        await w1.kill()
        await coordinator.stop()
    }
}
