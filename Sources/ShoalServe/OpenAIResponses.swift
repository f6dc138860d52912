import Foundation
import ShoalModel

// The JSON bodies of OpenAI's API (platform.openai.com/docs/api-reference), built as
// dictionaries so that each shape reads as it is documented, explicit nulls included.

/// An error the API answers with: `{"error": {"message", "type", "param", "code"}}`.
struct APIError: Error {
    var status: Int
    var message: String
    /// `invalid_request_error` or `server_error`.
    var type: String
    /// The request field at fault, as OpenAI names it (`messages[1].content`).
    var param: String?
    var code: String?

    /// A 400 for a request that cannot be served as sent.
    static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }

    /// A 400 for a field whose JSON type is wrong.
    static func wrongType(_ param: String, expected: String) -> APIError {
        invalid("Invalid type for '\(param)': expected \(expected).", param: param)
    }

    /// A 400 for a field whose value is out of range.
    static func wrongValue(_ param: String, _ why: String) -> APIError {
        invalid("Invalid value for '\(param)': \(why).", param: param)
    }

    /// A 400 for a field asking for something this server does not do.
    static func unsupported(_ param: String) -> APIError {
        invalid("'\(param)' is not supported by this server; remove it from the request.", param: param,
                code: "unsupported_parameter")
    }

    /// The answer to a submission the scheduler refused, with the status it names.
    init(_ error: SubmitError) {
        let code: String? = switch error {
        case .contextOverflow, .exceedsCacheCapacity, .exceedsRequestLimit: "context_length_exceeded"
        case .queueFull: "rate_limit_exceeded"
        case .invalidPrompt, .shuttingDown: nil
        }
        self.init(status: error.status, message: error.description,
                  type: error.status < 500 && error.status != 429 ? "invalid_request_error" : "server_error", code: code)
    }

    init(status: Int, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
    }
}

/// What differs between `/v1/chat/completions` and `/v1/completions` in the answers.
enum CompletionKind {
    case chat
    case text

    var idPrefix: String { self == .chat ? "chatcmpl-" : "cmpl-" }

    /// A whole response's choice.
    func choice(text: String, finishReason: FinishReason) -> [String: Any] {
        switch self {
        case .chat:
            ["index": 0, "message": ["role": "assistant", "content": text], "finish_reason": finishReason.openAI,
             "logprobs": NSNull()]
        case .text:
            ["index": 0, "text": text, "finish_reason": finishReason.openAI, "logprobs": NSNull()]
        }
    }

    /// A streamed chunk's choice: the first one of a chat carries the role, the last one
    /// the finish reason and no text.
    func chunkChoice(text: String, first: Bool = false, finishReason: FinishReason? = nil) -> [String: Any] {
        let reason: Any = finishReason?.openAI ?? NSNull()
        switch self {
        case .chat:
            var delta: [String: Any] = finishReason == nil ? ["content": text] : [:]
            if first { delta["role"] = "assistant" }
            return ["index": 0, "delta": delta, "finish_reason": reason, "logprobs": NSNull()]
        case .text:
            return ["index": 0, "text": text, "finish_reason": reason, "logprobs": NSNull()]
        }
    }

    /// The `object` of a whole response and of a streamed chunk.
    var object: (whole: String, chunk: String) {
        self == .chat ? ("chat.completion", "chat.completion.chunk") : ("text_completion", "text_completion")
    }
}

extension FinishReason {
    /// OpenAI's `finish_reason`: the end-of-sequence token and a stop string are both `stop`.
    var openAI: String { self == .length ? "length" : "stop" }
}

/// `usage` of a finished generation.
func usage(_ summary: GenerationSummary) -> [String: Any] {
    ["prompt_tokens": summary.promptTokens, "completion_tokens": summary.completionTokens,
     "total_tokens": summary.promptTokens + summary.completionTokens]
}

/// UTF-8 JSON of `object`, slashes unescaped.
func jsonBytes(_ object: [String: Any]) -> [UInt8] {
    // Only strings, numbers, NSNull, arrays and dictionaries go in, so serialization cannot fail.
    [UInt8](try! JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes]))
}
