import Foundation
import ShoalHTTP
import ShoalModel
@testable import ShoalServe
import ShoalTestSupport
import ShoalTokenizer
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The fixture tokenizer, loaded once for every API test.
let fixtureTokenizer = Result { try SentencePieceTokenizer(contentsOf: try FixtureFolder.path("tokenizer/tokenizer.model.v1")) }

/// A scheduler stand-in for the HTTP API: records requests and cancellations and sends
/// scripted events from its own thread, as the scheduler does.
final class ScriptedService: GenerationService {
    enum Script: Sendable {
        /// Sends these events at once.
        case events([GenerationEvent])
        /// Refuses the submission.
        case reject(SubmitError)
        /// Sends a "tick" delta every 10 ms until cancelled (20 s at most).
        case endless
        /// Sends nothing; the client must give up.
        case silent
        /// Sends these events after a pause.
        case delayed(Duration, [GenerationEvent])
    }

    let tokenizer: SentencePieceTokenizer
    let contextLimit = 512
    let isReady: Bool
    private let script: Script
    private let state = Mutex<(requests: [GenerationRequest], cancelled: Bool)>(([], false))

    init(_ script: Script, isReady: Bool = true) throws {
        tokenizer = try fixtureTokenizer.get()
        self.script = script
        self.isReady = isReady
    }

    var requests: [GenerationRequest] { state.withLock { $0.requests } }
    var cancelled: Bool { state.withLock { $0.cancelled } }

    func submit(_ request: GenerationRequest,
                onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws(SubmitError) -> any GenerationTicket {
        state.withLock { $0.requests.append(request) }
        switch script {
        case .reject(let error):
            throw error
        case .events(let events):
            Thread.detachNewThread { events.forEach(onEvent) }
        case .endless:
            Thread.detachNewThread { [self] in
                let end = ContinuousClock.now + .seconds(20)
                while !cancelled, ContinuousClock.now < end {
                    onEvent(.delta(ids: [100], text: "tick"))
                    usleep(10_000)
                }
            }
        case .silent:
            break
        case .delayed(let pause, let events):
            Thread.detachNewThread { [self] in
                let end = ContinuousClock.now + pause
                while !cancelled, ContinuousClock.now < end { usleep(5_000) }
                if !cancelled { events.forEach(onEvent) }
            }
        }
        return Ticket(service: self)
    }

    private struct Ticket: GenerationTicket {
        let service: ScriptedService
        func cancel() { service.state.withLock { $0.cancelled = true } }
    }

    /// Waits up to `limit` for a cancellation.
    func waitForCancel(upTo limit: Duration) -> Bool {
        let end = ContinuousClock.now + limit
        while !cancelled, ContinuousClock.now < end { usleep(5_000) }
        return cancelled
    }
}

/// A summary for scripted events.
func scriptedSummary(_ text: String, _ reason: FinishReason, prompt: Int = 7, completion: Int = 3) -> GenerationSummary {
    GenerationSummary(finishReason: reason, promptTokens: prompt, completionTokens: completion, text: text,
                      timeToFirstToken: nil)
}

/// Runs `body` with the API over `service` on a loopback HTTP server.
func withAPI<T>(_ service: ScriptedService, access: HTTPAccess = HTTPAccess(), surface: OpenAIAPI.Surface = .api,
                body: (Int) throws -> T) throws -> T {
    let api = OpenAIAPI(service: service, modelName: "tiny-mixtral", access: access, surface: surface,
                        metricsText: { "shoal_up 1\n" }, log: nil)
    let server = try HTTPServer.start(host: "127.0.0.1", port: 0) { request, responder in api.handle(request, responder) }
    defer { server.shutdown(grace: .zero) }
    return try body(server.port)
}

/// A response as the test client read it.
struct APIResponse {
    var status: Int
    /// Names lowercased.
    var headers: [String: String]
    var body: [UInt8]

    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
    var error: [String: Any] { json["error"] as? [String: Any] ?? [:] }

