import Foundation
import Synchronization
import ShoalRPC
import Testing

/// Exchange streams: one long-lived bidirectional stream, one response per request, completing
/// on an `RPCCallerQueue` (what the coordinator's fan-out uses for Compute).
@Suite(.timeLimit(.minutes(1)))
struct ExchangeTests {
    static let echo = "/shoal.test.Exchange/Echo"
    static let slow = "/shoal.test.Exchange/Slow"

    /// Echoes the request, except that the 3 bytes `refused` are refused with
    /// INVALID_ARGUMENT, as a worker refuses a bad Compute.
    static let refused = RPCPayload([0xFF, 1, 2])
    static let echoOrRefuse: RPCServer.ExchangeHandler = { request, _ in
        if sameBytes(request, refused) {
            throw RPCStatus(code: .invalidArgument, message: "layer 99 out of range")
        }
        return request
    }

    @Test func exchangesOnOneStreamAreByteExact() async throws {
        try await withExchangeServer { _, channel, queue in
            let stream = channel.openExchange(Self.echo, on: queue)
            for size in [1, 23, 24, 8 << 10, 1 << 20, 8 << 20] + Array(repeating: 4 << 10, count: 200) {
                let request = patterned(size, seed: UInt64(size) | 1)
                let answer = try exchange(stream, request, on: queue).get()
                #expect(sameBytes(request, answer), "size \(size)")
            }
            #expect(!stream.hasEnded)
        }
    }

    @Test func severalStreamsAtOnceGetTheirOwnAnswers() async throws {
        try await withExchangeServer { _, channel, queue in
            let streams = (0..<8).map { _ in channel.openExchange(Self.echo, on: queue) }
            for round in 0..<50 {
                let requests = streams.indices.map { patterned(2048 + $0, seed: UInt64(round * 8 + $0) * 2 + 1) }
                let answers = Mutex<[Int: Result<RPCPayload, Error>]>([:])
                for (i, stream) in streams.enumerated() {
                    stream.exchange(requests[i]) { result in answers.withLock { $0[i] = result } }
                }
                #expect(queue.run(until: { answers.withLock { $0.count } == streams.count }, deadline: .now + .seconds(10)))
                for i in streams.indices {
                    let answer = try answers.withLock { $0[i] }!.get()
                    #expect(sameBytes(requests[i], answer), "round \(round), stream \(i)")
                }
            }
        }
    }

    /// A refused request ends its stream with the handler's status; the ended stream fails
    /// at once after that, and a new stream on the same channel works.
    @Test func aRefusalEndsTheStreamAndANewOneWorks() async throws {
        try await withExchangeServer { _, channel, queue in
            let stream = channel.openExchange(Self.echo, on: queue)
            let good = patterned(64)
            let echoedStream = try exchange(stream, good, on: queue).get()
            #expect(sameBytes(good, echoedStream))
            let refusal = failure(exchange(stream, Self.refused, on: queue))
            #expect(refusal?.code == .invalidArgument && refusal?.message == "layer 99 out of range")
            #expect(stream.hasEnded)
            #expect(failure(exchange(stream, good, on: queue))?.code == .invalidArgument)
            let fresh = channel.openExchange(Self.echo, on: queue)
            let echoedFresh = try exchange(fresh, good, on: queue).get()
            #expect(sameBytes(good, echoedFresh))
        }
    }

    /// A caller that stops waiting cancels the stream with its own reason.
    @Test func aLateAnswerFailsWithTheCallersReason() async throws {
        try await withExchangeServer { _, channel, queue in
            let stream = channel.openExchange(Self.slow, on: queue)
            let done = Mutex<Result<RPCPayload, Error>?>(nil)
            let start = ContinuousClock.now
            stream.exchange(patterned(16)) { result in done.withLock { $0 = result } }
            #expect(!queue.run(until: { done.withLock { $0 != nil } }, deadline: .now + .milliseconds(50)))
            stream.cancel(RPCStatus(code: .deadlineExceeded, message: "no answer within 50 ms"))
            queue.run { done.withLock { $0 != nil } }
            #expect(failure(done.withLock { $0 }!)?.code == .deadlineExceeded)
            #expect(ContinuousClock.now - start < .seconds(1))
            #expect(stream.hasEnded)
        }
    }

