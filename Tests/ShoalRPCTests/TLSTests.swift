// A self-signed test certificate (CN=localhost, SAN DNS:localhost + IP:127.0.0.1, P-256, valid
// 100 years), made with `openssl req -x509 -newkey ec ... -addext subjectAltName=...`. Test use only.
import ShoalRPC
import Testing

let testCertificatePEM = """
-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUH8DW9ButH1qJHzsWr4qZjWEnxmwwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNjE4MDIwMloYDzIxMjYxMTAy
MTgwMjAyWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARKit8V2azdwltABF+ZiBXRqgOxI8tldzHle4F+/bkTV9OcH4pKcDgM
4qlxztRzbZXDx49Is6bTneaUq87vdFSmo28wbTAdBgNVHQ4EFgQUV0v3Ed6+lsfx
NtOlHwfchCJDVm8wHwYDVR0jBBgwFoAUV0v3Ed6+lsfxNtOlHwfchCJDVm8wGgYD
VR0RBBMwEYIJbG9jYWxob3N0hwR/AAABMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDSAAwRQIhAKF8Tgj+j2na/iX5OKV2VDR1s6XhctqAA7vV8sRMjebwAiBe
4QffMxzH2/DBJkvcNvKIGcYxexL5u1rafl/lWnXVaQ==
-----END CERTIFICATE-----
"""

let testPrivateKeyPEM = """
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5NjGlgqlvxFLZIH3
MWZgo++7qvVUNZw6zn57gCABbNyhRANCAARKit8V2azdwltABF+ZiBXRqgOxI8tl
dzHle4F+/bkTV9OcH4pKcDgM4qlxztRzbZXDx49Is6bTneaUq87vdFSm
-----END PRIVATE KEY-----
"""

@Suite(.timeLimit(.minutes(1)))
struct TLSTests {
    let serverSecurity = RPCSecurity.tls(
        rootCertificatesPEM: nil, privateKeyPEM: testPrivateKeyPEM, certificateChainPEM: testCertificatePEM)
    let clientSecurity = RPCSecurity.tls(
        rootCertificatesPEM: testCertificatePEM, privateKeyPEM: nil, certificateChainPEM: nil)

    @Test func echoOverTLS() async throws {
        try await RPCServer.withServer(security: serverSecurity, unary: [Method.echo: echo]) { server in
            let channel = RPCChannel(target: "localhost:\(server.port)", security: clientSecurity)
            defer { channel.close() }
            let request = patterned(100_000)
            let response = try await channel.unary(Method.echo, request: request, timeout: .seconds(10))
            #expect(sameBytes(request, response))
        }
    }

    @Test func plaintextClientCannotTalkToTLSServer() async throws {
        try await RPCServer.withServer(security: serverSecurity, unary: [Method.echo: echo]) { server in
            let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
            defer { channel.close() }
            let result = await status { try await channel.unary(Method.echo, request: payload(1), timeout: .seconds(5)) }
            #expect(result?.code == .unavailable)
        }
    }

    @Test func mutualTLSRequiresAClientCertificate() async throws {
        let requiring = RPCSecurity.tls(
            rootCertificatesPEM: testCertificatePEM, privateKeyPEM: testPrivateKeyPEM,
            certificateChainPEM: testCertificatePEM)
        try await RPCServer.withServer(security: requiring, unary: [Method.echo: echo]) { server in
            let withCertificate = RPCChannel(target: "localhost:\(server.port)", security: requiring)
            defer { withCertificate.close() }
            let response = try await withCertificate.unary(Method.echo, request: payload(5), timeout: .seconds(10))
            #expect(uint32(response) == 5)
            let anonymous = RPCChannel(target: "localhost:\(server.port)", security: clientSecurity)
            defer { anonymous.close() }
            let result = await status { try await anonymous.unary(Method.echo, request: payload(1), timeout: .seconds(5)) }
            #expect(result?.code == .unavailable)
        }
    }

    @Test func serverTLSNeedsKeyAndChain() {
        #expect(throws: RPCError.serverTLSNeedsKeyAndCertificate) {
            _ = try RPCServer.start(
                listen: "127.0.0.1:0",
                security: .tls(rootCertificatesPEM: nil, privateKeyPEM: nil, certificateChainPEM: testCertificatePEM))
        }
    }
}
