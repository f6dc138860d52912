import Foundation
import Logging
import ShoalModel
import ShoalProtocol
import ShoalRPC
import SwiftProtobuf
import Synchronization

/// A worker's membership of a coordinator (`shoal worker --join`): it joins, keeps a
/// heartbeat, joins again when the coordinator does not know it (it restarted; the worker says
/// what it still holds, so little moves), and on `leave()` asks to be drained. `run()` returns
/// once the coordinator has released it.
public final class JoinClient: @unchecked Sendable {
    public struct Offer: Sendable {
        /// HOST:PORT where the worker's ExpertService listens, as the coordinator dials it.
        public var address: String
        public var name: String
        /// Bytes of expert weights it may hold.
        public var memoryBytes: Int
        /// Measured read bandwidth, bytes per second.
        public var readBytesPerSecond: Double

        public init(address: String, name: String, memoryBytes: Int, readBytesPerSecond: Double) {
            self.address = address
            self.name = name
            self.memoryBytes = memoryBytes
            self.readBytesPerSecond = readBytesPerSecond
        }
    }

    /// How membership ended.
    public enum Outcome: Sendable, Equatable {
        /// The coordinator drained this worker: nothing routes to it any more.
        case released
        /// `leave()` was called and the coordinator could not be reached (or refused the drain)
        /// within the deadline.
        case leftUnreleased(String)
    }

    private let channel: RPCChannel
    private let worker: ExpertWorker
    private let offer: Offer
    private let log: Logger
    private let leaving = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    /// Deadline of a Drain asked for by `leave()`.
    private let drainTimeout: Duration

    public init(coordinator: String, security: RPCSecurity, worker: ExpertWorker, offer: Offer,
                drainTimeout: Duration = .seconds(600), log: Logger) {
        channel = RPCChannel(target: coordinator, security: security)
        self.worker = worker
        self.offer = offer
        self.drainTimeout = drainTimeout
        self.log = log
    }

    deinit { channel.close() }

    /// Asks the coordinator (from `run()`'s thread) to re-home this worker's pairs and release
    /// it; safe from any thread.
    public func leave() {
        leaving.store(true, ordering: .releasing)
        wake.signal()
    }

    /// Ends `run()` without a drain, as a crash would (the coordinator counts the worker gone
    /// when its heartbeats stop); safe from any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        wake.signal()
    }

    /// Joins and keeps the heartbeat until released (or, after `leave()`, until the drain
    /// ends either way). Blocks the calling thread.
    public func run() -> Outcome {
        var heartbeat = Duration.seconds(1)
        var joined = false
        var reported = false  // an unreachable coordinator is logged once per outage
        while true {
            if stopping.load(ordering: .acquiring) { return .leftUnreleased("stopped") }
            if leaving.load(ordering: .acquiring) { return drain() }
            if !joined {
                do {
                    let response = try call(ClusterServiceMethod.join, joinRequest(), Shoal_V1_JoinResponse.self, timeout: .seconds(5))
                    heartbeat = .milliseconds(Int64(min(max(response.heartbeatMillis, 100), 60_000)))
                    joined = true
                    reported = false
                    log.info("joined the coordinator", metadata: [
                        "coordinator": "\(channel.target)", "offered_bytes": "\(offer.memoryBytes)",
                        "holds": "\(worker.pairs.count)",
                    ])
                } catch let status as RPCStatus where status.code == .failedPrecondition || status.code == .invalidArgument {
                    // Another model or protocol, or an address it cannot use: retrying will not help.
                    log.error("the coordinator refused this worker", metadata: ["reason": "\(status.message)"])
                    return .leftUnreleased("refused: \(status.message)")
                } catch {
                    if !reported { log.warning("cannot reach the coordinator; retrying", metadata: ["reason": "\(error)"]) }
                    reported = true
                }
            } else {
                var request = Shoal_V1_HeartbeatRequest()
                request.address = offer.address
                do {
                    let response = try call(ClusterServiceMethod.heartbeat, try RPCPayload(message: request),
                                            Shoal_V1_HeartbeatResponse.self, timeout: .seconds(5))
                    reported = false
                    switch response.state {
                    case .released:
                        log.info("released by the coordinator")
                        return .released
                    case .unknown:
                        log.info("the coordinator does not know this worker (it restarted?): joining again")
                        joined = false
                        continue
                    default: break
                    }
                } catch {
                    if !reported { log.warning("heartbeat failed; retrying", metadata: ["reason": "\(error)"]) }
                    reported = true
                }
            }
            _ = wake.wait(timeout: .now() + .milliseconds(Int(heartbeat / .milliseconds(1))))
        }
    }

    private func drain() -> Outcome {
        log.info("asking the coordinator to drain this worker")
        var request = Shoal_V1_DrainRequest()
        request.worker = offer.address
        do {
            let response = try call(ClusterServiceMethod.drain, try RPCPayload(message: request),
                                    Shoal_V1_DrainResponse.self, timeout: drainTimeout)
            log.info("drained", metadata: ["moved_bytes": "\(response.movedBytes)"])
            return .released
        } catch {
            log.warning("could not be drained", metadata: ["reason": "\(error)"])
            return .leftUnreleased("\(error)")
        }
    }

    private func joinRequest() throws -> RPCPayload {
        var request = Shoal_V1_JoinRequest()
        request.protocolVersion = ProtocolVersion.current
        request.modelFingerprint = worker.configFingerprint
        request.address = offer.address
        request.workerName = offer.name
        request.memoryBytes = UInt64(offer.memoryBytes)
        request.readBytesPerSecond = offer.readBytesPerSecond
        let held = worker.pairs
        request.layers = held.map { UInt32($0.layer) }
        request.experts = held.map { UInt32($0.expert) }
        return try RPCPayload(message: request)
    }

    private func call<M: SwiftProtobuf.Message>(_ method: String, _ request: RPCPayload, _ type: M.Type,
                                                timeout: Duration) throws -> M {
        try channel.unaryWaiting(method, request: request, timeout: timeout).message(M.self)
    }
}

/// Bytes a worker offers by default: what the host has available now, minus a margin for the
/// system and the worker itself (a tenth of the machine, at least 1 GiB).
public func defaultOfferedMemory() -> (offered: Int, available: Int, margin: Int) {
    let total = Int(ProcessInfo.processInfo.physicalMemory)
    var available = total
    if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
       let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
       let kb = Int(line.split(separator: " ").dropFirst().first ?? "") {
        available = kb * 1024
    }
    let margin = max(1 << 30, total / 10)
    return (max(0, available - margin), available, margin)
}
