import CGRPCCore

/// How a channel or server secures its connections.
public enum RPCSecurity: Sendable, Hashable {
    /// Plain HTTP/2 over TCP.
    case insecure
    /// TLS. A client verifies the server against `rootCertificatesPEM` (nil: the system roots) and
    /// presents `privateKeyPEM` + `certificateChainPEM` when both are given (mutual TLS). A server
    /// needs its key and chain, and when `rootCertificatesPEM` is given it requires and verifies
    /// client certificates signed by those roots.
    case tls(rootCertificatesPEM: String?, privateKeyPEM: String?, certificateChainPEM: String?)

    /// Channel credentials; the caller releases them after creating the channel.
    func makeChannelCredentials() -> OpaquePointer {
        switch self {
        case .insecure:
            return cgrpc_insecure_channel_credentials()
        case .tls(let roots, let key, let chain):
            return withOptionalCString(roots) { roots in
                withKeyCertPair(key: key, chain: chain) { pair in
                    grpc_ssl_credentials_create(roots, pair, nil, nil)
                }
            }
        }
    }

    /// Server credentials; the caller releases them after adding the port.
    func makeServerCredentials() throws(RPCError) -> OpaquePointer {
        switch self {
        case .insecure:
            return cgrpc_insecure_server_credentials()
        case .tls(let roots, let key, let chain):
            guard key != nil, chain != nil else { throw .serverTLSNeedsKeyAndCertificate }
            let request = roots == nil
                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            return withOptionalCString(roots) { roots in
                withKeyCertPair(key: key, chain: chain) { pair in
                    grpc_ssl_server_credentials_create_ex(roots, pair, 1, request, nil)
                }
            }
        }
    }
}

private func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

/// Calls `body` with a key/certificate pair valid during the call, or nil unless both are given.
private func withKeyCertPair<R>(
    key: String?, chain: String?, _ body: (UnsafeMutablePointer<grpc_ssl_pem_key_cert_pair>?) -> R
) -> R {
    guard let key, let chain else { return body(nil) }
    return key.withCString { key in
        chain.withCString { chain in
            let pair = UnsafeMutablePointer<grpc_ssl_pem_key_cert_pair>.allocate(capacity: 1)
            defer { pair.deallocate() }
            pair.initialize(to: grpc_ssl_pem_key_cert_pair(private_key: key, cert_chain: chain))
            return body(pair)
        }
    }
}

/// The longest a client channel waits between attempts to reconnect (the core's jitter adds up
/// to 20%): a restarted peer is reached within about this long of its return.
let maxReconnectBackoffMilliseconds: Int32 = 1000

/// Calls `body` with channel arguments that set the maximum received message size and lift the
/// send limit (the peer's receive limit governs). For a server, also turn SO_REUSEPORT off, so
/// that a second server on a taken port fails to bind instead of silently sharing it.
///
/// For a client, two reconnection rules (docs/grpc-core.md, "Reconnecting"): the channel keeps
/// its connections to itself (the core otherwise shares them between channels to one address,
/// so a new channel inherits an old one's failed connection and its backoff), and waits at
/// most `maxReconnectBackoffMilliseconds` between attempts (the core's backoff otherwise grows
/// 1.6-fold per failure up to 120 s, and a fail-fast call made meanwhile fails at once: a
/// worker back after a long outage would stay unseen for up to two minutes).
func withChannelArguments<R>(
    maxReceiveBytes: Int, forServer: Bool = false, _ body: (UnsafePointer<grpc_channel_args>) -> R
) -> R {
    var values: [(UnsafePointer<CChar>, Int32)] = [
        (cgrpc_arg_max_receive_message_length(), maxReceiveBytes < 0 ? -1 : Int32(clamping: maxReceiveBytes)),
        (cgrpc_arg_max_send_message_length(), -1),
    ]
    if forServer {
        values.append((cgrpc_arg_allow_reuseport(), 0))
    } else {
        values.append((cgrpc_arg_use_local_subchannel_pool(), 1))
        values.append((cgrpc_arg_max_reconnect_backoff_ms(), maxReconnectBackoffMilliseconds))
    }
    let arguments = UnsafeMutablePointer<grpc_arg>.allocate(capacity: values.count)
    defer { arguments.deallocate() }
    for (i, (key, value)) in values.enumerated() {
        var argument = grpc_arg()
        argument.type = GRPC_ARG_INTEGER
        argument.key = UnsafeMutablePointer(mutating: key)
        argument.value.integer = value
        (arguments + i).initialize(to: argument)
    }
    let list = UnsafeMutablePointer<grpc_channel_args>.allocate(capacity: 1)
    defer { list.deallocate() }
    list.initialize(to: grpc_channel_args(num_args: values.count, args: arguments))
    return body(list)
}
