import ShoalRPC
import Testing

/// The one `HOST:PORT` parser: what it reads, what it refuses, and that it reads back what it
/// writes. Expectations are the address grammar gRPC and the command line use
/// (`host:port`, an IPv6 literal in brackets, `:port` for every interface).
@Suite struct EndpointTests {
    @Test func readsHostsPortsAndIPv6Literals() {
        #expect(Endpoint("127.0.0.1:50051") == Endpoint(host: "127.0.0.1", port: 50051))
        #expect(Endpoint("worker-3.example:0") == Endpoint(host: "worker-3.example", port: 0))
        #expect(Endpoint("[::1]:443") == Endpoint(host: "::1", port: 443))
        #expect(Endpoint(":8000") == Endpoint(host: "", port: 8000))
        for text in ["127.0.0.1:50051", "[::1]:443", "[fe80::1]:80", ":8000", "h:65535"] {
            #expect(Endpoint(text)?.description == text, "\(text)")
        }
    }

    @Test func refusesWhatIsNotHostPort() {
        for text in ["", "127.0.0.1", "host:", "host:port", "host:-1", "host:65536", "host:99999999999999999999",
                     "[::1:80", "::1]:80", "a b:80", "tab\t:80", "é:80", String(repeating: "a", count: 253) + ":80"] {
            #expect(Endpoint(text) == nil, "\(text)")
        }
        #expect(Endpoint(String(repeating: "a", count: 252) + ":80") != nil)  // 255 bytes: the limit
    }

    @Test func loopbackWildcardAndDialable() {
        for host in ["localhost", "127.0.0.1", "127.255.0.9", "::1"] {
            #expect(Endpoint(host: host, port: 1).isLoopback, "\(host)")
        }
        for host in ["0.0.0.0", "10.0.0.1", "128.0.0.1", "::", "", "example.com", "127.0.0.1.example"] {
            #expect(!Endpoint(host: host, port: 1).isLoopback, "\(host)")
        }
        #expect(Endpoint("0.0.0.0:80")!.isWildcard && Endpoint("[::]:80")!.isWildcard && Endpoint(":80")!.isWildcard)
        #expect(!Endpoint("0.0.0.0:80")!.isDialable && !Endpoint("10.0.0.1:0")!.isDialable)
        #expect(Endpoint("10.0.0.1:80")!.isDialable)
        #expect(Endpoint("0.0.0.0:0")!.with(port: 41234).description == "0.0.0.0:41234")
    }

    @Test func peerHostsAsTheCoreNamesThem() {
        #expect(Endpoint.host(ofPeer: "ipv4:203.0.113.7:51234") == "203.0.113.7")
        #expect(Endpoint.host(ofPeer: "ipv6:[::1]:51234") == "::1")
        #expect(Endpoint.host(ofPeer: "unix:/run/shoal.sock") == "unix:/run/shoal.sock")
    }
}
