/// The model shape the two ends of a handshake compare, in plain `Int`s.
public struct ModelShape: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// Hidden size.
    public var dim: Int
    /// FFN hidden size of one expert.
    public var hiddenDim: Int
    /// Transformer layers.
    public var layers: Int
    /// Experts per layer.
    public var experts: Int

    /// A shape from its four sizes.
    public init(dim: Int, hiddenDim: Int, layers: Int, experts: Int) {
        self.dim = dim
        self.hiddenDim = hiddenDim
        self.layers = layers
        self.experts = experts
    }

    /// The shape a message carries.
    public init(_ proto: Shoal_V1_ModelShape) {
        self.init(dim: Int(proto.dim), hiddenDim: Int(proto.hiddenDim), layers: Int(proto.layers),
                  experts: Int(proto.experts))
    }

    /// This shape as a message (sizes are a model's, so they fit in 32 bits).
    public var proto: Shoal_V1_ModelShape {
        var shape = Shoal_V1_ModelShape()
        shape.dim = UInt32(dim)
        shape.hiddenDim = UInt32(hiddenDim)
        shape.layers = UInt32(layers)
        shape.experts = UInt32(experts)
        return shape
    }

    public var description: String {
        "dim \(dim), hidden_dim \(hiddenDim), \(layers) layers, \(experts) experts"
    }
}

/// What one end of a handshake runs, and so requires of the other.
public struct HandshakeExpectation: Equatable, Sendable {
    /// The protocol version required; this build's by default.
    public var protocolVersion: UInt32
    /// The model fingerprint required, lower-case hex.
    public var fingerprint: String
    /// The model shape required (checked on HelloResponse only; HelloRequest has none).
    public var shape: ModelShape

    /// An expectation for a model of `shape` with `fingerprint`.
    public init(fingerprint: String, shape: ModelShape, protocolVersion: UInt32 = ProtocolVersion.current) {
        self.protocolVersion = protocolVersion
        self.fingerprint = fingerprint
        self.shape = shape
    }
}

/// A worker's HelloResponse that passed `validate(_:expecting:)`.
public struct ValidatedHello: Equatable, Sendable {
    /// The (layer, expert) pairs the worker holds, each in range, without repeats, in the
    /// worker's order.
    public let pairs: [HeldPair]
    /// The dtype the worker stores weights in; informational, may be unspecified.
    public let weightDType: Shoal_V1_DType
    /// Bytes of expert weights the worker holds.
    public let weightBytes: UInt64
    /// The worker machine's memory.
    public let memoryBytes: UInt64
    /// The worker's self-description, made printable and short for logs.
    public let workerName: String
}

/// One (layer, expert) pair a worker holds.
public struct HeldPair: Equatable, Hashable, Sendable {
    /// The layer, in `0..<layers`.
    public var layer: Int
    /// The expert, in `0..<experts`.
    public var expert: Int

    /// A pair from its two indices.
    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }
}

/// Checks a worker's HelloResponse on the coordinator (DESIGN invariant 5): same protocol
/// version, same model fingerprint, same shape, and held pairs that make sense.
///
/// - Throws: `ProtocolError.incompatibleWorker` naming the first disagreement.
public func validate(
    _ response: Shoal_V1_HelloResponse, expecting expected: HandshakeExpectation
) throws(ProtocolError) -> ValidatedHello {
    try validate(response, expecting: expected, fingerprintOf: { _ in expected.fingerprint })
}

/// Checks a worker's HelloResponse when its fingerprint covers the experts it serves: the
/// version, the shape and the pairs first, then the fingerprint against `fingerprintOf(pairs)`,
/// what the coordinator's own checkpoint gives for those pairs.
///
/// - Throws: `ProtocolError.incompatibleWorker` naming the first disagreement.
public func validate(
    _ response: Shoal_V1_HelloResponse, expecting expected: HandshakeExpectation,
    fingerprintOf: ([HeldPair]) -> String
) throws(ProtocolError) -> ValidatedHello {
    guard response.protocolVersion == expected.protocolVersion else {
        throw .incompatibleWorker(.protocolVersion(expected: expected.protocolVersion, actual: response.protocolVersion))
    }
    guard response.hasShape else { throw .incompatibleWorker(.missingShape) }
    let shape = ModelShape(response.shape)
    guard shape == expected.shape else { throw .incompatibleWorker(.shape(expected: expected.shape, actual: shape)) }
    let pairs: [HeldPair]
    do {
        pairs = try validatePairs(layers: response.layers, experts: response.experts, shape: shape)
    } catch {
        throw .incompatibleWorker(error)
    }
    let fingerprint = fingerprintOf(pairs)
    guard response.modelFingerprint == fingerprint else {
        throw .incompatibleWorker(.fingerprint(
            expected: fingerprint, actual: Incompatibility.printable(response.modelFingerprint)))
    }
    return ValidatedHello(pairs: pairs, weightDType: response.weightDtype, weightBytes: response.weightBytes,
                          memoryBytes: response.memoryBytes,
                          workerName: Incompatibility.printable(response.workerName))
}

/// Checks a coordinator's HelloRequest on the worker (DESIGN invariant 5): a worker refuses
/// a coordinator that speaks another protocol version or runs another model.
///
/// - Throws: `ProtocolError.incompatibleCoordinator` naming the disagreement.
public func validate(_ request: Shoal_V1_HelloRequest, expecting expected: HandshakeExpectation) throws(ProtocolError) {
    guard request.protocolVersion == expected.protocolVersion else {
        throw .incompatibleCoordinator(.protocolVersion(expected: expected.protocolVersion, actual: request.protocolVersion))
    }
    guard request.modelFingerprint == expected.fingerprint else {
        throw .incompatibleCoordinator(.fingerprint(
            expected: expected.fingerprint, actual: Incompatibility.printable(request.modelFingerprint)))
    }
}

/// Checks a list of (layer, expert) pairs sent as parallel arrays (HelloResponse, AssignRequest,
/// JoinRequest): equal lengths, every pair in range of `shape`, none twice.
///
/// - Returns: the pairs in the order sent.
/// - Throws: the `Incompatibility` naming the first bad entry.
public func validatePairs(layers: [UInt32], experts: [UInt32], shape: ModelShape) throws(Incompatibility) -> [HeldPair] {
    guard layers.count == experts.count else {
        throw .pairArrayLengths(layers: layers.count, experts: experts.count)
    }
    var pairs: [HeldPair] = []
    var seen = Set<HeldPair>()
    pairs.reserveCapacity(min(layers.count, shape.layers * shape.experts))
    for i in layers.indices {
        let pair = HeldPair(layer: Int(layers[i]), expert: Int(experts[i]))
        guard pair.layer < shape.layers, pair.expert < shape.experts else {
            throw .pairOutOfRange(index: i, layer: pair.layer, expert: pair.expert)
        }
        guard seen.insert(pair).inserted else {
            throw .duplicatePair(index: i, layer: pair.layer, expert: pair.expert)
        }
        pairs.append(pair)
    }
    return pairs
}
