import ArgumentParser
import Foundation
import ShoalClient
import ShoalCertificates
import ShoalRPC
import ShoalServe

/// How a node talks to the rest of its cluster: mutual TLS with the identity in `--tls DIR`, or
/// plaintext, which is allowed off loopback only when the operator says `--insecure`.
struct NodeSecurity {
    /// The identity, or nil for plaintext.
    let identity: NodeIdentity?
    let insecure: Bool

    init(tls: String?, insecure: Bool) throws {
        identity = try tls.map { folder throws(CertificateError) in try NodeIdentity(folder: folder) }
        self.insecure = insecure
    }

    var security: RPCSecurity { identity?.security ?? .insecure }

    /// How the ready line and logs name the connection security.
    var summary: String {
        identity.map { "mutual TLS as \($0.name)" } ?? "plaintext (no --tls)"
    }

    /// Refuses a plaintext peer off loopback (listening on `address`, or dialling it) unless
    /// `--insecure` was given; with it, returns the warning to print on every start.
    func checkPlaintext(_ addresses: [String], role: String) throws -> String? {
        guard identity == nil else { return nil }
        let exposed = addresses.filter { !(Endpoint($0)?.isLoopback ?? false) }
        guard !exposed.isEmpty else { return nil }
        guard insecure else {
            throw UsageError.conflicting(
                "\(role) \(exposed.joined(separator: ",")) is not loopback: give --tls DIR (shoal certs issue) "
                    + "for mutual TLS, or --insecure to accept plaintext from anyone who can reach it")
        }
        return "warning: --insecure: \(role) \(exposed.joined(separator: ",")) in plaintext, unauthenticated: "
            + "anyone who can reach it can use it and read what it carries"
    }
}

/// `listen` with the port a listener actually bound in place of the one asked for (0), as the
/// ready lines print it; `listen` as given if it is not HOST:PORT (its listener refused it first).
func boundAddress(_ listen: String, port: Int) -> String {
    Endpoint(listen)?.with(port: port).description ?? listen
}

/// A throwaway authority for a cluster this process starts on loopback (`shoal demo`,
/// `shoal bench --workers --tls`): one identity folder the workers share, and the
/// coordinator's own. The folder goes away with `remove()`.
struct LoopbackCertificates {
    let folder: String
    let workerFolder: String
    let coordinator: NodeIdentity

    init() throws {
        folder = NSTemporaryDirectory() + "shoal-loopback-tls-\(getpid())-\(UUID().uuidString.prefix(8))"
        let authority = try CertificateAuthority(name: "shoal loopback CA \(getpid())", days: 2)
        workerFolder = folder + "/worker"
        try authority.issue(name: "loopback-worker", hosts: ["127.0.0.1", "localhost"], days: 2).write(to: workerFolder)
        coordinator = try authority.issue(name: "loopback-coordinator", hosts: [], days: 2)
    }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }
}

/// How a client reaches a coordinator's gRPC prompt API (`shoal chat`, `generate --coordinator`).
struct CoordinatorAccessOptions: ParsableArguments {
    @Option(help: "API key for the coordinator (default: $SHOAL_API_KEY).") var apiKey: String?
    @Option(help: "PEM certificate(s) to verify the coordinator's --tls-cert with: connect over TLS.")
    var coordinatorCA: String?

    func client(_ target: String) throws -> CoordinatorClient {
        let key = apiKey ?? ProcessInfo.processInfo.environment["SHOAL_API_KEY"]
        let security = try coordinatorCA.map { RPCSecurity.tls(
            rootCertificatesPEM: try readPEM($0, "--coordinator-ca"), privateKeyPEM: nil, certificateChainPEM: nil) }
        return CoordinatorClient(target: target, security: security ?? .insecure, apiKey: key)
    }
}
