import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalRPC

/// Expert workers served from this test process on loopback, port 0, one `RPCServer` each.
public final class LocalCluster: @unchecked Sendable {
    public let servers: [RPCServer]
    public let addresses: [String]

    /// One worker per spec (`EXPERTS[@LAYERS]`), over the model in `folder`.
    public init(folder: String, specs: [String]) throws {
        var servers: [RPCServer] = []
        for spec in specs {
            let checkpoint = try Checkpoint(folder: folder)
            let pairs = try ExpertSpec(spec).pairs(layers: checkpoint.config.layers, experts: checkpoint.config.experts)
            let worker = try ExpertWorker(checkpoint: checkpoint, pairs: pairs, threads: 1, name: "test \(spec)",
                                          logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            servers.append(try worker.startServer(listen: "127.0.0.1:0"))
        }
        self.servers = servers
        addresses = servers.map { "127.0.0.1:\($0.port)" }
    }

    public func stop() async {
        for server in servers { await server.shutdown(grace: .zero) }
    }
}

/// Runs blocking coordinator work on a thread of its own. A coordinator waits for its workers
/// synchronously, and these workers answer from Swift concurrency's cooperative pool, which is
/// as small as the machine (2 threads here): waiting on one of its threads starves them.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

