import Foundation
import ShoalRPC
import Testing

@Suite(.timeLimit(.minutes(1)))
struct LifecycleTests {
    @Test func serverStreamingDeliversInOrder() async throws {
        try await withTestServer { _, channel in
            var received: [UInt32] = []
            for try await message in channel.serverStreaming(Method.count, request: payload(100), timeout: .seconds(10)) {
                received.append(uint32(message))
            }
            #expect(received == Array(0..<100))
        }
    }

    @Test func deadlineExpiresQuickly() async throws {
        try await withTestServer { _, channel in
            let start = ContinuousClock.now
            let result = await status { try await channel.unary(Method.slow, request: payload(1), timeout: .milliseconds(100)) }
            #expect(result?.code == .deadlineExceeded)
            #expect(ContinuousClock.now - start < .seconds(2))
        }
    }

    @Test func cancellingTheClientTaskCancelsTheCall() async throws {
        let seen = Flag()
        let started = Flag()
        let waiter: RPCServer.UnaryHandler = { request, context in
            started.set()
            while !context.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
            seen.set()
            throw CancellationError()
        }
        try await withTestServer(extra: ["/shoal.test.Echo/Wait": waiter]) { _, channel in
            let call = Task { await status { try await channel.unary("/shoal.test.Echo/Wait", request: payload(1), timeout: .seconds(20)) } }
            #expect(await started.wait(upTo: .seconds(5)))
            call.cancel()
            let result = await call.value
            #expect(result?.code == .cancelled)
            #expect(await seen.wait(upTo: .seconds(5)))
        }
    }

    @Test func droppingAStreamCancelsIt() async throws {
        let seen = Flag()
        let endless: RPCServer.StreamingHandler = { _, context, writer in
            var i: UInt32 = 0
            do {
                while true {
                    try await writer.send(payload(i))
                    i &+= 1
                }
            } catch {
                if context.isCancelled { seen.set() }
                throw error
            }
        }
        try await RPCServer.withServer(serverStreaming: ["/s/Endless": endless]) { server in
            let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
            defer { channel.close() }
            var count = 0
            for try await _ in channel.serverStreaming("/s/Endless", request: payload(0), timeout: .seconds(20)) {
                count += 1
                if count == 3 { break }
            }
            #expect(await seen.wait(upTo: .seconds(5)))
        }
    }

    @Test func vanishedServerIsUnavailable() async throws {
        let server = try RPCServer.start(listen: "127.0.0.1:0", unary: [Method.echo: echo])
        let port = server.port
        await server.shutdown(grace: .zero)
        let channel = RPCChannel(target: "127.0.0.1:\(port)")
        defer { channel.close() }
        let start = ContinuousClock.now
        let result = await status { try await channel.unary(Method.echo, request: payload(1), timeout: .seconds(10)) }
        #expect(result?.code == .unavailable)
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test func serverShutdownEndsCallsInFlight() async throws {
        let server = try RPCServer.start(listen: "127.0.0.1:0", unary: [Method.slow: { request, _ in
            try await Task.sleep(for: .seconds(30))
            return request
        }, Method.echo: echo])
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        defer { channel.close() }
        _ = try await channel.unary(Method.echo, request: payload(1), timeout: .seconds(5))
        let call = Task { await status { try await channel.unary(Method.slow, request: payload(1), timeout: .seconds(30)) } }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        await server.shutdown(grace: .milliseconds(50))
        let result = await call.value
        #expect(result?.code == .cancelled || result?.code == .unavailable)
        #expect(ContinuousClock.now - start < .seconds(5))
        let after = await status { try await channel.unary(Method.echo, request: payload(1), timeout: .seconds(5)) }
        #expect(after?.code == .unavailable)
    }

    @Test func closingTheChannelCancelsItsCalls() async throws {
        try await withTestServer { _, channel in
            let call = Task { await status { try await channel.unary(Method.slow, request: payload(1), timeout: .seconds(20)) } }
            try await Task.sleep(for: .milliseconds(100))
            channel.close()
            #expect(await call.value?.code == .cancelled)
            let after = await status { try await channel.unary(Method.echo, request: payload(1), timeout: .seconds(1)) }
            #expect(after?.code == .unavailable)
        }
    }

    @Test func twentyServersStartAndStop() async throws {
        for i in 0..<20 {
            try await withTestServer { _, channel in
                let response = try await channel.unary(Method.echo, request: payload(UInt32(i)), timeout: .seconds(5))
                #expect(uint32(response) == UInt32(i))
            }
        }
    }

    @Test func bindingATakenPortFails() async throws {
        try await RPCServer.withServer(unary: [Method.echo: echo]) { server in
            #expect(throws: RPCError.bindFailed(address: "127.0.0.1:\(server.port)")) {
                _ = try RPCServer.start(listen: "127.0.0.1:\(server.port)", unary: [Method.echo: echo])
            }
        }
    }
}
