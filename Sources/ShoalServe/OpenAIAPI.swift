import Foundation
import Logging
import ShoalHTTP
import ShoalModel

/// OpenAI's HTTP API over a `GenerationService`: chat and text completions, whole or streamed
/// as server-sent events, the model list, health and Prometheus metrics.
///
/// `handle` is an `HTTPServer` handler. It blocks its connection's thread while a completion
/// runs, and cancels the completion when the client goes away. Every error is answered in
/// OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
public final class OpenAIAPI: Sendable {
    private let service: any GenerationService
    private let modelName: String
    private let metricsText: @Sendable () -> String
    private let log: Logger?
    /// The model's `created` in /v1/models: when this API was made.
    private let created = Int(Date().timeIntervalSince1970)

    /// The API over `service`, naming the model `modelName` in every answer (whatever the
    /// request's `model`); `metricsText` renders /metrics.
    public init(service: any GenerationService, modelName: String,
                metricsText: @escaping @Sendable () -> String, log: Logger?) {
        self.service = service
        self.modelName = modelName
        self.metricsText = metricsText
        self.log = log
    }

    /// The method each path answers.
    private static let routes = [
        "/v1/chat/completions": "POST", "/v1/completions": "POST",
        "/v1/models": "GET", "/health": "GET", "/metrics": "GET",
    ]

    /// Answers `request`: `POST /v1/chat/completions`, `POST /v1/completions`,
    /// `GET /v1/models`, `GET /health`, `GET /metrics`; 404 for other paths, 405 for other methods.
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        guard let method = Self.routes[request.path] else {
            return reply(responder, APIError(status: 404, message: "Unknown path '\(request.path)'.", type: "invalid_request_error"))
        }
        guard request.method == method else {
            let error = APIError(status: 405, message: "Method \(request.method) is not allowed on \(request.path); use \(method).",
                                 type: "invalid_request_error")
            return reply(responder, error, headers: [("Allow", method)])
        }
        do {
            switch request.path {
            case "/v1/chat/completions": try chatCompletion(request, responder)
            case "/v1/completions": try textCompletion(request, responder)
            case "/v1/models": try models(responder)
            case "/health": try health(responder)
            default: try metrics(responder)
            }
        } catch let error as APIError {
            reply(responder, error)
        } catch {
            log?.debug("could not answer \(request.method) \(request.path): \(error)")
        }
    }

    private func chatCompletion(_ request: HTTPRequest, _ responder: HTTPResponder) throws(APIError) {
        let body = try decodeRequest(ChatCompletionRequest.self, from: request.body)
        let prompt: [Int]
        do {
            prompt = try service.tokenizer.encodeChat(body.messages)
        } catch {
            throw .invalid("\(error)", param: "messages")
        }
        try complete(.chat, prompt: prompt, options: body.options, responder)
    }

    private func textCompletion(_ request: HTTPRequest, _ responder: HTTPResponder) throws(APIError) {
        let body = try decodeRequest(TextCompletionRequest.self, from: request.body)
        try complete(.text, prompt: service.tokenizer.encode(body.prompt, bos: true), options: body.options, responder)
    }

    private func complete(_ kind: CompletionKind, prompt: [Int], options: CompletionOptions,
                          _ responder: HTTPResponder) throws(APIError) {
        // Without max_tokens, the service's default (at least 1, so that a prompt filling the
        // context gets the scheduler's overflow message).
        let maxTokens = options.maxTokens ?? service.defaultMaxTokens(promptTokens: prompt.count)
        let request = GenerationRequest(
            prompt: prompt,
            parameters: GenerationParameters(maxTokens: maxTokens, sampling: options.sampling, stop: options.stop))
        let id = kind.idPrefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let run = CompletionRun(kind: kind, id: id, created: Int(Date().timeIntervalSince1970), model: modelName,
                                options: options, responder: responder, log: log)
        try run.run(request, on: service)
    }

    private func models(_ responder: HTTPResponder) throws(HTTPError) {
        let model: [String: Any] = ["id": modelName, "object": "model", "created": created, "owned_by": "shoal"]
        try responder.respond(status: 200, json: ["object": "list", "data": [model]])
    }

    private func health(_ responder: HTTPResponder) throws(HTTPError) {
        if service.isReady {
            try responder.respond(status: 200, json: ["status": "ok"])
        } else {
            try responder.respond(status: 503, json: ["status": "unavailable", "message": "some experts have no live worker"])
        }
    }

    private func metrics(_ responder: HTTPResponder) throws(HTTPError) {
        try responder.respond(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                              body: Array(metricsText().utf8))
    }

    private func reply(_ responder: HTTPResponder, _ error: APIError, headers: [(String, String)] = []) {
        do {
            try responder.respond(status: error.status, json: error.json, headers: headers)
        } catch {
            log?.debug("could not send an error response: \(error)")
        }
    }
}
