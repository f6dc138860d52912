import Foundation
import ShoalCluster
import ShoalHTTP
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
            let (engine, _) = try remoteEngine(folder: folder, workers: addresses, timeout: .seconds(20))
            var serveOptions = PromptServer.Options()
            serveOptions.http = "127.0.0.1:0"
            serveOptions.grpc = nil
            serveOptions.scheduler.stepTokens = 16  // prompts in chunks, between decode steps
            return try PromptServer(engine: engine, cluster: engine.model.experts as? RemoteExperts, options: serveOptions)
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

/// Streams one completion through `HTTPClient` and parses its server-sent events.
enum SSEClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func stream(port: Int, path: String, json: Data) throws -> StreamResult {
        var body: [UInt8] = []
        let status = try HTTPClient.send(host: "127.0.0.1", port: port, method: "POST", path: path, body: Array(json),
                                         timeoutSeconds: 60) { body += $0 }
        guard status == 200 else { throw Failure("status \(status): \(String(decoding: body, as: UTF8.self))") }
        var result = StreamResult()
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n") where line.hasPrefix("data: ") {
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
}

/// A value shared between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value { lock.withLock { stored } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}
