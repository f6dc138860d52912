import Foundation
import ShoalRPC
import Synchronization

/// Method names the test servers serve.
enum Method {
    static let echo = "/shoal.test.Echo/Unary"
    static let slow = "/shoal.test.Echo/Slow"
    static let fail = "/shoal.test.Echo/Fail"
    static let crash = "/shoal.test.Echo/Throw"
    static let count = "/shoal.test.Echo/Count"
    static let exchange = "/shoal.test.Echo/Exchange"
}

/// A flag a handler sets and a test reads.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }

    /// Waits up to `limit` for the flag; returns whether it was set.
    func wait(upTo limit: Duration) async -> Bool {
        let end = ContinuousClock.now + limit
        while !isSet, ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(5)) }
        return isSet
    }
}

struct Boom: Error, CustomStringConvertible {
    var description: String { "boom" }
}

/// The echo handler: returns the request itself (the same slice, no copy).
let echo: RPCServer.UnaryHandler = { request, _ in request }

/// Streams `n` messages, each the UInt32 index, where `n` is the request's first 4 bytes.
let counter: RPCServer.StreamingHandler = { request, _, writer in
    let n = request.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
    for i in 0..<n { try await writer.send(payload(i)) }
}

func payload(_ value: UInt32) -> RPCPayload {
    RPCPayload(count: 4) { $0.storeBytes(of: value, as: UInt32.self) }
}

func uint32(_ payload: RPCPayload) -> UInt32 {
    payload.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
}

/// `count` bytes of a pattern that differs at every offset (cheap even for 64 MiB in debug).
func patterned(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> RPCPayload {
    RPCPayload(count: count) { bytes in
        let words = count / 8
        let wordBuffer = bytes.baseAddress!.bindMemory(to: UInt64.self, capacity: words)
        for i in 0..<words { wordBuffer[i] = (UInt64(i) &+ 1) &* seed }
        for i in (words * 8)..<count { bytes[i] = UInt8(truncatingIfNeeded: i &* 31) }
    }
}

func sameBytes(_ a: RPCPayload, _ b: RPCPayload) -> Bool {
    a.count == b.count && a.withUnsafeBytes { a in
        b.withUnsafeBytes { b in a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 }
    }
}

/// A server with all the test methods.
func withTestServer<T>(
    maxReceiveBytes: Int = 64 << 20,
    extra: [String: RPCServer.UnaryHandler] = [:],
    _ body: (RPCServer, RPCChannel) async throws -> T
) async throws -> T {
    var unary: [String: RPCServer.UnaryHandler] = [
        Method.echo: echo,
        Method.slow: { request, _ in
            try await Task.sleep(for: .seconds(5))
            return request
        },
        Method.fail: { _, _ in throw RPCStatus(code: .invalidArgument, message: "layer 99 out of range") },
        Method.crash: { _, _ in throw Boom() },
    ]
    unary.merge(extra) { $1 }
    return try await RPCServer.withServer(
        listen: "127.0.0.1:0", maxReceiveBytes: maxReceiveBytes,
        unary: unary, serverStreaming: [Method.count: counter]
    ) { server in
        let channel = RPCChannel(target: "127.0.0.1:\(server.port)")
        defer { channel.close() }
        return try await body(server, channel)
    }
}

/// The status a throwing call ended with, or nil if it succeeded.
func status<T>(of call: () async throws -> T) async -> RPCStatus? {
    do {
        _ = try await call()
        return nil
    } catch let status as RPCStatus {
        return status
    } catch {
        return RPCStatus(code: .unknown, message: "not an RPCStatus: \(error)")
    }
}