    /// Streams stay open between requests; a server shutting down ends the idle ones at once
    /// instead of waiting out its grace, and their next exchange fails with UNAVAILABLE.
    @Test func shutdownEndsIdleStreamsWithoutWaitingForTheGrace() async throws {
        let queue = RPCCallerQueue()
        let server = try RPCServer.start(listen: "127.0.0.1:0", exchange: [Self.echo: Self.echoOrRefuse])
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        let stream = channel.openExchange(Self.echo, on: queue)
        let request = patterned(256)
        let echoedStream = try exchange(stream, request, on: queue).get()
        #expect(sameBytes(request, echoedStream))
        let start = ContinuousClock.now
        await server.shutdown(grace: .seconds(20))
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(failure(exchange(stream, request, on: queue))?.code == .unavailable)
        channel.close()
        withExtendedLifetime(queue) {}
    }

    /// A stream to a method the server does not serve (a worker of an older protocol, say)
    /// fails its first exchange with UNIMPLEMENTED naming the method.
    @Test func unknownMethodIsUnimplemented() async throws {
        try await withExchangeServer { _, channel, queue in
            let stream = channel.openExchange("/shoal.test.Exchange/Missing", on: queue)
            let refusal = failure(exchange(stream, patterned(8), on: queue))
            #expect(refusal?.code == .unimplemented && refusal?.message.contains("Missing") == true,
                    "\(String(describing: refusal))")
            #expect(stream.hasEnded)
        }
    }

    @Test func closedChannelAndVanishedServerAreUnavailable() async throws {
        let queue = RPCCallerQueue()
        let closed = RPCChannel(target: "127.0.0.1:1")
        closed.close()
        #expect(failure(exchange(closed.openExchange(Self.echo, on: queue), patterned(8), on: queue))?.code == .unavailable)
        let server = try RPCServer.start(listen: "127.0.0.1:0", exchange: [Self.echo: Self.echoOrRefuse])
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        let stream = channel.openExchange(Self.echo, on: queue)
        #expect(throws: Never.self) { try exchange(stream, patterned(8), on: queue).get() }
        await server.shutdown(grace: .zero)
        // With no grace the core's cancellation can overtake the shutdown's UNAVAILABLE.
        let vanished = failure(exchange(stream, patterned(8), on: queue))?.code
        #expect(vanished == .unavailable || vanished == .cancelled)
        channel.close()
        withExtendedLifetime(queue) {}
    }
}

/// A server with the exchange methods and a channel and queue for it; the channel is closed
/// (ending its streams) before the queue is released.
private func withExchangeServer(_ body: (RPCServer, RPCChannel, RPCCallerQueue) async throws -> Void) async throws {
    let queue = RPCCallerQueue()
    try await RPCServer.withServer(exchange: [
        ExchangeTests.echo: ExchangeTests.echoOrRefuse,
        ExchangeTests.slow: { request, _ in
            Thread.sleep(forTimeInterval: 0.3)
            return request
        },
    ]) { server in
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        defer { channel.close() }
        try await body(server, channel, queue)
    }
    withExtendedLifetime(queue) {}
}

/// One exchange, waited for on `queue` (10 s at most).
private func exchange(_ stream: RPCExchange, _ request: RPCPayload, on queue: RPCCallerQueue) -> Result<RPCPayload, Error> {
    let result = Mutex<Result<RPCPayload, Error>?>(nil)
    stream.exchange(request) { answer in result.withLock { $0 = answer } }
    _ = queue.run(until: { result.withLock { $0 != nil } }, deadline: .now + .seconds(10))
    return result.withLock { $0 } ?? .failure(RPCStatus(code: .deadlineExceeded, message: "test waited 10 s"))
}

/// The status a result failed with, or nil if it succeeded.
private func failure(_ result: Result<RPCPayload, Error>) -> RPCStatus? {
    guard case .failure(let error) = result else { return nil }
    return error as? RPCStatus ?? RPCStatus(code: .unknown, message: "not an RPCStatus: \(error)")
}
