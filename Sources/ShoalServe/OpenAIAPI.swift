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
    /// What a listener serves: the whole API, or only /metrics and /health (a separate,
    /// keyless listener for scrapers and probes).
    public enum Surface: Sendable { case api, metricsOnly }

    private let service: any GenerationService
    private let modelName: String
    private let metricsText: @Sendable () -> String
    /// The cluster's status as JSON (`GET /v1/cluster`); nil: experts are in this process.
    private let clusterJSON: (@Sendable () -> Data)?
    private let access: HTTPAccess
    private let surface: Surface
    private let log: Logger?
    /// The model's `created` in /v1/models: when this API was made.
    private let created = Int(Date().timeIntervalSince1970)

    /// The API over `service` as the model `modelName` (a request naming another model gets
    /// 404); `metricsText` renders /metrics; `access` says who may call it.
    public init(service: any GenerationService, modelName: String, access: HTTPAccess = HTTPAccess(),
                surface: Surface = .api, metricsText: @escaping @Sendable () -> String,
                clusterJSON: (@Sendable () -> Data)? = nil, log: Logger?) {
        self.clusterJSON = clusterJSON
        self.service = service
        self.modelName = modelName
        self.access = access
        self.surface = surface
        self.metricsText = metricsText
        self.log = log
    }

    /// The method each path answers.
    private static let routes = [
        "/v1/chat/completions": "POST", "/v1/completions": "POST",
        "/v1/models": "GET", "/health": "GET", "/metrics": "GET", "/v1/cluster": "GET", "/": "GET",
    ]

    /// Answers `request`: `POST /v1/chat/completions`, `POST /v1/completions`,
    /// `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /v1/cluster` (the workers and the
    /// placement; 404 when experts are in this process), `GET /` (the web console, `WebConsole`:
    /// a static page, served without a key like /health; what it shows it fetches with the key
    /// the user gives it); 404 for other paths, 405 for other methods.
    /// Before any of that: the `Host` must be one this server answers to (403), a browser
    /// page of another origin must be allowed (403; CORS preflights are answered), and with
    /// API keys every path but /health needs `Authorization: Bearer KEY` (401).
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let host = request.header("host")
        if let allowed = access.allowedHosts {
            guard let host, allowed.contains(HTTPAccess.hostName(host)) else {
                return reply(responder, APIError(
                    status: 403, message: "Host '\(host ?? "")' is not one this server answers to (shoal serve --allowed-hosts).",
                    type: "invalid_request_error", code: "host_not_allowed"))
            }
        }
        let origin = request.header("origin")
        if let origin, !access.allows(origin: origin, host: host) {
            return reply(responder, APIError(
                status: 403, message: "Requests from web pages of \(origin) are not allowed (shoal serve --cors-origin).",
                type: "invalid_request_error", code: "origin_not_allowed"))
        }
        responder.commonHeaders = access.corsHeaders(origin: origin)
        if request.method == "OPTIONS", origin != nil, Self.routes[request.path] != nil {
            // A CORS preflight from an allowed origin.
            try? responder.respond(status: 204, headers: [
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                ("Access-Control-Max-Age", "600"),
            ], body: [])
            return
        }
        guard let method = Self.routes[request.path],
              surface == .api || request.path == "/metrics" || request.path == "/health" else {
            return reply(responder, APIError(status: 404, message: "Unknown path '\(request.path)'.", type: "invalid_request_error"))
        }
        guard request.method == method else {
            let error = APIError(status: 405, message: "Method \(request.method) is not allowed on \(request.path); use \(method).",
                                 type: "invalid_request_error")
            return reply(responder, error, headers: [("Allow", method)])
        }
        var client = request.peer
        if let keys = access.keys, surface == .api, request.path != "/health", request.path != "/" {
            guard let token = bearerToken(request.header("authorization")), let known = keys.client(presenting: token) else {
                let error = APIError(
                    status: 401,
                    message: "Incorrect or missing API key: send the header Authorization: Bearer KEY with a key this server was given.",
                    type: "invalid_request_error", code: "invalid_api_key")
                return reply(responder, error, headers: [("WWW-Authenticate", "Bearer")])
            }
            client = known
        }
        do {
            switch request.path {
            case "/v1/chat/completions": try chatCompletion(request, client: client, responder)
            case "/v1/completions": try textCompletion(request, client: client, responder)
            case "/v1/models": try models(responder)
            case "/health": try health(responder)
            case "/": try responder.respond(status: 200, headers: WebConsole.headers, body: WebConsole.page)
            case "/v1/cluster":
                guard let clusterJSON else {
                    throw APIError(status: 404, message: "This server computes every expert itself: it has no cluster.",
                                   type: "invalid_request_error")
                }
                try responder.respond(status: 200, headers: [("Content-Type", "application/json")], body: Array(clusterJSON()))
            default: try metrics(responder)
            }
        } catch let error as APIError {
            reply(responder, error)
        } catch {
            log?.debug("could not answer \(request.method) \(request.path): \(error)")
        }
    }

    private func chatCompletion(_ request: HTTPRequest, client: String, _ responder: HTTPResponder) throws(APIError) {
        let body = try decodeRequest(ChatCompletionRequest.self, from: request.body)
        try checkModel(body.options.model)
        try checkLength(body.messages.reduce(0) { $0 + $1.content.utf8.count }, "messages")
        let prompt: [Int]
        do {
            prompt = try service.tokenizer.encodeChat(body.messages)
        } catch {
            throw .invalid("\(error)", param: "messages")
        }
        try complete(.chat, prompt: prompt, options: body.options, client: client, responder)
    }

    private func textCompletion(_ request: HTTPRequest, client: String, _ responder: HTTPResponder) throws(APIError) {
        let body = try decodeRequest(TextCompletionRequest.self, from: request.body)
        try checkModel(body.options.model)
        try checkLength(body.prompt.utf8.count, "prompt")
        try complete(.text, prompt: service.tokenizer.encode(body.prompt, bos: true), options: body.options,
                     client: client, responder)
    }

    /// A request naming another model than this server's gets 404, as OpenAI answers.
    private func checkModel(_ model: String?) throws(APIError) {
        guard let model, model != modelName else { return }
        throw APIError(status: 404, message: "The model '\(model)' does not exist; this server serves '\(modelName)' (GET /v1/models).",
                       type: "invalid_request_error", param: "model", code: "model_not_found")
    }

    /// Refuses prompt text longer than the service tokenizes.
    private func checkLength(_ bytes: Int, _ param: String) throws(APIError) {
        guard bytes <= service.maxPromptBytes else {
            throw .invalid("The prompt is \(bytes) bytes of text, more than the \(service.maxPromptBytes) this server tokenizes for one request.",
                           param: param, code: "context_length_exceeded")
        }
    }

    private func complete(_ kind: CompletionKind, prompt: [Int], options: CompletionOptions, client: String,
                          _ responder: HTTPResponder) throws(APIError) {
        // Without max_tokens, the service's default (at least 1, so that a prompt filling the
        // context gets the scheduler's overflow message).
        let maxTokens = options.maxTokens ?? service.defaultMaxTokens(promptTokens: prompt.count)
        let request = GenerationRequest(
            prompt: prompt,
            parameters: GenerationParameters(maxTokens: maxTokens, sampling: options.sampling, stop: options.stop),
            client: client)
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
