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
    /// What the worker holds: fixed at start, or changed by the coordinator's Assign calls when
    /// it joined one (`assignableBytes`).
    public struct Holding: Sendable {
        public let pairs: [ExpertKey]
        public let weightBytes: Int
        /// The fingerprint of the model's config and of the experts served (sent in Hello).
        public let fingerprint: String
        /// Bytes of expert weights held per stored type, largest first.
        public let weightTypes: [(type: DType, bytes: Int)]
        let weightDType: Shoal_V1_DType
    }

    /// What it holds now.
    public var holding: Holding { engine.withLock { $0.holding } }
    public var pairs: [ExpertKey] { holding.pairs }
    public var weightBytes: Int { holding.weightBytes }
    public var fingerprint: String { holding.fingerprint }
    public var weightTypes: [(type: DType, bytes: Int)] { holding.weightTypes }
    /// The fingerprint of the config alone, which a coordinator's Hello must carry.
    public let configFingerprint: String
    /// Bytes of expert weights a joined worker may be given; nil for fixed experts (Assign is
    /// refused).
    public let assignableBytes: Int?
    private let checkpoint: Checkpoint
    private let shape: ModelShape
    private let maxTokens: Int
    private let name: String
    private let logger: Logger
    private let started = ContinuousClock.now
    private let served = Atomic<UInt64>(0)
    private let engine: Mutex<ComputeState>
    /// Taken for a whole Assign, so two never interleave their loading.
    private let assigning = Mutex(())
    /// Reads the experts' pages in before they serve (`--preload`), reporting bytes done and
    /// total; nil: pages come in as the first requests touch them.
    private let preload: (@Sendable (_ done: Int, _ total: Int) -> Void)?

    /// The mutable half: what is held, the experts' run state and scratch buffers, used under
    /// the mutex.
    private struct ComputeState: ~Copyable {
        var holding: Holding
        var limits: ComputeLimits
        var experts: LocalExperts
        let pool: ComputePool
        let x = FloatBuffer()
        let out = FloatBuffer()
    }

    /// Maps the experts in `pairs` of `checkpoint` (nothing else of it) for `threads` threads.
    /// - Parameters:
    ///   - maxTokens: the most tokens one Compute may carry (bounds scratch memory).
    ///   - cpus: empty, or the CPUs to pin to: the thread serving Compute calls on the first,
    ///     the compute helpers on the next ones (`ComputePool.init`).
    ///   - assignableBytes: for a worker that joins a coordinator: it starts with `pairs` (maybe
    ///     none) and takes Assign calls up to this many bytes of weights.
    public init(checkpoint: Checkpoint, pairs: [ExpertKey], threads: Int, maxTokens: Int = 4096,
                cpus: [Int] = [], name: String, assignableBytes: Int? = nil,
                preload: (@Sendable (_ done: Int, _ total: Int) -> Void)? = nil, logger: Logger) throws {
        self.preload = preload
        self.checkpoint = checkpoint
        self.maxTokens = maxTokens
        self.assignableBytes = assignableBytes
        configFingerprint = try ModelFingerprint.of(checkpoint, pairs: [])
        let c = checkpoint.config
        shape = ModelShape(dim: c.dim, hiddenDim: c.hiddenDim, layers: c.layers, experts: c.experts)
        self.name = name
        self.logger = logger
        let (holding, store) = try Self.load(checkpoint, pairs: pairs)
        if let preload { store.preload(progress: preload) }
        let pool = ComputePool(threads: threads, cpus: cpus)
        engine = Mutex(ComputeState(
            holding: holding, limits: Self.limits(shape, maxTokens, holding.pairs),
            experts: LocalExperts(store: store, pool: pool), pool: pool))
    }

    private static func load(_ checkpoint: Checkpoint, pairs: [ExpertKey]) throws -> (Holding, ExpertStore) {
        let store = try ExpertStore.load(checkpoint, pairs: Set(pairs))
        // The wire's DType names float types only: quantized experts say unspecified here, and
        // the ready line and logs name their block types (`weightTypes`).
        let dtype: Shoal_V1_DType = store.experts.values.first.map {
            switch $0.w1.dtype { case .bf16: .bf16; case .f32: .f32; default: .unspecified }
        } ?? .unspecified
        let holding = Holding(pairs: pairs, weightBytes: store.byteCount,
                              fingerprint: try ModelFingerprint.of(checkpoint, pairs: pairs),
                              weightTypes: store.bytesByType, weightDType: dtype)
        return (holding, store)
    }

    private static func limits(_ shape: ModelShape, _ maxTokens: Int, _ pairs: [ExpertKey]) -> ComputeLimits {
        let held = Set(pairs)
        return ComputeLimits(dim: shape.dim, layers: shape.layers, experts: shape.experts, maxTokens: maxTokens) {
            held.contains(ExpertKey(layer: $0, expert: $1))
        }
    }

    /// Holds exactly `pairs` from now on: maps the new ones (while the old still serve), then
    /// switches between two Compute calls and lets the rest go.
    public func hold(_ pairs: [ExpertKey]) throws {
        try assigning.withLock { _ in
            let before = Set(holding.pairs)
            guard Set(pairs) != before else { return }
            let (holding, store) = try Self.load(checkpoint, pairs: pairs)
            // Before the swap: a joined worker answers Assign, and so takes traffic, only once
            // its new pages are in.
            if let preload { store.preload(progress: preload) }
            let limits = Self.limits(shape, maxTokens, pairs)
            engine.withLock { state in
                state.experts = LocalExperts(store: store, pool: state.pool)
                state.limits = limits
                state.holding = holding
            }
            let after = Set(pairs)
            logger.info("holding", metadata: [
                "pairs": "\(pairs.count)", "bytes": "\(holding.weightBytes)",
                "added": "\(after.subtracting(before).count)", "dropped": "\(before.subtracting(after).count)",
            ])
        }
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
                ExpertServiceMethod.assign: { [self] request, _ in try assign(request) },
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
        return try helloResponse()
    }

    private func helloResponse() throws -> RPCPayload {
        let holding = self.holding
        var response = Shoal_V1_HelloResponse()
        response.protocolVersion = ProtocolVersion.current
        response.modelFingerprint = holding.fingerprint
        response.layers = holding.pairs.map { UInt32($0.layer) }
        response.experts = holding.pairs.map { UInt32($0.expert) }
        response.shape = shape.proto
        response.weightDtype = holding.weightDType
        response.weightBytes = UInt64(holding.weightBytes)
        response.memoryBytes = UInt64(ProcessInfo.processInfo.physicalMemory)
        response.workerName = name
        return try RPCPayload(message: response)
    }

    /// The Assign handler `startServer` registers: a joined worker's new set of pairs, loaded
    /// before it answers (as Hello would, with the new pairs).
    public func assign(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_AssignRequest.self, payload)
        guard let assignableBytes else {
            throw RPCStatus(code: .failedPrecondition,
                            message: "this worker serves fixed experts (--experts); only a worker started with --join takes assignments")
        }
        do {
            try validate(request.hello, expecting: HandshakeExpectation(fingerprint: configFingerprint, shape: shape))
        } catch {
            logger.warning("refused an assignment", metadata: ["reason": "\(error)"])
            throw RPCStatus(code: .failedPrecondition, message: error.description)
        }
        let pairs: [ExpertKey], leaving: [ExpertKey]
        do {
            pairs = try validatePairs(layers: request.layers, experts: request.experts, shape: shape)
                .map { ExpertKey(layer: $0.layer, expert: $0.expert) }
            leaving = try validatePairs(layers: request.leavingLayers, experts: request.leavingExperts, shape: shape)
                .map { ExpertKey(layer: $0.layer, expert: $0.expert) }
        } catch {
            throw RPCStatus(code: .invalidArgument, message: "AssignRequest.\(error)")
        }
        let bytes = try pairs.reduce(0) { $0 + (try checkpoint.expertBytes(layer: $1.layer, expert: $1.expert)) }
        guard bytes <= assignableBytes else {
            throw RPCStatus(code: .resourceExhausted,
                            message: "\(pairs.count) pairs take \(bytes) bytes; this worker offered \(assignableBytes)")
        }
        do {
            try hold(Array(Set(pairs).union(leaving)).sorted())
        } catch {
            logger.error("could not load an assignment", metadata: ["reason": "\(error)"])
            throw RPCStatus(code: .internal, message: "loading the assigned experts: \(error)")
        }
        return try helloResponse()
    }

    /// The Compute (and ComputeStream message) handler `startServer` registers.
    public func compute(_ payload: RPCPayload) throws -> RPCPayload {
        let request = try decode(Shoal_V1_ComputeRequest.self, payload)
        let start = ContinuousClock.now
        let (output, call): (Data, ValidatedCompute) = try engine.withLock { state in
            // Checked against what is held under the same lock as the work: an Assign cannot
            // slip in between.
            let call: ValidatedCompute
            do {
                call = try validate(request, limits: state.limits)
            } catch {
                logger.warning("refused a compute request", metadata: ["reason": "\(error)"])
                throw RPCStatus(code: .invalidArgument, message: "\(error)")
            }
            let n = call.tokenCount, dim = call.dim
            let x = UnsafeMutableBufferPointer(start: state.x.reserve(n * dim), count: n * dim)
            call.decodeHidden(into: x)
            let out = UnsafeMutableBufferPointer(start: state.out.reserve(n * dim), count: n * dim)
            try state.experts.moe(layer: call.layer, x: UnsafePointer(x.baseAddress!), routes: call.routes,
                                  out: out.baseAddress!)
            // The next call is a network round trip away: do not spin until then.
            state.pool.idle()
            return (ActivationCodec.encode(UnsafeBufferPointer(out), as: call.dtype), call)
        }
        let n = call.tokenCount
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
        response.pairsHeld = UInt32(holding.pairs.count)
        return try RPCPayload(message: response)
    }
}

/// A request from a payload; a payload that is not one is the caller's error.
func decode<M: SwiftProtobuf.Message>(_ type: M.Type, _ payload: RPCPayload) throws -> M {
    do {
        return try payload.message(M.self)
    } catch {
        throw RPCStatus(code: .invalidArgument, message: "the request is not a valid \(M.protoMessageName): \(error)")
    }
}
