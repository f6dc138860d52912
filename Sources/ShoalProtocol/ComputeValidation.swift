import Foundation
import ShoalTensor

/// What a worker accepts in a Compute request: its model's shape, its per-call token
/// limit, and which (layer, expert) pairs it holds.
public struct ComputeLimits: Sendable {
    /// The model's hidden size; `dim` must equal it.
    public var dim: Int
    /// The model's layer count; `layer` must be below it.
    public var layers: Int
    /// The model's experts per layer; every route's expert must be below it.
    public var experts: Int
    /// The most tokens one call may carry (bounds the worker's scratch buffers).
    public var maxTokens: Int
    /// Whether this worker holds expert `expert` of layer `layer` (both already in range).
    public var held: @Sendable (_ layer: Int, _ expert: Int) -> Bool

    /// Limits for a worker serving `layers × experts` experts of width `dim`.
    public init(dim: Int, layers: Int, experts: Int, maxTokens: Int,
                held: @escaping @Sendable (_ layer: Int, _ expert: Int) -> Bool) {
        self.dim = dim
        self.layers = layers
        self.experts = experts
        self.maxTokens = maxTokens
        self.held = held
    }
}

/// A Compute request that passed `validate(_:limits:)`: every size agrees, every index is
/// in range and every expert is held, so a worker can index with these values unchecked.
public struct ValidatedCompute: Sendable {
    /// The layer, in `0..<layers`.
    public let layer: Int
    /// Tokens in the call, in `1...maxTokens`.
    public let tokenCount: Int
    /// The hidden size, equal to the limits' `dim`.
    public let dim: Int
    /// The activation dtype of `hidden`, which the response must use too.
    public let dtype: WireDType
    /// Exactly `tokenCount × dim × dtype.byteWidth` bytes; decode with `decodeHidden(into:)`.
    public let hidden: Data
    /// Every expert in range and held, every weight finite; `routes.tokenCount` equals
    /// `tokenCount`, so `tokenCount ≤ routes.count ≤ tokenCount × experts`.
    public let routes: Routes

    /// Decodes `hidden` into `out`, which must hold `tokenCount × dim` floats.
    public func decodeHidden(into out: UnsafeMutableBufferPointer<Float>) {
        precondition(out.count == tokenCount * dim, "decodeHidden: buffer of \(out.count), need \(tokenCount * dim)")
        // Sizes were checked by validation, so this cannot throw.
        try! ActivationCodec.decode(hidden, as: dtype, into: out)
    }

    /// Bytes the response's `output` must have: the same as `hidden`.
    public var outputByteCount: Int { hidden.count }
}

/// Checks every field of a Compute request against a worker's limits (DESIGN invariant 4).
///
/// Cheap checks come first and the route walk is one linear pass, so a hostile request
/// costs no more than reading it.
///
/// - Throws: the first `ProtocolError` found; its description names the field.
public func validate(_ request: Shoal_V1_ComputeRequest, limits: ComputeLimits) throws(ProtocolError) -> ValidatedCompute {
    let layer = Int(request.layer), tokenCount = Int(request.tokenCount), dim = Int(request.dim)
    guard layer < limits.layers else { throw .layerOutOfRange(layer: layer, layers: limits.layers) }
    guard tokenCount >= 1, tokenCount <= limits.maxTokens else {
        throw .tokenCountOutOfRange(tokenCount: tokenCount, maxTokens: limits.maxTokens)
    }
    guard dim == limits.dim else { throw .dimMismatch(expected: limits.dim, actual: dim) }
    guard let dtype = WireDType(request.dtype) else { throw .unsupportedDType(raw: request.dtype.rawValue) }
    guard let hiddenBytes = dtype.byteCount(tokens: tokenCount, dim: dim) else {
        throw .hiddenSizeOverflow(tokenCount: tokenCount, dim: dim)
    }
    guard request.hidden.count == hiddenBytes else {
        throw .hiddenSize(expected: hiddenBytes, actual: request.hidden.count)
    }
    let routes = try validateRoutes(request, layer: layer, tokenCount: tokenCount, limits: limits)
    return ValidatedCompute(layer: layer, tokenCount: tokenCount, dim: dim, dtype: dtype,
                            hidden: request.hidden, routes: routes)
}

/// The route arrays, checked in one pass: lengths, ranges, order, coverage, holding, weights.
private func validateRoutes(
    _ request: Shoal_V1_ComputeRequest, layer: Int, tokenCount: Int, limits: ComputeLimits
) throws(ProtocolError) -> Routes {
    let tokens = request.routeToken, experts = request.routeExpert, weights = request.routeWeight
    guard tokens.count == experts.count, tokens.count == weights.count else {
        throw .routeArrayLengths(tokens: tokens.count, experts: experts.count, weights: weights.count)
    }
    guard tokens.count >= tokenCount else { throw .tooFewRoutes(routes: tokens.count, tokenCount: tokenCount) }

    // Holding is asked once per expert, not once per route: `held` may be a dictionary lookup.
    var heldCache = [Bool?](repeating: nil, count: max(limits.experts, 0))
    // Tokens are sorted, so "every token has a route" means each new token is the next one.
    var previousToken = -1, previousExpert = -1
    for i in tokens.indices {
        let token = Int(tokens[i]), expert = Int(experts[i]), weight = weights[i]
        guard token < tokenCount else {
            throw .routeTokenOutOfRange(index: i, token: token, tokenCount: tokenCount)
        }
        guard token > previousToken || (token == previousToken && expert > previousExpert) else {
            throw .routesUnsorted(index: i, token: token, expert: expert)
        }
        if token > previousToken + 1 { throw .tokenWithoutRoute(token: previousToken + 1) }
        guard expert < limits.experts else {
            throw .expertOutOfRange(index: i, expert: expert, experts: limits.experts)
        }
        let isHeld = heldCache[expert] ?? limits.held(layer, expert)
        heldCache[expert] = isHeld
        guard isHeld else { throw .expertNotHeld(layer: layer, expert: expert) }
        guard weight.isFinite else { throw .nonFiniteWeight(index: i) }
        previousToken = token
        previousExpert = expert
    }
    // The last tokens may have had no route at all.
    if previousToken != tokenCount - 1 { throw .tokenWithoutRoute(token: previousToken + 1) }
    return Routes(token: tokens, expert: experts, weight: weights)
}

/// Checks a Compute response against the request it answers, on the coordinator.
///
/// - Throws: `.responseDType` or `.outputSize`.
public func validate(
    _ response: Shoal_V1_ComputeResponse, tokenCount: Int, dim: Int, dtype: WireDType
) throws(ProtocolError) {
    guard WireDType(response.dtype) == dtype else {
        throw .responseDType(expected: dtype, actual: response.dtype.rawValue)
    }
    // The coordinator made the request, so its own sizes cannot overflow.
    let expected = tokenCount * dim * dtype.byteWidth
    guard response.output.count == expected else { throw .outputSize(expected: expected, actual: response.output.count) }
}
