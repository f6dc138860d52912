/// Why a message from the network was refused.
///
/// Each case names the offending field, and `description` is written to be sent back
/// verbatim as the message of a gRPC `INVALID_ARGUMENT` status (DESIGN invariant 4), or
/// logged by a coordinator that refuses a worker (invariant 5).
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    // MARK: Compute requests

    /// `layer` is not below the model's layer count.
    case layerOutOfRange(layer: Int, layers: Int)
    /// `token_count` is zero or above the worker's per-call limit.
    case tokenCountOutOfRange(tokenCount: Int, maxTokens: Int)
    /// `dim` differs from the model's hidden size.
    case dimMismatch(expected: Int, actual: Int)
    /// `dtype` is unspecified or not a dtype this build knows (raw enum value).
    case unsupportedDType(raw: Int)
    /// `token_count × dim × dtype size` does not fit in an `Int`.
    case hiddenSizeOverflow(tokenCount: Int, dim: Int)
    /// `hidden` is not `token_count × dim × dtype size` bytes long.
    case hiddenSize(expected: Int, actual: Int)
    /// `route_token`, `route_expert` and `route_weight` differ in length.
    case routeArrayLengths(tokens: Int, experts: Int, weights: Int)
    /// Fewer routes than tokens, so some token cannot have a route.
    case tooFewRoutes(routes: Int, tokenCount: Int)
    /// `route_token[index]` is not below `token_count`.
    case routeTokenOutOfRange(index: Int, token: Int, tokenCount: Int)
    /// Route `index` breaks the (token, expert) strictly ascending order (or repeats a pair).
    case routesUnsorted(index: Int, token: Int, expert: Int)
    /// Token `token` has no route, so the worker would return zeros the coordinator never asked for.
    case tokenWithoutRoute(token: Int)
    /// `route_expert[index]` is not below the model's expert count.
    case expertOutOfRange(index: Int, expert: Int, experts: Int)
    /// A route names an expert this worker does not hold.
    case expertNotHeld(layer: Int, expert: Int)
    /// `route_weight[index]` is NaN or infinite.
    case nonFiniteWeight(index: Int)

    // MARK: Activations and Compute responses

    /// Activation bytes are not the length the tokens and dtype call for.
    case activationSize(expected: Int, actual: Int)
    /// A Compute response's `dtype` is not the one its request asked for.
    case responseDType(expected: WireDType, actual: Int)
    /// A Compute response's `output` is not `token_count × dim × dtype size` bytes long.
    case outputSize(expected: Int, actual: Int)

    // MARK: Handshake

    /// The worker's HelloResponse does not match what the coordinator runs.
    case incompatibleWorker(Incompatibility)
    /// The coordinator's HelloRequest does not match what the worker serves.
    case incompatibleCoordinator(Incompatibility)

    public var description: String {
        switch self {
        case let .layerOutOfRange(layer, layers):
            return "layer: \(layer) is out of range; the model has \(layers) layers (0..<\(layers))"
        case let .tokenCountOutOfRange(tokenCount, maxTokens):
            return "token_count: \(tokenCount) is out of range 1...\(maxTokens)"
        case let .dimMismatch(expected, actual):
            return "dim: expected \(expected), got \(actual)"
        case let .unsupportedDType(raw):
            return "dtype: \(describe(Shoal_V1_DType(rawValue: raw) ?? .UNRECOGNIZED(raw))) is not supported; use DTYPE_F32 or DTYPE_BF16"
        case let .hiddenSizeOverflow(tokenCount, dim):
            return "hidden: token_count \(tokenCount) × dim \(dim) overflows"
        case let .hiddenSize(expected, actual):
            return "hidden: expected \(expected) bytes (token_count × dim × dtype size), got \(actual)"
        case let .routeArrayLengths(tokens, experts, weights):
            return "route_token, route_expert, route_weight: lengths \(tokens), \(experts), \(weights) differ"
        case let .tooFewRoutes(routes, tokenCount):
            return "route_token: \(routes) routes cannot cover \(tokenCount) tokens (each token needs at least one)"
        case let .routeTokenOutOfRange(index, token, tokenCount):
            return "route_token[\(index)]: token \(token) is not below token_count \(tokenCount)"
        case let .routesUnsorted(index, token, expert):
            return "route_token[\(index)], route_expert[\(index)]: (token \(token), expert \(expert)) is not strictly after the previous route; routes must be sorted by (token, expert) without repeats"
        case let .tokenWithoutRoute(token):
            return "route_token: token \(token) has no route"
        case let .expertOutOfRange(index, expert, experts):
            return "route_expert[\(index)]: expert \(expert) is out of range; the model has \(experts) experts"
        case let .expertNotHeld(layer, expert):
            return "route_expert: layer \(layer) expert \(expert) is not held by this worker"
        case let .nonFiniteWeight(index):
            return "route_weight[\(index)]: weight is not finite"
        case let .activationSize(expected, actual):
            return "activations: expected \(expected) bytes, got \(actual)"
        case let .responseDType(expected, actual):
            return "dtype: response is \(describe(Shoal_V1_DType(rawValue: actual) ?? .UNRECOGNIZED(actual))), request asked for \(describe(expected.proto))"
        case let .outputSize(expected, actual):
            return "output: expected \(expected) bytes (token_count × dim × dtype size), got \(actual)"
        case let .incompatibleWorker(why):
            return "incompatible worker: \(why)"
        case let .incompatibleCoordinator(why):
            return "incompatible coordinator: \(why)"
        }
    }
}

/// How the two ends of a handshake disagree.
public enum Incompatibility: Error, Equatable, Sendable, CustomStringConvertible {
    /// `protocol_version` differs.
    case protocolVersion(expected: UInt32, actual: UInt32)
    /// `model_fingerprint` differs: the two ends run different models or weights.
    /// `actual` came from the network and is kept short and printable (see `printable`).
    case fingerprint(expected: String, actual: String)
    /// `shape` is missing from the response.
    case missingShape
    /// `shape` differs from the coordinator's model.
    case shape(expected: ModelShape, actual: ModelShape)
    /// `layers` and `experts` (the held pairs) differ in length.
    case pairArrayLengths(layers: Int, experts: Int)
    /// Held pair `index` is outside the model's layers × experts.
    case pairOutOfRange(index: Int, layer: Int, expert: Int)
    /// Held pair `index` repeats an earlier pair.
    case duplicatePair(index: Int, layer: Int, expert: Int)

    public var description: String {
        switch self {
        case let .protocolVersion(expected, actual):
            return "protocol_version: expected \(expected), got \(actual)"
        case let .fingerprint(expected, actual):
            return "model_fingerprint: expected \(expected), got \(actual.isEmpty ? "(empty)" : actual); the two ends serve different models"
        case .missingShape:
            return "shape: missing"
        case let .shape(expected, actual):
            return "shape: expected \(expected), got \(actual)"
        case let .pairArrayLengths(layers, experts):
            return "layers, experts: lengths \(layers) and \(experts) differ"
        case let .pairOutOfRange(index, layer, expert):
            return "layers/experts[\(index)]: layer \(layer) expert \(expert) is outside the model"
        case let .duplicatePair(index, layer, expert):
            return "layers/experts[\(index)]: layer \(layer) expert \(expert) is listed twice"
        }
    }

    /// At most 80 characters of a network string, with anything outside printable ASCII
    /// replaced, so a hostile peer cannot flood or forge log lines through an error message.
    public static func printable(_ s: String) -> String {
        let kept = s.unicodeScalars.prefix(80).map { $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "?" }
        return String(kept) + (s.unicodeScalars.count > 80 ? "…" : "")
    }
}
