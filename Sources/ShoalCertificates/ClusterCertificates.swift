import Crypto
import Foundation
import ShoalRPC
import SwiftASN1
import X509

/// A cluster's certificate authority: the one key every node's certificate is signed with.
/// Nodes trust each other when, and only when, this authority signed both (mutual TLS).
///
/// On disk (`shoal certs init --out DIR`): `DIR/ca.pem`, the certificate every node carries, and
/// `DIR/ca-key.pem` (mode 0600), which stays with whoever issues node certificates.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    let key: Certificate.PrivateKey

    public static let certificateFile = "ca.pem"
    public static let keyFile = "ca-key.pem"

    /// A new authority named `name` (P-256), valid for `days`.
    public init(name: String, days: Int = 3650, now: Date = Date()) throws {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let subject = try DistinguishedName { CommonName(name) }
        certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: key)
        self.key = key
    }

    /// The authority kept in `folder`.
    public init(folder: String) throws(CertificateError) {
        (certificate, key) = try certificateAndKey(
            folder, certificatePEM: try readPEM(folder, Self.certificateFile), keyPEM: try readPEM(folder, Self.keyFile),
            keyFile: Self.keyFile)
    }

    /// Writes `ca.pem` and `ca-key.pem` into `folder` (made if missing); refuses to replace an
    /// existing authority, whose nodes would all stop trusting each other.
    public func write(to folder: String) throws(CertificateError) {
        try refuseToReplace(folder, Self.keyFile)
        try writeFile(folder, Self.certificateFile, try pem(certificate), secret: false)
        try writeFile(folder, Self.keyFile, try pem(key), secret: true)
    }

    /// A node certificate for `name`, valid for TLS clients and servers at `hosts` (DNS names
    /// or IP addresses; the name the coordinator dials must be one of them), for `days`.
    public func issue(name: String, hosts: [String], days: Int = 825, now: Date = Date()) throws -> NodeIdentity {
        let nodeKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let names = try (hosts.isEmpty ? [name] : hosts).map(generalName)
        let node = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: nodeKey.publicKey,
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
            issuer: certificate.subject, subject: try DistinguishedName { CommonName(name) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
            },
            issuerPrivateKey: key)
        return NodeIdentity(
            authorityPEM: try pem(certificate), certificatePEM: try pem(node), keyPEM: try pem(nodeKey),
            name: name)
    }
}

/// One node's identity: its key, its certificate, and the authority it trusts. On disk
/// (`shoal certs issue --out DIR`, read by `--tls DIR`): `ca.pem`, `node.pem`, `node-key.pem`
/// (mode 0600).
public struct NodeIdentity: Sendable {
    public let authorityPEM: String
    public let certificatePEM: String
    public let keyPEM: String
    /// The certificate's common name.
    public let name: String

    public static let certificateFile = "node.pem"
    public static let keyFile = "node-key.pem"

    init(authorityPEM: String, certificatePEM: String, keyPEM: String, name: String) {
        self.authorityPEM = authorityPEM
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
        self.name = name
    }

    /// The identity kept in `folder`, checked before any peer sees it: every file there and
    /// readable, the key the certificate's, the certificate signed by the authority beside it and
    /// valid at `now`. A node that would fail every handshake says why at start instead.
    public init(folder: String, now: Date = Date()) throws(CertificateError) {
        authorityPEM = try readPEM(folder, CertificateAuthority.certificateFile)
        certificatePEM = try readPEM(folder, Self.certificateFile)
        keyPEM = try readPEM(folder, Self.keyFile)
        let authority: Certificate
        do { authority = try Certificate(pemEncoded: authorityPEM) } catch {
            throw .unreadable(path: "\(folder)/\(CertificateAuthority.certificateFile)", reason: "\(error)")
        }
        let (certificate, _) = try certificateAndKey(folder, certificatePEM: certificatePEM, keyPEM: keyPEM, keyFile: Self.keyFile)
        guard certificate.issuer == authority.subject,
              authority.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            throw .notSignedByAuthority(path: "\(folder)/\(Self.certificateFile)")
        }
        for (file, cert) in [(CertificateAuthority.certificateFile, authority), (Self.certificateFile, certificate)]
        where !(cert.notValidBefore...cert.notValidAfter).contains(now) {
            throw .notValidNow(path: "\(folder)/\(file)", notBefore: cert.notValidBefore, notAfter: cert.notValidAfter)
        }
        name = certificate.subject.description
    }

    /// Writes the three files into `folder` (made if missing); refuses to replace a key.
    public func write(to folder: String) throws(CertificateError) {
        try refuseToReplace(folder, Self.keyFile)
        try writeFile(folder, CertificateAuthority.certificateFile, authorityPEM, secret: false)
        try writeFile(folder, Self.certificateFile, certificatePEM, secret: false)
        try writeFile(folder, Self.keyFile, keyPEM, secret: true)
    }

    /// Mutual TLS: present this certificate, and accept only peers the authority signed.
    public var security: RPCSecurity {
        .tls(rootCertificatesPEM: authorityPEM, privateKeyPEM: keyPEM, certificateChainPEM: certificatePEM)
    }
}

