import Foundation
import Synchronization
@testable import ShoalRPC
import Testing

@Suite(.timeLimit(.minutes(1)))
struct UnaryTests {
    @Test(arguments: [1, 23, 24, 8 << 10, 1 << 20, 64 << 20])
    func echoIsByteExact(size: Int) async throws {
        try await withTestServer { _, channel in
            let request = patterned(size)
            let response = try await channel.unary(Method.echo, request: request, timeout: .seconds(20))
            #expect(response.count == size)
            #expect(sameBytes(request, response))
        }
    }

    /// Inline handlers answer on the polling thread: bytes, statuses and other errors come back
    /// as from task handlers, and task-handled methods on the same server still work.
    @Test func inlineHandlersAnswerLikeTaskHandlers() async throws {
        let inlineEcho = "/shoal.test.Inline/Echo", inlineFail = "/shoal.test.Inline/Fail"
        let inlineCrash = "/shoal.test.Inline/Throw"
        try await RPCServer.withServer(
            unary: [Method.echo: echo],
            inline: [
                inlineEcho: { request, _ in request },
                inlineFail: { _, _ in throw RPCStatus(code: .invalidArgument, message: "layer 99 out of range") },
                inlineCrash: { _, _ in throw Boom() },
            ]
        ) { server in
            let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
            defer { channel.close() }
            let request = patterned(8 << 10)
            let inlined = try await channel.unary(inlineEcho, request: request, timeout: .seconds(5))
            let tasked = try await channel.unary(Method.echo, request: request, timeout: .seconds(5))
            #expect(sameBytes(request, inlined) && sameBytes(request, tasked))
            let failed = await status { try await channel.unary(inlineFail, request: request, timeout: .seconds(5)) }
            #expect(failed?.code == .invalidArgument && failed?.message == "layer 99 out of range")
            let crashed = await status { try await channel.unary(inlineCrash, request: request, timeout: .seconds(5)) }
            #expect(crashed?.code == .internal)
        }
    }

    /// Calls on an `RPCCallerQueue` complete inside `run` on the waiting thread: an answer, a
    /// deadline and a closed channel each end their call exactly once.
    @Test func callerQueueRunsEveryCompletion() async throws {
        try await withTestServer { _, channel in
            let queue = RPCCallerQueue()
            let closed = RPCChannel(target: "127.0.0.1:1")
            closed.close()
            let request = patterned(4 << 10)
            let results = Mutex<[Int: Result<RPCPayload, Error>]>([:])
            let calls = [(channel, Method.echo, Duration.seconds(5)), (channel, Method.slow, .milliseconds(200)),
                         (closed, Method.echo, .seconds(5))]
            for (i, (target, method, timeout)) in calls.enumerated() {
                target.unary(method, request: request, timeout: timeout, on: queue) { result in
                    results.withLock { $0[i] = $0[i] == nil ? result : .failure(Boom()) }
                }
            }
            queue.run { results.withLock { $0.count == calls.count } }
            let answers = results.withLock { $0 }
            #expect((try? answers[0]?.get()).map { sameBytes(request, $0) } == true)
            #expect(await status { try answers[1]!.get() }?.code == .deadlineExceeded)
            #expect(await status { try answers[2]!.get() }?.code == .unavailable)
        }
    }

    /// A channel whose calls all complete on caller queues starts no polling thread of its
    /// own: an idle one would take the caller's answers off the socket and then have to wake
    /// it. Its first async call starts one. (Inline handlers: this test blocks its thread.)
    @Test func callerQueueChannelsStartNoThread() async throws {
        try await RPCServer.withServer(inline: [Method.echo: { request, _ in request }],
                                       exchange: [Method.exchange: { request, _ in request }]) { server in
            let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
            defer { channel.close() }
            let queue = RPCCallerQueue()
            let answers = Mutex<[Result<RPCPayload, Error>]>([])
            channel.unary(Method.echo, request: patterned(64), timeout: .seconds(5), on: queue) { result in
                answers.withLock { $0.append(result) }
            }
            let stream = channel.openExchange(Method.exchange, on: queue)
            stream.exchange(patterned(64)) { result in answers.withLock { $0.append(result) } }
            queue.run { answers.withLock { $0.count } == 2 }
            #expect(answers.withLock { $0.allSatisfy { (try? $0.get()) != nil } })
            #expect(!channel.hasOwnQueue)
            stream.cancel(RPCStatus(code: .cancelled, message: "test done"))
            _ = try await channel.unary(Method.echo, request: patterned(64), timeout: .seconds(5))
            #expect(channel.hasOwnQueue)
            channel.close()
            withExtendedLifetime(queue) {}
        }
    }

