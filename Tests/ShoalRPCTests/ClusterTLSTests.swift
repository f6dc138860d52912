// Mutual TLS with certificates from `ShoalCertificates`, as `shoal certs` makes them: only nodes
// the same authority signed, dialled by a name their certificate carries, get through.
import Foundation
import ShoalCertificates
import ShoalRPC
import Testing

@Suite(.timeLimit(.minutes(1)))
struct ClusterTLSTests {
    let authority: CertificateAuthority
    let worker: NodeIdentity
    let coordinator: NodeIdentity

    init() throws {
        authority = try CertificateAuthority(name: "test cluster")
        worker = try authority.issue(name: "worker", hosts: ["localhost", "127.0.0.1"])
        coordinator = try authority.issue(name: "coordinator", hosts: [])
    }

    /// The status of one echo from `client` to a server with `server`'s identity, dialled at `host`.
    func echoStatus(server: RPCSecurity, client: RPCSecurity, host: String = "localhost") async throws -> RPCStatusCode? {
        try await RPCServer.withServer(security: server, unary: [Method.echo: echo]) { running in
            let channel = RPCChannel(target: "\(host):\(running.port)", security: client)
            defer { channel.close() }
            return await status { _ = try await channel.unary(Method.echo, request: payload(7), timeout: .seconds(10)) }?.code
        }
    }

    @Test func nodesOfOneAuthorityTalk() async throws {
        #expect(try await echoStatus(server: worker.security, client: coordinator.security) == nil)
        #expect(try await echoStatus(server: worker.security, client: coordinator.security, host: "127.0.0.1") == nil)
    }

    @Test func aStrangerIsRefused() async throws {
        let stranger = try CertificateAuthority(name: "another cluster").issue(name: "coordinator", hosts: [])
        #expect(try await echoStatus(server: worker.security, client: stranger.security) == .unavailable)
        // Even one that trusts this cluster's authority (its certificate is public): the worker
        // refuses a client certificate its authority did not sign.
        let trusting = RPCSecurity.tls(
            rootCertificatesPEM: worker.authorityPEM, privateKeyPEM: stranger.keyPEM, certificateChainPEM: stranger.certificatePEM)
        #expect(try await echoStatus(server: worker.security, client: trusting) == .unavailable)
    }

    @Test func aWorkerOfAnotherClusterIsRefused() async throws {
        let impostor = try CertificateAuthority(name: "another cluster").issue(name: "worker", hosts: ["localhost"])
        #expect(try await echoStatus(server: impostor.security, client: coordinator.security) == .unavailable)
    }

    @Test func aPlaintextPeerIsRefused() async throws {
        #expect(try await echoStatus(server: worker.security, client: RPCSecurity.insecure) == .unavailable)
        #expect(try await echoStatus(server: RPCSecurity.insecure, client: coordinator.security) == .unavailable)
    }

    @Test func aClientWithoutACertificateIsRefused() async throws {
        let anonymous = RPCSecurity.tls(rootCertificatesPEM: worker.authorityPEM, privateKeyPEM: nil, certificateChainPEM: nil)
        #expect(try await echoStatus(server: worker.security, client: anonymous) == .unavailable)
    }

    @Test func aWorkerCertifiedForAnotherHostIsRefused() async throws {
        let elsewhere = try authority.issue(name: "worker", hosts: ["worker-7.example"])
        #expect(try await echoStatus(server: elsewhere.security, client: coordinator.security) == .unavailable)
    }

    @Test func identitiesRoundTripThroughTheirFolders() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try authority.write(to: "\(folder)/ca")
        let loaded = try CertificateAuthority(folder: "\(folder)/ca")
        try loaded.issue(name: "w", hosts: ["localhost"]).write(to: "\(folder)/w")
        let identity = try NodeIdentity(folder: "\(folder)/w")
        #expect(identity.authorityPEM == worker.authorityPEM)
        let mode = try FileManager.default.attributesOfItem(atPath: "\(folder)/w/\(NodeIdentity.keyFile)")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(throws: CertificateError.wouldReplace(path: "\(folder)/ca/\(CertificateAuthority.keyFile)")) {
            try CertificateAuthority(name: "again").write(to: "\(folder)/ca")
        }
    }

    @Test func aBrokenFolderIsRefusedAtLoad() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        #expect(throws: CertificateError.missing(path: "\(folder)/n/ca.pem")) { try NodeIdentity(folder: "\(folder)/n") }

        try worker.write(to: "\(folder)/n")
        // Another node's key beside this certificate.
        try coordinator.keyPEM.write(toFile: "\(folder)/n/\(NodeIdentity.keyFile)", atomically: true, encoding: .utf8)
        #expect(throws: CertificateError.keyDoesNotMatch(path: "\(folder)/n/\(NodeIdentity.keyFile)")) {
            try NodeIdentity(folder: "\(folder)/n")
        }
        // Another authority's certificate beside the node's.
        try worker.keyPEM.write(toFile: "\(folder)/n/\(NodeIdentity.keyFile)", atomically: true, encoding: .utf8)
        let other = try CertificateAuthority(name: "test cluster").issue(name: "x", hosts: [])
        try other.authorityPEM.write(toFile: "\(folder)/n/ca.pem", atomically: true, encoding: .utf8)
        #expect(throws: CertificateError.notSignedByAuthority(path: "\(folder)/n/\(NodeIdentity.certificateFile)")) {
            try NodeIdentity(folder: "\(folder)/n")
        }
        // Expired (read as of a date past its end).
        try worker.authorityPEM.write(toFile: "\(folder)/n/ca.pem", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try NodeIdentity(folder: "\(folder)/n", now: Date().addingTimeInterval(900 * 86400)) }
        #expect(throws: Never.self) { try NodeIdentity(folder: "\(folder)/n") }
    }
}

private func temporaryFolder() -> String {
    NSTemporaryDirectory() + "shoal-tls-\(UUID().uuidString)"
}
