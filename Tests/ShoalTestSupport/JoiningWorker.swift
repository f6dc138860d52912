import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalRPC
import Synchronization

/// A logger that drops everything.
public let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// A worker in this process that joins `coordinator` and holds what it is assigned.
public final class JoiningWorker: @unchecked Sendable {
    public let worker: ExpertWorker
    public let server: RPCServer
    public let address: String
    public let membership: JoinClient
    private let ended = DispatchSemaphore(value: 0)
    private let result = Mutex<JoinClient.Outcome?>(nil)

    public init(folder: String, coordinator: String, name: String, memory: Int, readBytesPerSecond: Double = 10e9) throws {
        let checkpoint = try Checkpoint(folder: folder)
        worker = try ExpertWorker(checkpoint: checkpoint, pairs: [], threads: 1, name: name,
                                  assignableBytes: memory, logger: quietLogger)
        server = try worker.startServer(listen: "127.0.0.1:0")
        address = "127.0.0.1:\(server.port)"
        membership = JoinClient(
            coordinator: coordinator, security: .insecure, worker: worker,
            offer: .init(address: address, name: name, memoryBytes: memory, readBytesPerSecond: readBytesPerSecond),
            log: quietLogger)
        Thread.detachNewThread { [self] in
            let outcome = membership.run()
            result.withLock { $0 = outcome }
            ended.signal()
        }
    }

    /// How membership ended, waiting at most `seconds`.
    public func outcome(within seconds: Double) -> JoinClient.Outcome? {
        guard ended.wait(timeout: .now() + seconds) == .success else { return nil }
        return result.withLock { $0 }
    }

    /// As a crash: the server goes, heartbeats stop.
    public func kill() async {
        membership.stop()
        await server.shutdown(grace: .zero)
    }
}


/// Waits (at most `seconds`) until `condition` holds; the controller works on its own
/// thread, so the test can only watch for its effect.
public func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: seconds)
    while !condition() {
        guard Date() < deadline else { return false }
        usleep(10_000)
    }
    return true
}


/// A coordinator's elastic half in this process: remote experts with no fixed workers, the
/// placement controller, and its cluster listener on loopback.
public final class TestCoordinator: @unchecked Sendable {
    public let remote: RemoteExperts
    public let controller: PlacementController
    public let server: RPCServer
    /// Where workers join.
    public var address: String { "127.0.0.1:\(server.port)" }

    /// Over `remote`, or a new one over `checkpoint`; `listen` may name a port a previous
    /// coordinator had (a restart).
    public init(checkpoint: Checkpoint, remote: RemoteExperts? = nil, replicas: Int, listen: String = "127.0.0.1:0",
                timeout: Duration = .milliseconds(800)) throws {
        var remoteOptions = RemoteExperts.Options()
        remoteOptions.startWithMissingPairs = true
        self.remote = try remote ?? RemoteExperts(checkpoint: checkpoint, workers: [], options: remoteOptions)
        var options = PlacementController.Options()
        options.replicas = replicas
        options.heartbeat = .milliseconds(100)
        options.timeout = timeout
        options.settle = .milliseconds(300)
        controller = try PlacementController(remote: self.remote, checkpoint: checkpoint, options: options, log: quietLogger)
        server = try RPCServer.start(listen: listen, unary: controller.handlers)
    }

    /// Probes (taking staged placements in, as an idle forward pass does) until every pair has
    /// a live holder, at most `seconds`.
    public func waitUntilComplete(within seconds: Double) -> Bool {
        eventually(within: seconds) {
            remote.probe()
            return remote.coverage.isComplete
        }
    }

    public func stop() async { await server.shutdown(grace: .zero) }
}