/// Why a certificate folder cannot be used.
public enum CertificateError: Error, Equatable, CustomStringConvertible {
    case missing(path: String)
    case unreadable(path: String, reason: String)
    case keyDoesNotMatch(path: String)
    case notSignedByAuthority(path: String)
    case notValidNow(path: String, notBefore: Date, notAfter: Date)
    case wouldReplace(path: String)
    case badHost(String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .missing(let path): "\(path): no such file (make one with shoal certs init / shoal certs issue)"
        case .unreadable(let path, let reason): "\(path): not a PEM certificate and key: \(reason)"
        case .keyDoesNotMatch(let path): "\(path): this key is not the certificate's"
        case .notSignedByAuthority(let path): "\(path): not signed by the ca.pem beside it"
        case .notValidNow(let path, let notBefore, let notAfter):
            "\(path): valid only from \(notBefore) to \(notAfter) (issue a new one with shoal certs issue)"
        case .wouldReplace(let path): "\(path) exists; refusing to replace a key (remove it first if you mean to)"
        case .badHost(let host): "--host \(host): expected a DNS name or an IP address"
        case .writeFailed(let path, let reason): "\(path): cannot write: \(reason)"
        }
    }
}

/// A `--host` as a subject alternative name: an IPv4/IPv6 literal, or a DNS name.
func generalName(_ host: String) throws(CertificateError) -> GeneralName {
    var v4 = in_addr(), v6 = in6_addr()
    if inet_pton(AF_INET, host, &v4) == 1 {
        return .ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: &v4) { ArraySlice($0) }))
    }
    if inet_pton(AF_INET6, host, &v6) == 1 {
        return .ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: &v6) { ArraySlice($0) }))
    }
    let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.*")
    guard !host.isEmpty, host.count <= 253, host.allSatisfy(allowed.contains) else { throw .badHost(host) }
    return .dnsName(host)
}

private func pem(_ value: some PEMSerializable) throws(CertificateError) -> String {
    do { return try value.serializeAsPEM().pemString } catch { throw .unreadable(path: "", reason: "\(error)") }
}

private func pem(_ key: Certificate.PrivateKey) throws(CertificateError) -> String {
    do { return try key.serializeAsPEM().pemString } catch { throw .unreadable(path: "", reason: "\(error)") }
}

/// A certificate and its private key from PEM text, checked to belong together.
private func certificateAndKey(_ folder: String, certificatePEM: String, keyPEM: String,
                               keyFile: String) throws(CertificateError) -> (Certificate, Certificate.PrivateKey) {
    let certificate: Certificate, key: Certificate.PrivateKey
    do {
        certificate = try Certificate(pemEncoded: certificatePEM)
        key = try Certificate.PrivateKey(pemEncoded: keyPEM)
    } catch {
        throw .unreadable(path: folder, reason: "\(error)")
    }
    guard key.publicKey == certificate.publicKey else { throw .keyDoesNotMatch(path: "\(folder)/\(keyFile)") }
    return (certificate, key)
}

private func readPEM(_ folder: String, _ file: String) throws(CertificateError) -> String {
    let path = "\(folder)/\(file)"
    guard FileManager.default.fileExists(atPath: path) else { throw .missing(path: path) }
    do { return try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw .unreadable(path: path, reason: "\(error)")
    }
}

private func refuseToReplace(_ folder: String, _ file: String) throws(CertificateError) {
    if FileManager.default.fileExists(atPath: "\(folder)/\(file)") { throw .wouldReplace(path: "\(folder)/\(file)") }
}

/// Writes `text` to `folder/file`; a secret is created with mode 0600 before any byte is in it.
private func writeFile(_ folder: String, _ file: String, _ text: String, secret: Bool) throws(CertificateError) {
    let path = "\(folder)/\(file)"
    do {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0o600 : 0o644)
        guard fd >= 0 else { throw CertificateError.writeFailed(path: path, reason: String(cString: strerror(errno))) }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        try handle.write(contentsOf: Data(text.utf8))
        try handle.synchronize()
    } catch let error as CertificateError {
        throw error
    } catch {
        throw .writeFailed(path: path, reason: "\(error)")
    }
}
