import Foundation
import ShoalHTTP
import ShoalTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Streaming and shutdown", .timeLimit(.minutes(1)))
struct StreamingTests {
    @Test func streamedResponseArrivesAsChunks() throws {
        let handler: HTTPServer.Handler = { _, responder in
            try? responder.startStream(status: 200, headers: [("Content-Type", "text/event-stream")])
            for piece in ["data: one\n\n", "data: two\n\n", "", "data: three\n\n"] {
                try? responder.write(Array(piece.utf8))
            }
            try? responder.finishStream()
        }
        try withServer(handler: handler) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 200)
            #expect(response.headers["transfer-encoding"] == "chunked")
            #expect(response.chunks.map { String(decoding: $0, as: UTF8.self) } == ["data: one\n\n", "data: two\n\n", "data: three\n\n"])
            // The connection is kept for the next request.
            try client.send("GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try client.readResponse().chunks.count == 3)
        }
    }

    @Test func writeFailsSoonAfterClientDisconnects() throws {
        let failed = Flag()
        let handler: HTTPServer.Handler = { _, responder in
            try? responder.startStream(status: 200, headers: [])
            let end = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < end {
                do {
                    try responder.write(Array("tick\n".utf8))
                } catch {
                    if error as? HTTPError == .clientGone { failed.set() }
                    return
                }
                usleep(10_000)
            }
        }
        try withServer(handler: handler) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            _ = try client.readHead()
            _ = try client.readChunk()
            client.hangUp()
            #expect(failed.wait(upTo: .seconds(5)))
        }
    }

    @Test func clientIsGoneWhileHandlerWaits() throws {
        let noticed = Flag()
        let handler: HTTPServer.Handler = { _, responder in
            #expect(!responder.clientIsGone)
            let end = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < end, !responder.clientIsGone { usleep(10_000) }
            if responder.clientIsGone { noticed.set() }
        }
        try withServer(handler: handler) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            usleep(100_000)
            client.reset()
            #expect(noticed.wait(upTo: .seconds(5)))
        }
    }

    /// A client that shuts down its sending side after the request is not gone: it reads the
    /// answer (it got none at all before).
    @Test func halfClosedClientIsNotGoneAndReadsTheAnswer() throws {
        let thoughtGone = Flag()
        let handler: HTTPServer.Handler = { _, responder in
            let end = ContinuousClock.now + .milliseconds(500)
            while ContinuousClock.now < end {
                if responder.clientIsGone { thoughtGone.set() }
                usleep(10_000)
            }
            try? responder.respond(status: 200, headers: [("Content-Type", "text/plain")], body: Array("still here".utf8))
        }
        try withServer(handler: handler) { server in
            let client = try RawClient(port: server.port)
            try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            client.halfClose()
            let response = try client.readResponse()
            #expect(response.status == 200 && response.text == "still here")
            #expect(!thoughtGone.isSet, "a half-closed client was taken for gone")
        }
    }

    /// A client that stops sending part-way through a request and half-closes is told why
    /// (400), as every other malformed request is, instead of a silent close; one that never
    /// began a request is closed quietly.
    @Test func aRequestEndedPartWayGets400() throws {
        let handled = Flag()
        try withServer(handler: { _, responder in
            handled.set()
            try? responder.respond(status: 200, headers: [], body: [])
        }) { server in
            for partial in ["GET / HTTP/1.1\r\nHost: t\r\n", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345",
                            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"] {
                let client = try RawClient(port: server.port)
                try client.send(partial)
                client.halfClose()
                let response = try client.readResponse()
                #expect(response.status == 400 && response.text.contains("ended before it was complete"),
                        "\(partial.debugDescription): \(response.status) \(response.text)")
            }
            let idle = try RawClient(port: server.port)
            idle.halfClose()
            #expect(throws: (any Error).self, "nothing sent, nothing answered") { try idle.readResponse() }
        }
        #expect(!handled.isSet, "an incomplete request reached the handler")
    }

    @Test func shutdownLetsShortStreamsFinish() throws {
        let started = Flag()
        let handler: HTTPServer.Handler = { _, responder in
            try? responder.startStream(status: 200, headers: [])
            started.set()
            for i in 0..<5 {
                usleep(40_000)
                try? responder.write(Array("\(i)".utf8))
            }
            try? responder.finishStream()
        }
        let server = try HTTPServer.start(host: "127.0.0.1", port: 0, handler: handler)
        let client = try RawClient(port: server.port)
        try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(started.wait(upTo: .seconds(5)))
        server.shutdown(grace: .seconds(10))
        let response = try client.readResponse()
        #expect(response.text == "01234")
        #expect(try client.readToEnd().isEmpty)
        #expect(throws: LoopbackError.self) { try RawClient(port: server.port) }
    }

    @Test func shutdownCutsLongStreamsAfterGrace() throws {
        let started = Flag()
        let writeFailed = Flag()
        let handler: HTTPServer.Handler = { _, responder in
            try? responder.startStream(status: 200, headers: [])
            started.set()
            let end = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < end {
                do { try responder.write(Array("tick".utf8)) } catch {
                    writeFailed.set()
                    return
                }
                usleep(10_000)
            }
        }
        let server = try HTTPServer.start(host: "127.0.0.1", port: 0, handler: handler)
        let idle = try RawClient(port: server.port)
        let client = try RawClient(port: server.port)
        try client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(started.wait(upTo: .seconds(5)))

        let clock = ContinuousClock()
        let elapsed = clock.measure { server.shutdown(grace: .milliseconds(300)) }
        #expect(elapsed >= .milliseconds(300))
        #expect(elapsed < .seconds(3))
        #expect(writeFailed.isSet)
        #expect(try idle.readToEnd().isEmpty)
        // Chunks, then the end of the connection without the last (empty) chunk.
        let head = try client.readHead()
        #expect(head.status == 200)
        let rest = String(decoding: try client.readToEnd(), as: UTF8.self)
        #expect(rest.contains("tick"))
        #expect(!rest.hasSuffix("0\r\n\r\n"))
    }
}