    /// The `data:` payloads of a server-sent event stream, in order.
    var events: [String] {
        String(decoding: body, as: UTF8.self).components(separatedBy: "\n\n")
            .filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
    }

    /// The events as JSON objects, `[DONE]` left out.
    var eventObjects: [[String: Any]] {
        events.filter { $0 != "[DONE]" }.map { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] ?? [:] }
    }
}

/// A blocking HTTP/1.1 client, one request per connection; reads give up after five seconds.
final class APIClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let fd: Int32
    private var received: [UInt8] = []
    private var closed = false

    init(port: Int) throws {
        fd = try connectToLoopback(port: port)
    }

    deinit { if !closed { Glibc.close(fd) } }

    /// One request and its whole response.
    static func request(port: Int, _ method: String, _ path: String, json: Any? = nil,
                        headers: [(String, String)] = [("Host", "test")]) throws -> APIResponse {
        let client = try APIClient(port: port)
        try client.send(method, path, body: try json.map { try JSONSerialization.data(withJSONObject: $0) }.map(Array.init) ?? [],
                        headers: headers)
        return try client.readResponse()
    }

    /// One request and its whole response, the body sent as is.
    static func request(port: Int, _ method: String, _ path: String, raw: String) throws -> APIResponse {
        let client = try APIClient(port: port)
        try client.send(method, path, body: Array(raw.utf8))
        return try client.readResponse()
    }

    /// Sends one request; `headers` replace the default `Host: test`.
    func send(_ method: String, _ path: String, body: [UInt8], headers: [(String, String)] = [("Host", "test")]) throws {
        let head = "\(method) \(path) HTTP/1.1\r\n" + headers.map { "\($0): \($1)\r\n" }.joined()
            + "Content-Type: application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        let bytes = Array(head.utf8) + body
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == bytes.count else { throw Failure(description: "send: errno \(errno)") }
    }

    /// Reads until `marker` has arrived.
    func read(until marker: String) throws {
        while received.firstRange(of: Array(marker.utf8)) == nil {
            guard try receive() else { throw Failure(description: "closed before '\(marker)'") }
        }
    }

    /// Closes the connection, as a client that gives up does (the server learns it when it
    /// next writes, from the reset its bytes draw).
    func hangUp() {
        Glibc.close(fd)
        closed = true
    }

    /// Resets the connection (SO_LINGER 0): gone at once, as a killed client.
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        hangUp()
    }

    /// Shuts down only the sending side, after a whole request: the answer must still come.
    func halfClose() { shutdown(fd, Int32(SHUT_WR)) }

    /// The response, read until the server closes.
    func readResponse() throws -> APIResponse {
        while try receive() {}
        guard let split = received.firstRange(of: Array("\r\n\r\n".utf8)) else { throw Failure(description: "no header end") }
        let lines = String(decoding: received[..<split.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Failure(description: "bad status line") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            let colon = line.firstIndex(of: ":")!
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let rest = Array(received[split.upperBound...])
        let body = headers["transfer-encoding"] == "chunked" ? try dechunk(rest) : rest
        return APIResponse(status: status, headers: headers, body: body)
    }

    private func receive() throws -> Bool {
        var scratch = [UInt8](repeating: 0, count: 16 << 10)
        let n = recv(fd, &scratch, scratch.count, 0)
        guard n >= 0 else { throw Failure(description: "recv: errno \(errno) (timed out?)") }
        received += scratch[..<n]
        return n > 0
    }

    private func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var body: [UInt8] = [], index = 0
        while let end = bytes[index...].firstRange(of: Array("\r\n".utf8)),
              let size = Int(String(decoding: bytes[index..<end.lowerBound], as: UTF8.self), radix: 16), size > 0 {
            guard end.upperBound + size + 2 <= bytes.count else { throw Failure(description: "truncated chunk") }
            body += bytes[end.upperBound..<(end.upperBound + size)]
            index = end.upperBound + size + 2
        }
        return body
    }
}
