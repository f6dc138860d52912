import Foundation
import ShoalTensor
import ShoalProtocol

/// A small model and valid messages for it, shared by the tests.
enum Fixture {
    static let dim = 8
    static let layers = 4
    static let experts = 8
    static let maxTokens = 16
    static let shape = ModelShape(dim: dim, hiddenDim: 16, layers: layers, experts: experts)
    static let fingerprint = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

    /// A worker holding experts 0-3 of every layer.
    static let limits = ComputeLimits(dim: dim, layers: layers, experts: experts, maxTokens: maxTokens) { _, expert in
        expert < 4
    }

    static let expectation = HandshakeExpectation(fingerprint: fingerprint, shape: shape)

    /// Three tokens at layer 2: token 0 → experts 0 and 2, token 1 → expert 1, token 2 → experts 0 and 3.
    static func computeRequest(dtype: WireDType = .f32) -> Shoal_V1_ComputeRequest {
        var request = Shoal_V1_ComputeRequest()
        request.layer = 2
        request.tokenCount = 3
        request.dim = UInt32(dim)
        request.dtype = dtype.proto
        request.hidden = ActivationCodec.encode((0..<3 * dim).map { Float($0) * 0.25 - 2 }, as: dtype)
        request.routeToken = [0, 0, 1, 2, 2]
        request.routeExpert = [0, 2, 1, 0, 3]
        request.routeWeight = [0.75, 0.25, 1, 0.5, 0.5]
        return request
    }

    /// A worker's answer holding experts 0-3 of every layer.
    static func helloResponse() -> Shoal_V1_HelloResponse {
        var response = Shoal_V1_HelloResponse()
        response.protocolVersion = ProtocolVersion.current
        response.modelFingerprint = fingerprint
        for layer in 0..<layers {
            for expert in 0..<4 {
                response.layers.append(UInt32(layer))
                response.experts.append(UInt32(expert))
            }
        }
        response.shape = shape.proto
        response.weightDtype = .bf16
        response.weightBytes = 123_456_789
        response.memoryBytes = 64 << 30
        response.workerName = "shoal-worker 0.1.0 on test"
        return response
    }
}

/// Seeded, so fuzz runs are reproducible.
typealias SeededRNG = SplitMix64
