import Foundation
import ShoalCluster
import ShoalModel
import ShoalServe
import ShoalTestSupport
import Testing

/// Eight streaming requests at once against a coordinator whose experts are on two workers:
/// each stream must carry exactly what the same request gives when it runs alone.
@Suite(.serialized) struct ConcurrentStreamsTests {
    /// Chat and completions, greedy and seeded sampling, different lengths.
    static func bodies() throws -> [(path: String, json: Data)] {
        try (0..<8).map { i in try (path(i), JSONSerialization.data(withJSONObject: body(i))) }
    }

    static func path(_ i: Int) -> String { i % 3 == 0 ? "/v1/chat/completions" : "/v1/completions" }

    static func body(_ i: Int) -> [String: Any] {
        var body: [String: Any] = ["max_tokens": 6 + 2 * i, "stream": true]  // ≥ 6 tokens: several pieces
        if i % 2 == 0 {
            body["temperature"] = 0
        } else {
            body["temperature"] = 0.8
            body["top_p"] = 0.9
            body["seed"] = 100 + i
        }
        if i % 3 == 0 {
            body["messages"] = [["role": "user", "content": "Tell me about sea number \(i)."]]
        } else {
            body["prompt"] = String(repeating: "The shoal swims ", count: i + 1)
        }
        return body
    }

    @Test func eightStreamsEqualEachAlone() async throws {
        let folder = try FixtureFolder.path("models/tiny-bf16/hf")
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7"])
        let addresses = cluster.addresses
        let server = try await offPool {
            var options = RemoteExperts.Options()
            options.wireDType = .f32
            options.timeout = .seconds(20)
            let engine = try Engine(folder: folder, threads: 1) { checkpoint, _ in
                try RemoteExperts(checkpoint: checkpoint, workers: addresses, options: options)
            }
            var serveOptions = PromptServer.Options()
            serveOptions.http = "127.0.0.1:0"
            serveOptions.grpc = nil
            serveOptions.scheduler.stepTokens = 16  // prompts in chunks, between decode steps
            return try PromptServer(engine: engine, options: serveOptions)
        }
        let port = try #require(server.httpPort)

        let bodies = try Self.bodies()
        let metrics = server.metrics
        let results = try await offPool {
            // Alone: one after the other.
            let alone = try bodies.map { try SSEClient.stream(port: port, path: $0.path, json: $0.json) }
            let stepsAlone = Self.steps(metrics.render())
            // Together: all eight at once, each from its own thread.
            let together = Locked(Array(repeating: Result<StreamResult, Error>.failure(SSEClient.Failure("not run")), count: 8))
            let group = DispatchGroup()
            for (i, request) in bodies.enumerated() {
                group.enter()
                Thread.detachNewThread {
                    let result = Result { try SSEClient.stream(port: port, path: request.path, json: request.json) }
                    together.update { $0[i] = result }
                    group.leave()
                }
            }
            _ = group.wait(timeout: .now() + 120)
            return (alone, together.value, stepsAlone, Self.steps(metrics.render()) - stepsAlone)
        }
        try await offPool { server.shutdown(grace: .zero) }
        await cluster.stop()

        let (alone, together, stepsAlone, stepsTogether) = results
        // Together the sequences shared steps: far fewer forward passes than one at a time.
        #expect(stepsTogether > 0 && stepsTogether * 2 < stepsAlone, "\(stepsTogether) steps together, \(stepsAlone) alone")
        for i in 0..<8 {
            let single = alone[i]
            let batched = try together[i].get()
            #expect(single.pieces.count > 1, "request \(i) streamed in pieces")
            #expect(batched.text == single.text, "request \(i): \(batched.text) vs \(single.text)")
            #expect(batched.finishReason == single.finishReason && single.finishReason != nil)
            #expect(batched.sawDone && single.sawDone)
        }
        let text = metrics.render()
        #expect(text.contains("shoal_requests_total{outcome=\"completed\"} 16"))
        #expect(text.contains("shoal_worker_call_seconds_count{worker=\"\(cluster.addresses[0])\"}"))
    }

    /// Forward passes so far, from the metrics text.
    static func steps(_ metrics: String) -> Int {
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("shoal_step_seconds_count") }
        return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
    }
}

/// What one streamed completion carried.
struct StreamResult: Sendable {
    var pieces: [String] = []
    var finishReason: String?
    var sawDone = false
    var text: String { pieces.joined() }
}

/// A minimal blocking HTTP/1.1 client for server-sent events: one request per connection
/// (`Connection: close`), chunked body decoded, `data:` lines parsed as OpenAI chunks.
enum SSEClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func stream(port: Int, path: String, json: Data) throws -> StreamResult {
        let head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(json.count)\r\nConnection: close\r\n\r\n"
        let raw = try exchange(port: port, Array(head.utf8) + Array(json))
        guard let split = raw.firstRange(of: Array("\r\n\r\n".utf8)) else { throw Failure("no header end") }
        let headers = String(decoding: raw[..<split.lowerBound], as: UTF8.self)
        guard headers.hasPrefix("HTTP/1.1 200") else { throw Failure("status: \(headers)") }
        let payload = headers.lowercased().contains("transfer-encoding: chunked")
            ? try dechunk(Array(raw[split.upperBound...])) : Array(raw[split.upperBound...])
        var result = StreamResult()
        for line in String(decoding: payload, as: UTF8.self).split(separator: "\n") where line.hasPrefix("data: ") {
            let data = line.dropFirst(6)
            if data == "[DONE]" { result.sawDone = true; continue }
            let chunk = try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any]
            guard let choices = chunk?["choices"] as? [[String: Any]] else { throw Failure("bad chunk \(data)") }
            for choice in choices {
                let delta = choice["delta"] as? [String: Any]
                if let piece = (delta?["content"] ?? choice["text"]) as? String, !piece.isEmpty { result.pieces.append(piece) }
                if let reason = choice["finish_reason"] as? String { result.finishReason = reason }
            }
        }
        return result
    }

    /// Sends `request`, returns every byte until the server closes (60 s at most).
    static func exchange(port: Int, _ request: [UInt8]) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw Failure("connect: errno \(errno)") }
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            throw Failure("send")
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return response }
            guard n > 0 else { throw Failure("recv: errno \(errno) after \(response.count) bytes") }
            response += buffer[0..<n]
        }
    }

    /// The body of a chunked transfer.
    static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = [], i = 0
        while true {
            guard let end = bytes[i...].firstRange(of: Array("\r\n".utf8)),
                  let size = Int(String(decoding: bytes[i..<end.lowerBound], as: UTF8.self)
                      .split(separator: ";")[0], radix: 16) else { throw Failure("bad chunk size") }
            if size == 0 { return out }
            let start = end.upperBound
            guard start + size + 2 <= bytes.count else { throw Failure("truncated chunk") }
            out += bytes[start..<start + size]
            i = start + size + 2
        }
    }
}

/// A value shared between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value { lock.withLock { stored } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}
