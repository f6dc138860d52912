import ArgumentParser
import Foundation
import ShoalCertificates

/// `shoal certs`: a cluster's certificate authority and its nodes' certificates.
struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Make a cluster's certificate authority and its nodes' certificates (mutual TLS).",
        discussion: """
            Every node of a cluster (workers, coordinators) gets a folder from `shoal certs issue`
            and is started with --tls FOLDER: it then talks only to nodes whose certificate the
            same authority signed. Keep the authority's folder (its ca-key.pem) off the nodes.
            """,
        subcommands: [Init.self, Issue.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a new certificate authority: OUT/ca.pem and OUT/ca-key.pem (mode 0600).")

        @Option(help: "Folder to write the authority to (made if missing; an existing authority is never replaced).")
        var out: String
        @Option(help: "The authority's name (default: Shoal cluster CA and 8 random hex digits, so that two clusters' authorities never share a name).")
        var name: String?
        @Option(help: "Days the authority is valid.") var days = 3650

        func validate() throws {
            guard days >= 1 else { throw ValidationError("--days must be at least 1") }
        }

        func run() throws {
            try reportingErrors {
                let name = self.name ?? "Shoal cluster CA " + String(format: "%08x", UInt32.random(in: .min ... .max))
                let authority = try CertificateAuthority(name: name, days: days)
                try authority.write(to: out)
                print("shoal certs: authority \"\(name)\" written to \(out)/\(CertificateAuthority.certificateFile) "
                      + "and \(out)/\(CertificateAuthority.keyFile) (valid \(days) days)")
            }
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a node's key and certificate: OUT/ca.pem, OUT/node.pem, OUT/node-key.pem (mode 0600).",
            discussion: """
                --host names every address peers dial this node at (DNS name or IP); a coordinator
                refuses a worker whose certificate does not name the host it dialled. Without
                --host the certificate names NAME.
                """)

        @Option(help: "The authority's folder (from shoal certs init).") var ca: String
        @Option(help: "The node's name (its certificate's common name).") var name: String
        @Option(help: "A host name or IP address the node is reached at; repeat for several.") var host: [String] = []
        @Option(help: "Folder to write the node's files to (made if missing; an existing key is never replaced).")
        var out: String
        @Option(help: "Days the certificate is valid.") var days = 825

        func validate() throws {
            guard days >= 1 else { throw ValidationError("--days must be at least 1") }
            guard !name.isEmpty else { throw ValidationError("--name must not be empty") }
        }

        func run() throws {
            try reportingErrors {
                let authority = try CertificateAuthority(folder: ca)
                let identity = try authority.issue(name: name, hosts: host, days: days)
                try identity.write(to: out)
                print("shoal certs: \(name) (\((host.isEmpty ? [name] : host).joined(separator: ", "))) written to "
                      + "\(out)/\(NodeIdentity.certificateFile) and \(out)/\(NodeIdentity.keyFile), "
                      + "with the authority's \(out)/\(CertificateAuthority.certificateFile) (valid \(days) days)")
            }
        }
    }
}
