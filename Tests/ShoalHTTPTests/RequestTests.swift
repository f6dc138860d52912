import Foundation
import ShoalHTTP
import Testing

@Suite("Requests", .timeLimit(.minutes(1)))
struct RequestTests {
    @Test func getWithQuery() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET /v1/models?name=a%20b&x=1+2&flag HTTP/1.1\r\nHost: test\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 200)
            #expect(response.headers["server"] == "shoal")
            #expect(response.headers["content-type"] == "application/json")
            #expect(response.json["path"] as? String == "/v1/models")
            #expect(response.json["target"] as? String == "/v1/models?name=a%20b&x=1+2&flag")
            #expect(response.json["query"] as? [String: String] == ["name": "a b", "x": "1 2", "flag": ""])
            #expect(response.json["host"] as? String == "test")
        }
    }

    @Test func postWithContentLength() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
            let response = try client.readResponse()
            #expect(response.status == 200)
            #expect(response.json["method"] as? String == "POST")
            #expect(response.json["body"] as? String == "hello world")
        }
    }

    @Test func keepAliveServesTwoRequestsOnOneConnection() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none")
            let first = try client.readResponse()
            try client.send("GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            let second = try client.readResponse()
            #expect(first.json["body"] as? String == "one")
            #expect(first.headers["connection"] == nil)
            #expect(second.json["path"] as? String == "/b")
            #expect(second.headers["connection"] == "close")
            #expect(try client.readToEnd().isEmpty)
        }
    }

    @Test func http10ClosesUnlessKeepAlive() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            #expect(try client.readResponse().headers["connection"] == "keep-alive")
            try client.send("GET /b HTTP/1.0\r\n\r\n")
            #expect(try client.readResponse().headers["connection"] == "close")
            #expect(try client.readToEnd().isEmpty)
        }
    }

    @Test func chunkedRequestBody() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            try client.send("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 200)
            #expect(response.json["body"] as? String == "hello world")
        }
    }

    @Test func expectContinueGetsInterimResponse() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            let interim = try client.readHead()
            #expect(interim.status == 100)
            try client.send("body")
            let response = try client.readResponse()
            #expect(response.status == 200)
            #expect(response.json["body"] as? String == "body")
        }
    }

    @Test(arguments: [
        ("GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
        ("G(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET http://x/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET / HTTX/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400),
        ("GET / HTTP/1.1\nHost: t\n\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("GET /%zz?q=%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx", 417),
    ])
    func refusedRequest(request: String, status: Int) throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send(request)
            let response = try client.readResponse()
            #expect(response.status == status)
            #expect(response.headers["connection"] == "close")
            #expect(response.headers["content-type"] == "application/json")
            let error = response.json["error"] as? [String: Any]
            #expect(error?["type"] as? String == (status >= 500 ? "server_error" : "invalid_request_error"))
            #expect(error?["message"] is String)
            #expect(error?["param"] is NSNull)
            #expect(try client.readToEnd().isEmpty)
        }
    }

    @Test func headerTooLargeIs431() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET / HTTP/1.1\r\nHost: t\r\nX-Big: \(String(repeating: "a", count: 40_000))\r\n\r\n")
            #expect(try client.readResponse().status == 431)
        }
    }

    @Test func bodyOverLimitIs413() throws {
        try withServer(limits: HTTPLimits(maxBodyBytes: 1000), handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "b", count: 2000))
            #expect(try client.readResponse().status == 413)

            let chunked = try RawClient(port: server.port)
            try chunked.send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            try chunked.send("3e8\r\n\(String(repeating: "c", count: 1000))\r\n1\r\nd\r\n0\r\n\r\n")
            #expect(try chunked.readResponse().status == 413)
        }
    }

    @Test func partialRequestTimesOutWith408AndIdleOneQuietly() throws {
        let limits = HTTPLimits(headerTimeout: .milliseconds(200), bodyTimeout: .milliseconds(200))
        try withServer(limits: limits, handler: echo) { server in
            let partial = try RawClient(port: server.port)
            try partial.send("GET / HTTP/1.1\r\nHost:")
            #expect(try partial.readResponse().status == 408)

            let slowBody = try RawClient(port: server.port)
            try slowBody.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            #expect(try slowBody.readResponse().status == 408)

            let idle = try RawClient(port: server.port)
            #expect(try idle.readToEnd().isEmpty)
        }
    }

    @Test func tooManyConnectionsAre503() throws {
        try withServer(limits: HTTPLimits(maxConnections: 1), handler: echo) { server in
            let first = try RawClient(port: server.port)
            try first.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try first.readResponse().status == 200)
            let second = try RawClient(port: server.port)
            let refused = try second.readResponse()
            #expect(refused.status == 503)
            #expect(refused.json["error"] != nil)
        }
    }

    /// Slowloris: a thousand connections that never finish a request head. From one address
    /// they get its share (64) and 503s; from sixteen addresses they fill most of the server,
    /// whose header timeout then drops to two seconds. Real requests from another address are
    /// answered throughout.
    @Test(.timeLimit(.minutes(1))) func aThousandHalfOpenConnectionsDoNotLockOthersOut() throws {
        try withServer(handler: echo) { server in
            func realRequests() throws -> Bool {
                try (0..<10).allSatisfy { _ in
                    let client = try RawClient(port: server.port, from: "127.0.0.2")
                    try client.send("GET /real HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    return try client.readResponse().status == 200
                }
            }
            var oneClient: [RawClient] = []
            var refused = 0
            for _ in 0..<1000 {
                let client = try RawClient(port: server.port)
                try client.send("GET / HTTP/1.1\r\nHost: t\r\n")  // never finished
                oneClient.append(client)
            }
            #expect(try realRequests())
            // Admitted in order: the first 64 hold their places, every later one was refused.
            let share = 64  // HTTPLimits' default per-client share
            for client in oneClient[share...] where (try? client.readResponse().status) == 503 { refused += 1 }
            #expect(refused == 1000 - share, "\(refused) of \(1000 - share) refused")
            oneClient.removeAll()

            var many: [RawClient] = []
            for i in 0..<1000 {
                let client = try RawClient(port: server.port, timeout: .seconds(10), from: "127.0.1.\(1 + i % 16)")
                try client.send("GET / HTTP/1.1\r\nHost: t\r\n")
                many.append(client)
            }
            let start = ContinuousClock.now
            #expect(try realRequests())
            // Those admitted while the server was over half full (the last 400 surely) get the
            // short timeout: 408 within seconds.
            let timedOut = many[600...].filter { (try? $0.readResponse().status) == 408 }.count
            #expect(timedOut == 400, "\(timedOut) of 400 timed out")
            #expect(ContinuousClock.now - start < .seconds(8))
        }
    }

    @Test func handlerThatDoesNotRespondGets500() throws {
        try withServer(handler: { _, _ in }) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 500)
            #expect((response.json["error"] as? [String: Any])?["type"] as? String == "server_error")
        }
    }

    @Test func listensOnIPv6AndNames() throws {
        for host in ["::1", "[::1]", "localhost"] {
            let server = try HTTPServer.start(host: host, port: 0, handler: echo)
            #expect(server.port > 0)
            server.shutdown(grace: .zero)
        }
        #expect(throws: HTTPError.self) { try HTTPServer.start(host: "no-such-host.invalid", port: 0, handler: echo) }
    }
}
