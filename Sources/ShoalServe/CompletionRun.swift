import Foundation
import Logging
import ShoalHTTP

/// One chat or text completion being answered, on the connection's thread: submits it, then
/// writes the whole response when it ends, or streams it as server-sent events.
///
/// Either way the client is watched: a failed write, or `clientIsGone` while waiting,
/// cancels the sequence so that its batch slot and KV cache are freed.
struct CompletionRun {
    /// How often a waiting run checks that its client is still there.
    static let clientCheckInterval = Duration.milliseconds(50)

    let kind: CompletionKind
    let id: String
    let created: Int
    let model: String
    let options: CompletionOptions
    let responder: HTTPResponder
    let log: Logger?

    /// Submits `request` to `service` and answers until the sequence ends or the client leaves.
    /// - Throws: the `APIError` for a refused submission, before anything is written.
    func run(_ request: GenerationRequest, on service: any GenerationService) throws(APIError) {
        let events = EventQueue()
        let ticket: any GenerationTicket
        do {
            ticket = try service.submit(request) { events.push($0) }
        } catch {
            throw APIError(error)
        }
        if options.stream {
            stream(events, ticket)
        } else {
            answerWhole(events, ticket)
        }
    }

    private func answerWhole(_ events: EventQueue, _ ticket: any GenerationTicket) {
        forEachEvent(events, ticket) { event throws(HTTPError) in
            switch event {
            case .delta:
                return true
            case .finished(let summary):
                logEnd(summary)
                let body: [String: Any] = [
                    "id": id, "object": kind.object.whole, "created": created, "model": model,
                    "choices": [kind.choice(text: summary.text, finishReason: summary.finishReason)],
                    "usage": usage(summary),
                ]
                try responder.respond(status: 200, json: body)
                return false
            case .failed(let message):
                let error = failure(message)
                try responder.respond(status: error.status, json: error.json)
                return false
            }
        }
    }

    private func stream(_ events: EventQueue, _ ticket: any GenerationTicket) {
        do {
            try responder.startStream(status: 200, headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            if kind == .chat { try send(chunk([kind.chunkChoice(text: "", first: true)])) }
        } catch {
            return abandon(ticket, error)
        }
        forEachEvent(events, ticket) { event throws(HTTPError) in
            switch event {
            case .delta(_, let text):
                if !text.isEmpty { try send(chunk([kind.chunkChoice(text: text)])) }
                return true
            case .finished(let summary):
                logEnd(summary)
                try send(chunk([kind.chunkChoice(text: "", finishReason: summary.finishReason)]))
                if options.includeUsage { try send(chunk([], usage: usage(summary))) }
                try responder.write(Array("data: [DONE]\n\n".utf8))
                try responder.finishStream()
                return false
            case .failed(let message):
                // Headers are sent: the error goes as an event (OpenAI's clients raise it).
                try send(failure(message).json)
                try responder.finishStream()
                return false
            }
        }
    }

    /// Hands each event to `body` until it returns false (the sequence ended); cancels the
    /// sequence when a write fails or the client goes away first.
    private func forEachEvent(_ events: EventQueue, _ ticket: any GenerationTicket,
                              _ body: (GenerationEvent) throws(HTTPError) -> Bool) {
        var lastCheck = ContinuousClock.now
        while true {
            for event in events.take(waitingUpTo: Self.clientCheckInterval) {
                do {
                    guard try body(event) else { return }
                } catch {
                    return abandon(ticket, error)
                }
            }
            // Checked on a clock, not only when idle: deltas may keep arriving for minutes.
            if ContinuousClock.now - lastCheck >= Self.clientCheckInterval {
                if responder.clientIsGone { return abandon(ticket, .clientGone) }
                lastCheck = .now
            }
        }
    }

    private func abandon(_ ticket: any GenerationTicket, _ error: HTTPError) {
        ticket.cancel()
        log?.debug("\(id) cancelled: \(error)")
    }

    private func failure(_ message: String) -> APIError {
        log?.warning("\(id) failed: \(message)")
        return APIError(status: 503, message: message, type: "server_error")
    }

    private func logEnd(_ summary: GenerationSummary) {
        log?.debug("\(id) finished (\(summary.finishReason.rawValue)): \(summary.promptTokens) prompt and \(summary.completionTokens) completion tokens")
    }

    /// A streamed chunk; with `include_usage`, every chunk has `usage`, null but in the last.
    private func chunk(_ choices: [[String: Any]], usage: [String: Any]? = nil) -> [String: Any] {
        var chunk: [String: Any] = ["id": id, "object": kind.object.chunk, "created": created, "model": model, "choices": choices]
        if options.includeUsage { chunk["usage"] = usage ?? NSNull() }
        return chunk
    }

    /// One server-sent event.
    private func send(_ object: [String: Any]) throws(HTTPError) {
        try responder.write(Array("data: ".utf8) + jsonBytes(object) + Array("\n\n".utf8))
    }
}

extension HTTPResponder {
    /// A whole JSON response.
    func respond(status: Int, json: [String: Any], headers: [(String, String)] = []) throws(HTTPError) {
        try respond(status: status, headers: [("Content-Type", "application/json")] + headers, body: jsonBytes(json))
    }
}
