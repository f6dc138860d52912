import Foundation
import Logging
import ShoalModel
import ShoalProtocol
import ShoalRPC
import ShoalTensor
import SwiftProtobuf
import Synchronization

/// The expert side of the cluster: the handlers of `shoal.v1.ExpertService` over the experts
/// this process holds (DESIGN invariants 4 and 5).
///
/// Every request is validated before use and a bad one is answered `INVALID_ARGUMENT` with a
/// message naming the field; nothing a peer sends can crash the worker. Compute calls run one
/// at a time on the worker's compute pool (a second caller waits for the first).
public final class ExpertWorker: Sendable {
    public let pairs: [ExpertKey]
    public let weightBytes: Int
    /// The fingerprint of the model's config and of the experts served (sent in Hello).
    public let fingerprint: String
    /// The fingerprint of the config alone, which a coordinator's Hello must carry.
    public let configFingerprint: String
    private let shape: ModelShape
    private let weightDType: Shoal_V1_DType
    /// Bytes of expert weights held per stored type, largest first.
    public let weightTypes: [(type: DType, bytes: Int)]
    private let limits: ComputeLimits
    private let name: String
    private let logger: Logger
    private let started = ContinuousClock.now
    private let served = Atomic<UInt64>(0)
    private let engine: Mutex<ComputeState>

    /// The mutable half: the experts' run state and scratch buffers, used under the mutex.
    private struct ComputeState: ~Copyable {
        let experts: LocalExperts
        let pool: ComputePool
        let x = FloatBuffer()
        let out = FloatBuffer()
    }

    /// Maps the experts in `pairs` of `checkpoint` (nothing else of it) for `threads` threads.
    /// - Parameters:
    ///   - maxTokens: the most tokens one Compute may carry (bounds scratch memory).
    ///   - cpus: empty, or the CPUs to pin to: the thread serving Compute calls on the first,
    ///     the compute helpers on the next ones (`ComputePool.init`).
    public init(checkpoint: Checkpoint, pairs: [ExpertKey], threads: Int, maxTokens: Int = 4096,
                cpus: [Int] = [], name: String, logger: Logger) throws {
        let store = try ExpertStore.load(checkpoint, pairs: Set(pairs))
        self.pairs = pairs
        weightBytes = store.byteCount
        fingerprint = try ModelFingerprint.of(checkpoint, pairs: pairs)
        configFingerprint = try ModelFingerprint.of(checkpoint, pairs: [])
        let c = checkpoint.config
        shape = ModelShape(dim: c.dim, hiddenDim: c.hiddenDim, layers: c.layers, experts: c.experts)
        let held = Set(pairs)
        limits = ComputeLimits(dim: c.dim, layers: c.layers, experts: c.experts, maxTokens: maxTokens) {
            held.contains(ExpertKey(layer: $0, expert: $1))
        }
        // The wire's DType names float types only: quantized experts say unspecified here, and
        // the ready line and logs name their block types (`weightTypes`).
        weightDType = store.experts.values.first.map {
            switch $0.w1.dtype { case .bf16: .bf16; case .f32: .f32; default: .unspecified }
        } ?? .unspecified
        weightTypes = store.bytesByType
        self.name = name
        self.logger = logger
        let pool = ComputePool(threads: threads, cpus: cpus)
        engine = Mutex(ComputeState(experts: LocalExperts(store: store, pool: pool), pool: pool))
    }

    /// Serves the worker's methods on `listen` (`"host:port"`, port 0 for any free port).
    /// Compute and ComputeStream run on the server's polling thread (`RPCServer.InlineHandler`,
    /// `ExchangeHandler`): they are the coordinator's critical path, and handing them to a task
    /// cost a thread wake-up per call.
    public func startServer(listen: String, security: RPCSecurity = .insecure) throws -> RPCServer {
        try RPCServer.start(
            listen: listen, security: security,
            unary: [
                ExpertServiceMethod.hello: { [self] request, _ in try hello(request) },
                ExpertServiceMethod.health: { [self] request, _ in try health(request) },
            ],
            inline: [ExpertServiceMethod.compute: { [self] request, _ in try compute(request) }],
            exchange: [ExpertServiceMethod.computeStream: { [self] request, _ in try compute(request) }])
    }