    @Test func payloadFromBytesAndArray() {
        let bytes: [UInt8] = Array(0..<100)
        let payload = RPCPayload(bytes)
        #expect(payload.count == 100)
        #expect(payload.withUnsafeBytes { Array($0) } == bytes)
        let small = bytes.withUnsafeBytes { RPCPayload(UnsafeRawBufferPointer(rebasing: $0[0..<5])) }
        #expect(small.withUnsafeBytes { Array($0) } == [0, 1, 2, 3, 4])
        #expect(RPCPayload([]).count == 0)
    }

    @Test func emptyMessageRoundTrips() async throws {
        try await withTestServer { _, channel in
            let response = try await channel.unary(Method.echo, request: RPCPayload([]), timeout: .seconds(5))
            #expect(response.count == 0)
        }
    }

    @Test func twoHundredConcurrentCallsOnOneChannel() async throws {
        try await withTestServer { _, channel in
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<200 {
                    group.addTask {
                        let response = try await channel.unary(Method.echo, request: payload(UInt32(i)), timeout: .seconds(10))
                        return uint32(response) == UInt32(i)
                    }
                }
                var correct = 0
                for try await ok in group where ok { correct += 1 }
                #expect(correct == 200)
            }
        }
    }

    @Test func samePayloadToThreeServers() async throws {
        let request = patterned(64 << 10)
        try await withTestServer { _, a in
            try await withTestServer { _, b in
                try await withTestServer { _, c in
                    async let ra = a.unary(Method.echo, request: request, timeout: .seconds(5))
                    async let rb = b.unary(Method.echo, request: request, timeout: .seconds(5))
                    async let rc = c.unary(Method.echo, request: request, timeout: .seconds(5))
                    for response in try await [ra, rb, rc] { #expect(sameBytes(request, response)) }
                }
            }
        }
        #expect(request.count == 64 << 10)  // still valid after the servers and channels are gone
    }

    @Test func handlerStatusReachesClientExactly() async throws {
        try await withTestServer { _, channel in
            let failed = await status { try await channel.unary(Method.fail, request: payload(1), timeout: .seconds(5)) }
            #expect(failed == RPCStatus(code: .invalidArgument, message: "layer 99 out of range"))
            let crashed = await status { try await channel.unary(Method.crash, request: payload(1), timeout: .seconds(5)) }
            #expect(crashed == RPCStatus(code: .internal, message: "boom"))
            // The server is unharmed.
            let after = try await channel.unary(Method.echo, request: payload(7), timeout: .seconds(5))
            #expect(uint32(after) == 7)
        }
    }

    @Test func unknownMethodIsUnimplemented() async throws {
        try await withTestServer { _, channel in
            let result = await status { try await channel.unary("/no.Such/Method", request: payload(1), timeout: .seconds(5)) }
            #expect(result?.code == .unimplemented)
        }
    }

    @Test func oversizedRequestIsRefused() async throws {
        try await withTestServer(maxReceiveBytes: 1024) { _, channel in
            let result = await status { try await channel.unary(Method.echo, request: patterned(2048), timeout: .seconds(5)) }
            #expect(result?.code == .resourceExhausted)
            let ok = try await channel.unary(Method.echo, request: patterned(1024), timeout: .seconds(5))
            #expect(ok.count == 1024)
        }
    }

    @Test func oversizedResponseIsRefused() async throws {
        try await RPCServer.withServer(unary: [Method.echo: echo]) { server in
            let channel = RPCChannel(target: "127.0.0.1:\(server.port)", maxReceiveBytes: 1000)
            defer { channel.close() }
            let result = await status { try await channel.unary(Method.echo, request: patterned(1001), timeout: .seconds(5)) }
            #expect(result?.code == .resourceExhausted)
        }
    }
}
