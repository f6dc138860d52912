import Foundation
import ShoalModel
import ShoalTokenizer

// The request bodies of /v1/chat/completions and /v1/completions. Unknown fields are ignored
// (clients send many); a known field of the wrong JSON type or out of range is a 400 naming it,
// and so is a field asking for what this server does not do (tools, JSON mode, log
// probabilities, several choices, penalties), rather than an answer that silently ignores it.

/// A chat completion request, checked.
struct ChatCompletionRequest: Decodable {
    var messages: [ChatMessage]
    var options: CompletionOptions

    init(from decoder: any Decoder) throws {
        let body = try objectContainer(decoder)
        guard let messages = try body.optional("messages", "an array of messages", as: [MessageField].self) else {
            throw APIError.invalid("Missing required parameter: 'messages'.", param: "messages")
        }
        guard !messages.isEmpty else { throw APIError.wrongValue("messages", "must contain at least one message") }
        if try body.optional("logprobs", "a boolean", as: Bool.self) == true {
            throw APIError.wrongValue("logprobs", "log probabilities are not supported")
        }
        for field in ["tools", "tool_choice", "functions", "function_call", "response_format", "top_logprobs",
                      "parallel_tool_calls", "audio", "modalities", "prediction"] where body.isSet(field) {
            throw APIError.unsupported(field)
        }
        self.messages = messages.map(\.message)
        options = try CompletionOptions(body)
    }
}

/// A text completion request, checked.
struct TextCompletionRequest: Decodable {
    var prompt: String
    var options: CompletionOptions

    init(from decoder: any Decoder) throws {
        let body = try objectContainer(decoder)
        guard let prompts = try body.optional("prompt", "a string or an array of one string", as: StringOrArray.self) else {
            throw APIError.invalid("Missing required parameter: 'prompt'.", param: "prompt")
        }
        guard prompts.strings.count == 1 else {
            throw APIError.wrongValue("prompt", "exactly one prompt per request is supported, got \(prompts.strings.count)")
        }
        if try body.optional("echo", "a boolean", as: Bool.self) == true {
            throw APIError.wrongValue("echo", "echo is not supported")
        }
        if body.isSet("logprobs") { throw APIError.wrongValue("logprobs", "log probabilities are not supported") }
        for field in ["suffix"] where body.isSet(field) { throw APIError.unsupported(field) }
        if let bestOf = try body.optional("best_of", "an integer", as: Int.self), bestOf != 1 {
            throw APIError.wrongValue("best_of", "only 1 is supported, got \(bestOf)")
        }
        prompt = prompts.strings[0]
        options = try CompletionOptions(body)
    }
}

/// The fields both kinds of completion share, checked.
struct CompletionOptions {
    /// Most stop strings, as OpenAI allows.
    static let maxStopStrings = 4
    /// Most `logit_bias` entries, as OpenAI allows.
    static let maxLogitBiases = 300

    /// The `model` the request names, nil when it names none.
    var model: String?
    /// Nil: the service's default (`GenerationService.defaultMaxTokens`).
    var maxTokens: Int?
    var sampling: SamplingParameters
    var stop: [String]
    var stream: Bool
    /// Send a last chunk with `usage` (`stream_options.include_usage`).
    var includeUsage: Bool

    init(_ body: KeyedDecodingContainer<FieldKey>) throws(APIError) {
        model = try body.optional("model", "a string", as: String.self)
        // max_completion_tokens is the newer name of max_tokens.
        maxTokens = nil
        for name in ["max_completion_tokens", "max_tokens"] {
            guard let value = try body.optional(name, "an integer", as: Int.self) else { continue }
            guard value >= 1 else { throw .wrongValue(name, "must be at least 1, got \(value)") }
            maxTokens = value
            break
        }
        let temperature = try body.optional("temperature", "a number", as: Double.self) ?? 1
        guard (0...2).contains(temperature) else { throw .wrongValue("temperature", "must be between 0 and 2, got \(temperature)") }
        let topP = try body.optional("top_p", "a number", as: Double.self) ?? 1
        guard topP > 0, topP <= 1 else { throw .wrongValue("top_p", "must be greater than 0 and at most 1, got \(topP)") }
        let topK = try body.optional("top_k", "an integer", as: Int.self) ?? 0
        guard topK >= 0 else { throw .wrongValue("top_k", "must be 0 (off) or more, got \(topK)") }
        let seed = try body.optional("seed", "an integer", as: Int64.self).map { UInt64(bitPattern: $0) }
        var logitBias: [Int: Float] = [:]
        for (key, bias) in try body.optional("logit_bias", "an object", as: [String: Double].self) ?? [:] {
            guard let id = Int(key), id >= 0 else {
                throw .wrongValue("logit_bias", "keys must be token ids, got '\(key.prefix(40))'")
            }
            guard (-100...100).contains(bias) else {
                throw .wrongValue("logit_bias", "biases must be between -100 and 100, got \(bias) for token \(id)")
            }
            logitBias[id] = Float(bias)
        }
        guard logitBias.count <= Self.maxLogitBiases else {
            throw .wrongValue("logit_bias", "at most \(Self.maxLogitBiases) tokens, got \(logitBias.count)")
        }
        sampling = SamplingParameters(temperature: Float(temperature), topK: topK, topP: Float(topP),
                                      seed: seed ?? UInt64.random(in: 0...UInt64.max), logitBias: logitBias)

        stop = try body.optional("stop", "a string or an array of strings", as: StringOrArray.self)?.strings ?? []
        guard stop.count <= Self.maxStopStrings else {
            throw .wrongValue("stop", "at most \(Self.maxStopStrings) stop strings, got \(stop.count)")
        }
        guard !stop.contains("") else { throw .wrongValue("stop", "stop strings must not be empty") }
        if let long = stop.first(where: { $0.utf8.count > maxStopBytes }) {
            throw .wrongValue("stop", "stop strings may be at most \(maxStopBytes) bytes, got one of \(long.utf8.count)")
        }
        for penalty in ["presence_penalty", "frequency_penalty"] {
            if let value = try body.optional(penalty, "a number", as: Double.self), value != 0 {
                throw .wrongValue(penalty, "penalties are not supported (only 0), got \(value)")
            }
        }

        let n = try body.optional("n", "an integer", as: Int.self) ?? 1
        guard n == 1 else { throw .wrongValue("n", "only 1 choice per request is supported, got \(n)") }

        stream = try body.optional("stream", "a boolean", as: Bool.self) ?? false
        let streamOptions = try body.optional("stream_options", "an object", as: StreamOptions.self)
        if streamOptions != nil, !stream {
            throw .invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", param: "stream_options")
        }
        includeUsage = streamOptions?.includeUsage ?? false
    }
}

