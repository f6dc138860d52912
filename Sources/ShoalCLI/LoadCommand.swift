import ArgumentParser
import Foundation
import ShoalHTTP
import ShoalRPC
import ShoalTensor
import Synchronization

/// `shoal load`: concurrent streaming clients against a running `shoal serve`, for the
/// batching benchmark: aggregate tokens/s, time to first token, and what the server's
/// metrics say each layer's fan-out cost meanwhile.
struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Measure a running shoal serve with concurrent streaming completions.",
        discussion: """
            For each count in --streams, that many clients each stream one completion of
            --max-tokens tokens at once (distinct prompts, greedy), --rounds times; reports the
            median over rounds of aggregate tokens/s (all streams' tokens over the round's wall
            time), per-stream decode tokens/s, time to first token, and the mean per-layer
            fan-out and worker-call time from the server's /metrics over the round.
            """)

    @Option(help: "The server's HTTP address.") var url = "http://127.0.0.1:8080"
    @Option(help: "Comma-separated numbers of concurrent streams.") var streams = "1,4,16"
    @Option(help: "Tokens each stream generates.") var maxTokens = 64
    @Option(help: "Words in each prompt.") var promptWords = 24
    @Option(help: "Rounds per stream count; medians are reported.") var rounds = 2

    func validate() throws {
        guard (try? parseCounts(streams)) != nil else { throw ValidationError("--streams must list positive integers") }
        guard maxTokens >= 1, promptWords >= 1, rounds >= 1 else {
            throw ValidationError("--max-tokens, --prompt-words and --rounds must be at least 1")
        }
        guard (try? endpoint()) != nil else { throw ValidationError("--url must be http://HOST:PORT") }
    }

    /// The server `--url` names: `http://` and an address `Endpoint` reads (a trailing `/` allowed).
    func endpoint() throws -> Endpoint {
        var address = Substring(url)
        guard address.hasPrefix("http://") else { throw ValidationError("bad --url") }
        address = address.dropFirst("http://".count)
        if address.hasSuffix("/") { address = address.dropLast() }
        guard let endpoint = Endpoint(String(address)), endpoint.isDialable else { throw ValidationError("bad --url") }
        return endpoint
    }

    func run() throws {
        try reportingErrors {
            let server = try endpoint()
            let load = LoadGenerator(host: server.host, port: server.port, maxTokens: maxTokens, promptWords: promptWords)
            try load.report(counts: try parseCounts(streams), rounds: rounds, print: { print($0) })
        }
    }
}

/// `"1,4,16"` → `[1, 4, 16]`.
func parseCounts(_ list: String) throws -> [Int] {
    let counts = list.split(separator: ",").compactMap { Int($0) }
    guard !counts.isEmpty, counts.count == list.split(separator: ",").count, counts.allSatisfy({ $0 >= 1 }) else {
        throw ValidationError("'\(list)' is not a list of positive integers")
    }
    return counts
}

/// Rounds of concurrent streaming completions against `shoal serve`'s HTTP API.
struct LoadGenerator {
    let host: String
    let port: Int
    let maxTokens: Int
    let promptWords: Int

    /// A table: one line per stream count, medians over `rounds`.
    func report(counts: [Int], rounds: Int, print: (String) -> Void) throws {
        print("streams  tokens/s  x-of-1  decode/stream  TTFT median  TTFT max  fan-out/layer  worker call")
        var single: Double?
        for n in counts {
            var results: [Round] = []
            for r in 0..<rounds { results.append(try round(n, seed: r)) }
            let tps = median(results.map(\.tokensPerSecond))
            single = single ?? (n == 1 ? tps : nil)
            let ratio = single.map { String(format: "%.2fx", tps / $0) } ?? "-"
            print(String(
                format: "%7d  %8.1f  %6@  %13.1f  %9.0f ms  %6.0f ms  %10.2f ms  %8.2f ms",
                n, tps, ratio, median(results.map(\.decodePerStream)), median(results.map(\.ttftMedian)) * 1000,
                median(results.map(\.ttftMax)) * 1000, median(results.map(\.fanOut)) * 1000,
                median(results.map(\.workerCall)) * 1000))
        }
    }

