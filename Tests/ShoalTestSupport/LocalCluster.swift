import Foundation
import Logging
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import Synchronization

/// Expert workers served from this test process on loopback, port 0, one `RPCServer` each.
public final class LocalCluster: @unchecked Sendable {
    public let servers: [RPCServer]
    public let addresses: [String]

    /// One worker per spec (`EXPERTS[@LAYERS]`), over the model in `folder`; `faults[i]`
    /// makes worker i misbehave as a broken or hostile one would.
    public init(folder: String, specs: [String], faults: [Int: WorkerFault] = [:],
                security: RPCSecurity = .insecure) throws {
        var servers: [RPCServer] = []
        for (i, spec) in specs.enumerated() {
            let checkpoint = try Checkpoint(folder: folder)
            let pairs = try ExpertSpec(spec).pairs(layers: checkpoint.config.layers, experts: checkpoint.config.experts)
            let worker = try ExpertWorker(checkpoint: checkpoint, pairs: pairs, threads: 1, name: "test \(spec)",
                                          logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            if let fault = faults[i] {
                servers.append(try Self.startFaulty(worker, fault))
            } else {
                servers.append(try worker.startServer(listen: "127.0.0.1:0", security: security))
            }
        }
        self.servers = servers
        addresses = servers.map { "127.0.0.1:\($0.port)" }
    }

    /// `worker` served with `fault`: hellos and health checks answered honestly, Compute not.
    private static func startFaulty(_ worker: ExpertWorker, _ fault: WorkerFault) throws -> RPCServer {
        let compute: @Sendable (RPCPayload) throws -> RPCPayload = { request in
            let answer = try worker.compute(request)
            switch fault {
            case .nanAnswers:
                // Every activation NaN (all-ones bits, in f32 and bf16 alike), sizes intact.
                var response = try answer.message(Shoal_V1_ComputeResponse.self)
                response.output = Data(repeating: 0xFF, count: response.output.count)
                return try RPCPayload(message: response)
            case .hangs(let switchedOn):
                // At most a minute, so that a failed test never wedges the process.
                let end = ContinuousClock.now + .seconds(60)
                while switchedOn.isOn, ContinuousClock.now < end { usleep(1_000) }
                return answer
            case .diesWithAHelloInFlight(let death):
                if death.dead.isOn { throw RPCStatus(code: .unavailable, message: "connection refused") }
                return answer
            }
        }
        // A hung process answers nothing: hellos and health checks wait too.
        let silence: @Sendable () async -> Void = {
            guard case .hangs(let switchedOn) = fault else { return }
            let end = ContinuousClock.now + .seconds(60)
            // Until the caller gives up (its deadline cancels this handler's task).
            while switchedOn.isOn, !Task.isCancelled, ContinuousClock.now < end {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        return try RPCServer.start(
            listen: "127.0.0.1:0",
            unary: [
                ExpertServiceMethod.hello: { request, _ in
                    await silence()
                    if case .diesWithAHelloInFlight(let death) = fault { try await death.hello() }
                    return try worker.hello(request)
                },
                ExpertServiceMethod.health: { request, _ in
                    await silence()
                    return try worker.health(request)
                },
            ],
            inline: [ExpertServiceMethod.compute: { request, _ in try compute(request) }],
            exchange: [ExpertServiceMethod.computeStream: { request, _ in try compute(request) }])
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


/// How a test worker misbehaves.
public enum WorkerFault: Sendable {
    /// Answers Compute with NaN activations of the right size and dtype.
    case nanAnswers
    /// Holds every answer (Compute, hellos, health) while the switch is on (a stopped or
    /// wedged process).
    case hangs(Switch)
    /// Dies while its answer to a hello is on the way back: a hello received while `hold` is on
    /// is answered (honestly) once it is off; while `dead` is on, Compute and every other hello
    /// fail as a killed worker's calls do.
    case diesWithAHelloInFlight(Death)
}

/// The switches of `WorkerFault.diesWithAHelloInFlight`, and the hellos received.
public final class Death: Sendable {
    public let hold = Switch()
    public let dead = Switch()
    private let received = Atomic<Int>(0)
    public init() {}
    /// Hellos received so far.
    public var hellos: Int { received.load(ordering: .acquiring) }

    fileprivate func hello() async throws {
        received.add(1, ordering: .acquiringAndReleasing)
        if hold.isOn {
            let end = ContinuousClock.now + .seconds(60)
            while hold.isOn, !Task.isCancelled, ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(5)) }
            return
        }
        if dead.isOn { throw RPCStatus(code: .unavailable, message: "connection refused") }
    }
}

/// A flag a test turns on and off while a worker reads it.
public final class Switch: Sendable {
    private let value: Atomic<Bool>
    public init(on: Bool = false) { value = Atomic(on) }
    public var isOn: Bool { value.load(ordering: .acquiring) }
    public func set(_ on: Bool) { value.store(on, ordering: .releasing) }
}

/// An engine of `folder` whose experts are on `workers`, with the f32 wire (the result is
/// bit-identical to one process) and `timeout` as the calls' fixed deadline; `configure` sets
/// the other options. Returns the backend too, typed, for the test to watch or steer.
public func remoteEngine(folder: String, workers: [String], timeout: Duration,
                         configure: (inout RemoteExperts.Options) -> Void = { _ in }) throws -> (engine: Engine, remote: RemoteExperts) {
    var options = RemoteExperts.Options()
    options.wireDType = .f32
    options.timeout = timeout
    configure(&options)
    var made: RemoteExperts?
    let engine = try Engine(folder: folder, threads: 1) { [options] checkpoint, _ in
        let remote = try RemoteExperts(checkpoint: checkpoint, workers: workers, options: options)
        made = remote
        return remote
    }
    return (engine, made!)
}
