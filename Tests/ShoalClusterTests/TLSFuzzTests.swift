import Foundation
import ShoalCertificates
import ShoalCluster
import ShoalProtocol
import ShoalRPC
import ShoalTensor
import ShoalTestSupport
import Testing

/// The worker's decoders as a cluster node meets them: over mutual TLS, 400 randomly mutated
/// Compute requests (bytes changed, cut, inserted) each get an answer or INVALID_ARGUMENT,
/// never another status or a crash, and the worker then serves a valid request as before.
@Suite(.timeLimit(.minutes(2))) struct TLSFuzzTests {
    @Test func mutatedComputeRequestsOverMutualTLS() async throws {
        let authority = try CertificateAuthority(name: "fuzz cluster")
        let worker = try authority.issue(name: "worker", hosts: ["localhost"])
        let coordinator = try authority.issue(name: "coordinator", hosts: [])
        let cluster = try LocalCluster(folder: try Fixtures.path("models/tiny-f32/hf"), specs: ["0-3"],
                                       security: worker.security)
        let channel = RPCChannel(target: "localhost:\(cluster.servers[0].port)", security: coordinator.security)
        defer { channel.close() }

        var request = Shoal_V1_ComputeRequest()
        request.layer = 1
        request.tokenCount = 2
        request.dim = 64
        request.dtype = .bf16
        request.hidden = ActivationCodec.encode((0..<128).map { Float($0) / 64 }, as: .bf16)
        request.routeToken = [0, 0, 1]
        request.routeExpert = [1, 3, 2]
        request.routeWeight = [0.25, 0.75, 1]
        let valid: [UInt8] = try request.serializedBytes()
        let answer = try await channel.unary(ExpertServiceMethod.compute, request: RPCPayload(valid), timeout: .seconds(10))

        var rng = SplitMix64(seed: 15)
        var codes: [String: Int] = [:]
        for _ in 0..<400 {
            let bytes = mutated(valid, &rng)
            do {
                _ = try await channel.unary(ExpertServiceMethod.compute, request: RPCPayload(bytes), timeout: .seconds(10))
                codes["ok", default: 0] += 1
            } catch let status as RPCStatus {
                codes["\(status.code)", default: 0] += 1
            }
        }
        #expect(Set(codes.keys).isSubset(of: ["ok", "\(RPCStatusCode.invalidArgument)"]), "\(codes)")
        #expect((codes["\(RPCStatusCode.invalidArgument)"] ?? 0) > 100, "\(codes)")
        let again = try await channel.unary(ExpertServiceMethod.compute, request: RPCPayload(valid), timeout: .seconds(10))
        #expect(try again.message(Shoal_V1_ComputeResponse.self).output == answer.message(Shoal_V1_ComputeResponse.self).output)
        await cluster.stop()
    }
}