    /// The Hello handler `startServer` registers (public so a server can be composed around it).
    public func hello(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_HelloRequest.self, payload)
        do {
            try validate(request, expecting: HandshakeExpectation(fingerprint: configFingerprint, shape: shape))
        } catch {
            logger.warning("refused a coordinator", metadata: ["reason": "\(error)"])
            throw RPCStatus(code: .failedPrecondition, message: error.description)
        }
        var response = Shoal_V1_HelloResponse()
        response.protocolVersion = ProtocolVersion.current
        response.modelFingerprint = fingerprint
        response.layers = pairs.map { UInt32($0.layer) }
        response.experts = pairs.map { UInt32($0.expert) }
        response.shape = shape.proto
        response.weightDtype = weightDType
        response.weightBytes = UInt64(weightBytes)
        response.memoryBytes = UInt64(ProcessInfo.processInfo.physicalMemory)
        response.workerName = name
        return try RPCPayload(message: response)
    }

    /// The Compute (and ComputeStream message) handler `startServer` registers.
    public func compute(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_ComputeRequest.self, payload)
        let call: ValidatedCompute
        do {
            call = try validate(request, limits: limits)
        } catch {
            logger.warning("refused a compute request", metadata: ["reason": "\(error)"])
            throw RPCStatus(code: .invalidArgument, message: error.description)
        }
        let start = ContinuousClock.now
        let n = call.tokenCount, dim = call.dim
        let output: Data = try engine.withLock { state in
            let x = UnsafeMutableBufferPointer(start: state.x.reserve(n * dim), count: n * dim)
            call.decodeHidden(into: x)
            let out = UnsafeMutableBufferPointer(start: state.out.reserve(n * dim), count: n * dim)
            let routes = call.routes
            try state.experts.moe(
                layer: call.layer, x: UnsafePointer(x.baseAddress!), tokenCount: n, routeCount: routes.count,
                token: { routes[$0].token }, expert: { routes[$0].expert }, weight: { routes[$0].weight },
                out: out.baseAddress!)
            // The next call is a network round trip away: do not spin until then.
            state.pool.idle()
            return ActivationCodec.encode(UnsafeBufferPointer(out), as: call.dtype)
        }
        var response = Shoal_V1_ComputeResponse()
        response.dtype = call.dtype.proto
        response.output = output
        response.computeMicros = UInt64((ContinuousClock.now - start) / .microseconds(1))
        served.add(1, ordering: .relaxed)
        logger.trace("compute", metadata: ["layer": "\(call.layer)", "tokens": "\(n)", "routes": "\(call.routes.count)"])
        return try RPCPayload(message: response)
    }

    /// The Health handler `startServer` registers.
    public func health(_ payload: RPCPayload) throws -> RPCPayload {
        _ = try decode(Shoal_V1_HealthRequest.self, payload)
        var response = Shoal_V1_HealthResponse()
        response.status = .serving
        response.uptimeSeconds = UInt64((ContinuousClock.now - started) / .seconds(1))
        response.requestsServed = served.load(ordering: .relaxed)
        response.pairsHeld = UInt32(pairs.count)
        return try RPCPayload(message: response)
    }
}

/// A request from a payload; a payload that is not one is the caller's error.
private func decode<M: SwiftProtobuf.Message>(_ type: M.Type, _ payload: RPCPayload) throws -> M {
    do {
        return try payload.message(M.self)
    } catch {
        throw RPCStatus(code: .invalidArgument, message: "the request is not a valid \(M.protoMessageName): \(error)")
    }
}
