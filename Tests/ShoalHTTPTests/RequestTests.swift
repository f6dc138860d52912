import Foundation
import Synchronization
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
            #expect(try client.readToEnd().isEmpty, "closed after the request that said Connection: close")
        }
    }

    /// An HTTP/1.0 request is answered with a Content-Length, so its client can read the end
    /// of the answer without waiting for a close (SwiftNIO's HTTP types do not carry the
    /// version, so the connection is kept as a 1.1 one would be).
    @Test func http10RequestIsAnswered() throws {
        try withServer(handler: echo) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET /a HTTP/1.0\r\nHost: t\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 200 && response.json["path"] as? String == "/a")
            #expect(response.headers["content-length"] != nil)
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
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("GET /%zz?q=%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
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

    /// What the HTTP parser itself refuses (malformed lines and names, smuggling-prone
    /// framing, other versions, a head over `maxHeaderBytes`) gets 400 and a close, before
    /// any handler; its body is empty, not OpenAI's error object.
    @Test(arguments: [
        "GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET / HTTX/1.1\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\nHost: t\n\n",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: \(String(repeating: "a", count: 40_000))\r\n\r\n",
    ])
    func parserRefusesMalformedRequest(request: String) throws {
        let handled = Flag()
        try withServer(handler: { request, responder in handled.set(); echo(request, responder) }) { server in
            let client = try RawClient(port: server.port)
            try client.send(request)
            #expect(try client.readResponse().status == 400)
            #expect(try client.readToEnd().isEmpty)
        }
        #expect(!handled.isSet)
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

            let afterAnswer = try RawClient(port: server.port)
            try afterAnswer.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try afterAnswer.readResponse().status == 200)
            #expect(try afterAnswer.readToEnd().isEmpty, "an idle keep-alive connection is closed quietly")
        }
    }

    /// Two requests pipelined in one write: the second's handler runs longer than the head
    /// timeout, which must not start while it is still unanswered.
    @Test func aPipelinedRequestIsNotTimedOutWhileItsHandlerRuns() throws {
        let limits = HTTPLimits(headerTimeout: .milliseconds(200), bodyTimeout: .milliseconds(200))
        let handler: HTTPServer.Handler = { request, responder in
            if request.path == "/slow" { usleep(800_000) }  // the scenario: a handler slower than the timeout
            echo(request, responder)
        }
        try withServer(limits: limits, handler: handler) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            let first = try client.readResponse(), second = try client.readResponse()
            #expect(first.status == 200 && first.json["path"] as? String == "/a")
            #expect(second.status == 200 && second.json["path"] as? String == "/slow")
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

    /// With the default limits, four thousand idle connections from a hundred addresses (each
    /// within its share) are all held, and real requests are answered among them at once: an
    /// idle connection costs no thread.
    @Test(.timeLimit(.minutes(1))) func fourThousandIdleConnectionsAreHeldWhileRealOnesAreAnswered() throws {
        try withServer(handler: echo) { server in
            var idle: [RawClient] = []
            for i in 0..<4000 {
                idle.append(try RawClient(port: server.port, from: "127.0.2.\(1 + i % 100)"))
            }
            let start = ContinuousClock.now
            for _ in 0..<10 {
                let client = try RawClient(port: server.port, from: "127.0.3.1")
                try client.send("GET /real HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                #expect(try client.readResponse().status == 200)
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            // Every idle one is still open: a request on the last of them is answered too.
            try idle[3999].send("GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try idle[3999].readResponse().status == 200)
        }
    }

    /// Slowloris: a thousand connections that never finish a request head. From one address
    /// they get its share (64) and 503s; from sixteen addresses they fill most of the server,
    /// whose header timeout then drops to two seconds. Real requests from another address are
    /// answered throughout.
    @Test(.timeLimit(.minutes(1))) func aThousandHalfOpenConnectionsDoNotLockOthersOut() throws {
        try withServer(limits: HTTPLimits(maxConnections: 1024), handler: echo) { server in
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

    /// Each running handler has a thread: past `maxHandlers` a request gets 503 at once,
    /// without one, and is served again as soon as a handler returns.
    @Test func handlersPastTheLimitGet503() throws {
        let release = Flag()
        let started = Atomic<Int>(0)
        let handler: HTTPServer.Handler = { request, responder in
            if request.path == "/wait" {
                started.add(1, ordering: .relaxed)
                _ = release.wait(upTo: .seconds(20))
            }
            echo(request, responder)
        }
        try withServer(limits: HTTPLimits(maxHandlers: 2), handler: handler) { server in
            let waiting = try (0..<2).map { _ in
                let client = try RawClient(port: server.port)
                try client.send("GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
                return client
            }
            let end = ContinuousClock.now + .seconds(10)
            while started.load(ordering: .relaxed) < 2, ContinuousClock.now < end { usleep(2_000) }
            let third = try RawClient(port: server.port)
            try third.send("GET /now HTTP/1.1\r\nHost: t\r\n\r\n")
            let refused = try third.readResponse()
            #expect(refused.status == 503 && refused.json["error"] != nil)
            release.set()
            for client in waiting { #expect(try client.readResponse().status == 200) }
            let fourth = try RawClient(port: server.port)
            try fourth.send("GET /now HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try fourth.readResponse().status == 200)
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

@Suite("HTTPS") struct HTTPSTests {
    /// A certificate or key that does not load stops the start, naming the file, instead of a
    /// listener that fails every handshake.
    @Test func badCertificateFilesFailTheStart() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-https-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let garbage = folder.appendingPathComponent("garbage.pem").path
        try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: garbage))
        for (chain, key) in [(folder.appendingPathComponent("missing.pem").path, garbage), (garbage, garbage)] {
            #expect {
                _ = try HTTPServer.start(host: "127.0.0.1", port: 0, tls: HTTPServerTLS(certificateChainFile: chain, privateKeyFile: key),
                                         handler: echo)
            } throws: { error in
                guard case .tlsFiles(let message) = error as? HTTPError else { return false }
                return message.contains(chain)
            }
        }
    }
}
