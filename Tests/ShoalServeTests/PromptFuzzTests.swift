import Foundation
import ShoalCertificates
import ShoalProtocol
import ShoalRPC
@testable import ShoalServe
import ShoalTensor
import ShoalTestSupport
import Testing

/// The gRPC prompt API's decoders as a client meets them: over TLS (--tls-cert) with an API
/// key, 300 randomly mutated Generate requests each end OK or INVALID_ARGUMENT, and the server
/// then answers a valid request as before.
@Suite(.timeLimit(.minutes(2))) struct PromptFuzzTests {
    @Test func mutatedGenerateRequestsOverTLS() async throws {
        let authority = try CertificateAuthority(name: "prompt fuzz")
        let server = try authority.issue(name: "coordinator", hosts: ["localhost"])
        let service = try FakeGenerationService(.events([.delta(ids: [5], text: "x"), .finished(scriptedSummary("x", .length))]))
        let keys = try #require(try APIKeys.load(file: nil, list: "sk-fuzz"))
        let api = CoordinatorService(service: service, modelName: "tiny", keys: keys) { (0, 0) }
        let security = RPCSecurity.tls(rootCertificatesPEM: nil, privateKeyPEM: server.keyPEM, certificateChainPEM: server.certificatePEM)
        try await RPCServer.withServer(security: security, unary: api.unaryHandlers, serverStreaming: api.streamingHandlers) { running in
            let channel = RPCChannel(
                target: "localhost:\(running.port)",
                security: .tls(rootCertificatesPEM: server.authorityPEM, privateKeyPEM: nil, certificateChainPEM: nil),
                metadata: [("authorization", "Bearer sk-fuzz")])
            defer { channel.close() }
            var request = Shoal_V1_GenerateRequest()
            request.text = "The sea at night"
            request.maxTokens = 4
            request.temperature = 0.5
            request.topP = 0.9
            request.stop = ["\n\n", "END"]
            request.seed = 3
            let valid: [UInt8] = try request.serializedBytes()

            /// The status one Generate call ends with ("ok" when its stream ended normally).
            func outcome(_ bytes: [UInt8]) async -> String {
                do {
                    for try await _ in channel.serverStreaming(CoordinatorMethod.generate, request: RPCPayload(bytes), timeout: .seconds(10)) {}
                    return "ok"
                } catch let status as RPCStatus {
                    return "\(status.code)"
                } catch {
                    return "\(error)"
                }
            }
            #expect(await outcome(valid) == "ok")
            var rng = SplitMix64(seed: 21)
            var codes: [String: Int] = [:]
            for _ in 0..<300 {
                let bytes = mutated(valid, &rng)
                codes[await outcome(bytes), default: 0] += 1
            }
            #expect(Set(codes.keys).isSubset(of: ["ok", "\(RPCStatusCode.invalidArgument)"]), "\(codes)")
            #expect((codes["\(RPCStatusCode.invalidArgument)"] ?? 0) > 50, "\(codes)")
            #expect(await outcome(valid) == "ok")
        }
    }
}