    /// One round's figures.
    struct Round {
        var tokensPerSecond: Double
        var decodePerStream: Double
        var ttftMedian: Double
        var ttftMax: Double
        var fanOut: Double  // mean seconds per layer fan-out, 0 without workers
        var workerCall: Double  // mean seconds per worker call
    }

    /// `n` streams at once; returns when all have ended.
    func round(_ n: Int, seed: Int) throws -> Round {
        let before = try scrape()
        let outcomes = Mutex<[StreamOutcome?]>(Array(repeating: nil, count: n))
        let group = DispatchGroup()
        let start = ContinuousClock.now
        for i in 0..<n {
            let words = (0..<promptWords).map { "w\((i * 7919 + seed * 104_729 + $0 * 31) % 997)" }
            let body: [String: Any] = [
                "prompt": "Stream \(i) of \(n): " + words.joined(separator: " "),
                "max_tokens": maxTokens, "temperature": 0, "stream": true,
                "stream_options": ["include_usage": true],
            ]
            let json = Array(try JSONSerialization.data(withJSONObject: body))
            group.enter()
            Thread.detachNewThread {
                let outcome = Self.stream(host: host, port: port, json: json, start: start)
                outcomes.withLock { $0[i] = outcome }
                group.leave()
            }
        }
        group.wait()
        let wall = (ContinuousClock.now - start).seconds
        let after = try scrape()
        let all = outcomes.withLock { $0 }.compactMap { $0 }
        if let failure = all.first(where: { $0.error != nil }) { throw UsageError.conflicting("a stream failed: \(failure.error!)") }
        let tokens = all.reduce(0) { $0 + $1.tokens }
        let ttft = all.map(\.firstToken).sorted()
        func mean(_ name: String) -> Double {
            let count = after["\(name)_count", default: 0] - before["\(name)_count", default: 0]
            return count > 0 ? (after["\(name)_sum", default: 0] - before["\(name)_sum", default: 0]) / count : 0
        }
        return Round(
            tokensPerSecond: Double(tokens) / wall,
            decodePerStream: median(all.map { Double(max($0.tokens - 1, 0)) / max($0.last - $0.firstToken, 1e-9) }),
            ttftMedian: median(ttft), ttftMax: ttft.last ?? 0,
            fanOut: mean("shoal_fanout_seconds"), workerCall: mean("shoal_worker_call_seconds"))
    }

    /// What one stream saw: tokens from the usage chunk, times since the round's start.
    struct StreamOutcome: Sendable {
        var tokens = 0
        var firstToken = 0.0
        var last = 0.0
        var error: String?
    }

    static func stream(host: String, port: Int, json: [UInt8], start: ContinuousClock.Instant) -> StreamOutcome {
        var outcome = StreamOutcome()
        var pending: [UInt8] = []
        do {
            let status = try HTTPClient.send(host: host, port: port, method: "POST", path: "/v1/completions", body: json) { data in
                pending += data
                while let end = pending.firstRange(of: [10, 10]) {
                    let event = String(decoding: pending[..<end.lowerBound], as: UTF8.self)
                    pending.removeSubrange(..<end.upperBound)
                    guard event.hasPrefix("data: {"),
                          let object = try? JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any]
                    else { continue }
                    let now = (ContinuousClock.now - start).seconds
                    if let usage = object["usage"] as? [String: Any], let n = usage["completion_tokens"] as? Int {
                        outcome.tokens = n
                    }
                    if let choices = object["choices"] as? [[String: Any]], let text = choices.first?["text"] as? String,
                       !text.isEmpty {
                        if outcome.firstToken == 0 { outcome.firstToken = now }
                        outcome.last = now
                    }
                }
            }
            if status != 200 { outcome.error = "HTTP \(status): \(String(decoding: pending, as: UTF8.self))" }
        } catch {
            outcome.error = "\(error)"
        }
        return outcome
    }

    /// Every un-labelled sample of the server's /metrics, and labelled ones summed by name.
    func scrape() throws -> [String: Double] {
        var text: [UInt8] = []
        _ = try HTTPClient.send(host: host, port: port, method: "GET", path: "/metrics", body: []) { text += $0 }
        var samples: [String: Double] = [:]
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let name = String(line[..<space].prefix { $0 != "{" })
            samples[name, default: 0] += value
        }
        return samples
    }
}
