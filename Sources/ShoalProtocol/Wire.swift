// The constants both ends of the wire agree on, beside the generated messages
// (Generated/shoal/v1/expert.pb.swift, from Protos/shoal/v1/expert.proto).

/// The version of the Shoal wire protocol this build speaks.
///
/// Hello carries it both ways and the two ends must be equal: there is no negotiation,
/// because a coordinator and its workers are deployed from the same build.
public enum ProtocolVersion {
    /// The version this build sends and accepts. 2: coordinators send Compute on one
    /// ComputeStream per worker.
    public static let current: UInt32 = 2
}

/// The gRPC method paths of `shoal.v1.ExpertService`, as the transport addresses them.
public enum ExpertServiceMethod {
    /// The fully qualified service name.
    public static let service = "shoal.v1.ExpertService"
    /// `Hello(HelloRequest) returns (HelloResponse)`: the handshake.
    public static let hello = "/shoal.v1.ExpertService/Hello"
    /// `Compute(ComputeRequest) returns (ComputeResponse)`: one layer's expert work.
    public static let compute = "/shoal.v1.ExpertService/Compute"
    /// `ComputeStream(stream ComputeRequest) returns (stream ComputeResponse)`: the same
    /// exchange, one response per request, on one long-lived stream (what coordinators use).
    public static let computeStream = "/shoal.v1.ExpertService/ComputeStream"
    /// `Health(HealthRequest) returns (HealthResponse)`: liveness and counters.
    public static let health = "/shoal.v1.ExpertService/Health"
    /// `Assign(AssignRequest) returns (HelloResponse)`: the pairs a joined worker holds.
    public static let assign = "/shoal.v1.ExpertService/Assign"
    /// Every method path, for a server that registers them all.
    public static let all = [hello, compute, computeStream, health, assign]
}

/// The gRPC method paths of `shoal.v1.ClusterService` (Protos/shoal/v1/cluster.proto): how
/// workers join a coordinator and leave it, and how an operator sees the cluster.
public enum ClusterServiceMethod {
    public static let join = "/shoal.v1.ClusterService/Join"
    public static let heartbeat = "/shoal.v1.ClusterService/Heartbeat"
    public static let drain = "/shoal.v1.ClusterService/Drain"
    public static let status = "/shoal.v1.ClusterService/Status"
}

/// An activation dtype that may cross the wire: the valid subset of `Shoal_V1_DType`.
///
/// Validation turns the message's open enum (which can also be `.unspecified` or an unknown
/// raw value) into this closed one, so code past validation never meets an invalid dtype.
public enum WireDType: Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// IEEE binary32, carried bit-exactly.
    case f32
    /// bfloat16: binary32 rounded to nearest even, keeping the top 16 bits.
    case bf16

    /// The valid dtype a message field names, or nil for unspecified and unknown values.
    public init?(_ proto: Shoal_V1_DType) {
        switch proto {
        case .f32: self = .f32
        case .bf16: self = .bf16
        default: return nil
        }
    }

    /// The message enum value for this dtype.
    public var proto: Shoal_V1_DType {
        switch self {
        case .f32: return .f32
        case .bf16: return .bf16
        }
    }

    /// Bytes per activation on the wire.
    public var byteWidth: Int {
        switch self {
        case .f32: return 4
        case .bf16: return 2
        }
    }

    /// Bytes for `tokens × dim` activations, or nil when the product overflows `Int`.
    public func byteCount(tokens: Int, dim: Int) -> Int? {
        let (elements, o1) = tokens.multipliedReportingOverflow(by: dim)
        let (bytes, o2) = elements.multipliedReportingOverflow(by: byteWidth)
        return o1 || o2 ? nil : bytes
    }

    public var description: String {
        switch self {
        case .f32: return "f32"
        case .bf16: return "bf16"
        }
    }
}

/// A readable name for any value of the message enum, known or not, for error messages.
func describe(_ dtype: Shoal_V1_DType) -> String {
    switch dtype {
    case .unspecified: return "DTYPE_UNSPECIFIED"
    case .f32: return "DTYPE_F32"
    case .bf16: return "DTYPE_BF16"
    case .UNRECOGNIZED(let raw): return "unknown dtype \(raw)"
    }
}

/// The gRPC method paths of `shoal.v1.Coordinator` (Protos/shoal/v1/coordinator.proto).
public enum CoordinatorMethod {
    /// `Generate(GenerateRequest) returns (stream GenerateResponse)`: one streamed completion.
    public static let generate = "/shoal.v1.Coordinator/Generate"
    /// `Tokenize(TokenizeRequest) returns (TokenizeResponse)`: the ids of a text or conversation.
    public static let tokenize = "/shoal.v1.Coordinator/Tokenize"
    /// `Health(CoordinatorHealthRequest) returns (CoordinatorHealthResponse)`: readiness and load.
    public static let health = "/shoal.v1.Coordinator/Health"
}