/// `stream_options`.
private struct StreamOptions: Decodable {
    var includeUsage: Bool

    init(from decoder: any Decoder) throws {
        includeUsage = try objectContainer(decoder).optional("include_usage", "a boolean", as: Bool.self) ?? false
    }
}

/// One element of `messages`: `{"role", "content"}`, and Mistral's optional `prefix`.
private struct MessageField: Decodable {
    var message: ChatMessage

    init(from decoder: any Decoder) throws {
        let fields = try objectContainer(decoder)
        let path = fieldPath(decoder.codingPath)
        guard let roleName = try fields.optional("role", "a string", as: String.self) else {
            throw APIError.invalid("Missing required parameter: '\(path).role'.", param: path + ".role")
        }
        guard let role = ChatMessage.Role(rawValue: roleName) else {
            throw APIError.wrongValue(path + ".role", "must be system, user or assistant, got '\(roleName)'")
        }
        guard let content = try fields.optional("content", "a string", as: String.self) else {
            throw APIError.invalid("Missing required parameter: '\(path).content'.", param: path + ".content")
        }
        let prefix = try fields.optional("prefix", "a boolean", as: Bool.self) ?? false
        message = ChatMessage(role: role, content: content, prefix: prefix)
    }
}

/// A JSON string, or an array of strings.
private struct StringOrArray: Decodable {
    var strings: [String]

    init(from decoder: any Decoder) throws {
        let value = try decoder.singleValueContainer()
        if let string = try? value.decode(String.self) {
            strings = [string]
        } else {
            strings = try value.decode([String].self)
        }
    }
}

/// Decodes a request body; anything but a JSON object of the right fields is a 400.
func decodeRequest<T: Decodable>(_ type: T.Type, from body: [UInt8]) throws(APIError) -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(body))
    } catch let error as APIError {
        throw error
    } catch {
        throw .invalid("The request body is not valid JSON.")
    }
}

/// Any key of a JSON object.
struct FieldKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }

    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.init(stringValue) }
    init?(intValue: Int) { nil }
}

/// The object `decoder` is at; another JSON type is a 400.
private func objectContainer(_ decoder: any Decoder) throws(APIError) -> KeyedDecodingContainer<FieldKey> {
    do {
        return try decoder.container(keyedBy: FieldKey.self)
    } catch {
        if decoder.codingPath.isEmpty { throw .invalid("The request body must be a JSON object.") }
        throw .wrongType(fieldPath(decoder.codingPath), expected: "an object")
    }
}

/// A field as OpenAI's `param` names it: `messages[1].content`.
private func fieldPath(_ codingPath: [any CodingKey]) -> String {
    codingPath.reduce(into: "") { path, key in
        if let index = key.intValue {
            path += "[\(index)]"
        } else {
            path += path.isEmpty ? key.stringValue : "." + key.stringValue
        }
    }
}

extension KeyedDecodingContainer where Key == FieldKey {
    /// Field `name`, nil when absent or null; a value of another JSON type is a 400 naming
    /// the field and what was `expected`.
    func optional<T: Decodable>(_ name: String, _ expected: String, as type: T.Type) throws(APIError) -> T? {
        let key = FieldKey(name)
        do {
            guard contains(key), try !decodeNil(forKey: key) else { return nil }
            return try decode(T.self, forKey: key)
        } catch let error as APIError {
            throw error
        } catch {
            throw .wrongType(fieldPath(codingPath + [key]), expected: expected)
        }
    }

    /// Whether field `name` is present and not null.
    func isSet(_ name: String) -> Bool {
        let key = FieldKey(name)
        return contains(key) && (try? decodeNil(forKey: key)) == false
    }
}
