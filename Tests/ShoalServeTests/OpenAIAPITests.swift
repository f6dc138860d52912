import Foundation
import ShoalModel
@testable import ShoalServe
import ShoalTokenizer
import Testing

@Suite("OpenAI API", .timeLimit(.minutes(1)))
struct OpenAIAPITests {
    static let hello: [GenerationEvent] = [
        .delta(ids: [1], text: "Hel"), .delta(ids: [2], text: ""), .delta(ids: [3], text: "lo \"/\""),
        .finished(scriptedSummary("Hello \"/\"", .eos)),
    ]

    @Test func chatCompletion() throws {
        let service = try ScriptedService(.events(Self.hello))
        let response = try withAPI(service) { port in
            try APIClient.request(port: port, "POST", "/v1/chat/completions", json: [
                "model": "tiny-mixtral", "messages": [["role": "system", "content": "Be brief."], ["role": "user", "content": "Hi"]],
                "presence_penalty": 0, "user": "someone", "logit_bias": [String: Int](),
            ])
        }
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "application/json")
        let json = response.json
        #expect((json["id"] as? String)?.hasPrefix("chatcmpl-") == true)
        #expect(json["object"] as? String == "chat.completion")
        #expect(json["created"] is Int)
        #expect(json["model"] as? String == "tiny-mixtral")
        let choice = try #require((json["choices"] as? [[String: Any]])?.first)
        #expect(choice["index"] as? Int == 0)
        #expect(choice["message"] as? [String: String] == ["role": "assistant", "content": "Hello \"/\""])
        #expect(choice["finish_reason"] as? String == "stop")
        #expect(choice["logprobs"] is NSNull)
        #expect(json["usage"] as? [String: Int] == ["prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10])

        let submitted = try #require(service.requests.first)
        let prompt = try service.tokenizer.encodeChat([ChatMessage(role: .system, content: "Be brief."), ChatMessage(role: .user, content: "Hi")])
        #expect(submitted.prompt == prompt)
        #expect(submitted.parameters.maxTokens == service.contextLimit - prompt.count)
        #expect(submitted.parameters.sampling.temperature == 1)
        #expect(submitted.parameters.stop.isEmpty)
    }

    @Test func textCompletionPassesEveryParameter() throws {
        let service = try ScriptedService(.events([.delta(ids: [5], text: "abc"), .finished(scriptedSummary("abc", .length))]))
        let response = try withAPI(service) { port in
            try APIClient.request(port: port, "POST", "/v1/completions", json: [
                "prompt": ["Once upon"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                "seed": -1, "stop": ["a", "b"], "n": 1, "echo": false, "logprobs": NSNull(),
                "logit_bias": ["2": 100, "13": -5.5],
            ])
        }
        #expect(response.status == 200)
        let json = response.json
        #expect((json["id"] as? String)?.hasPrefix("cmpl-") == true)
        #expect(json["object"] as? String == "text_completion")
        let choice = try #require((json["choices"] as? [[String: Any]])?.first)
        #expect(choice["text"] as? String == "abc")
        #expect(choice["finish_reason"] as? String == "length")
        #expect(choice["logprobs"] is NSNull)

        let submitted = try #require(service.requests.first)
        #expect(submitted.prompt == service.tokenizer.encode("Once upon", bos: true))
        #expect(submitted.parameters.maxTokens == 5)
        #expect(submitted.parameters.sampling == SamplingParameters(temperature: 0.5, topK: 40, topP: 0.9, seed: UInt64.max,
                                                                    logitBias: [2: 100, 13: -5.5]))
        #expect(submitted.parameters.stop == ["a", "b"])
    }

    @Test func chatStreamWithUsage() throws {
        let service = try ScriptedService(.events(Self.hello))
        let response = try withAPI(service) { port in
            try APIClient.request(port: port, "POST", "/v1/chat/completions", json: [
                "messages": [["role": "user", "content": "Hi"]], "stream": true, "stream_options": ["include_usage": true],
                "max_completion_tokens": 9, "stop": "\n",
            ])
        }
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "text/event-stream")
        #expect(response.headers["cache-control"] == "no-cache")
        #expect(response.events.last == "[DONE]")
        let chunks = response.eventObjects
        try #require(chunks.count == 5)
        for chunk in chunks {
            #expect(chunk["object"] as? String == "chat.completion.chunk")
            #expect(chunk["model"] as? String == "tiny-mixtral")
            #expect(chunk["id"] as? String == chunks[0]["id"] as? String)
        }
        let choices = chunks.map { ($0["choices"] as? [[String: Any]])?.first }
        #expect(choices[0]?["delta"] as? [String: String] == ["role": "assistant", "content": ""])
        #expect(choices[1]?["delta"] as? [String: String] == ["content": "Hel"])
        #expect(choices[2]?["delta"] as? [String: String] == ["content": "lo \"/\""])
        #expect(choices[3]?["delta"] as? [String: String] == [:])
        #expect(choices[0]?["finish_reason"] is NSNull)
        #expect(choices[3]?["finish_reason"] as? String == "stop")
        #expect(chunks[4]["choices"] as? [Any] != nil && (chunks[4]["choices"] as? [Any])?.isEmpty == true)
        #expect(chunks[4]["usage"] as? [String: Int] == ["prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10])
        #expect(chunks[0..<4].allSatisfy { $0["usage"] is NSNull })
        #expect(service.requests.first?.parameters.maxTokens == 9)
        #expect(service.requests.first?.parameters.stop == ["\n"])
    }

    @Test func textStreamWithoutUsage() throws {
        let service = try ScriptedService(.events(Self.hello))
        let response = try withAPI(service) { port in
            try APIClient.request(port: port, "POST", "/v1/completions", json: ["prompt": "Say", "stream": true])
        }
        let chunks = response.eventObjects
        try #require(chunks.count == 3)
        #expect(chunks.allSatisfy { $0["object"] as? String == "text_completion" && $0["usage"] == nil })
        let choices = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first }
        #expect(choices.map { $0["text"] as? String } == ["Hel", "lo \"/\"", ""])
        #expect(choices.map { $0["finish_reason"] as? String } == [nil, nil, "stop"])
        #expect(response.events.last == "[DONE]")
    }

    @Test func failureMidStreamIsAnErrorEvent() throws {
        let events: [GenerationEvent] = [.delta(ids: [1], text: "Hel"), .failed(message: "worker w1 is gone")]
        let service = try ScriptedService(.events(events))
        try withAPI(service) { port in
            let streamed = try APIClient.request(port: port, "POST", "/v1/completions", json: ["prompt": "x", "stream": true])
            #expect(streamed.status == 200)
            let last = try #require(streamed.eventObjects.last?["error"] as? [String: Any])
            #expect(last["message"] as? String == "worker w1 is gone")
            #expect(last["type"] as? String == "server_error")
            #expect(!streamed.events.contains("[DONE]"))

            let whole = try APIClient.request(port: port, "POST", "/v1/completions", json: ["prompt": "x"])
            #expect(whole.status == 503)
            #expect(whole.error["message"] as? String == "worker w1 is gone")
        }
    }

    @Test(arguments: [
        ("/v1/chat/completions", "{\"messages\": [", nil as String?),
        ("/v1/chat/completions", "[1, 2]", nil),
        ("/v1/chat/completions", "{}", "messages"),
        ("/v1/chat/completions", "{\"messages\": []}", "messages"),
        ("/v1/chat/completions", "{\"messages\": \"hi\"}", "messages"),
        ("/v1/chat/completions", "{\"messages\": [5]}", "messages[0]"),
        ("/v1/chat/completions", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "messages[0].role"),
        ("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].content"),
        ("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content"),
        ("/v1/chat/completions", "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}", "messages"),
        ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "logprobs": true}"#, "logprobs"),
        ("/v1/completions", "{\"prompt\": \"x\", \"model\": 5}", "model"),
        ("/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", "max_tokens"),
        ("/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens"),
        ("/v1/completions", "{\"prompt\": \"x\", \"max_completion_tokens\": 2.5}", "max_completion_tokens"),
        ("/v1/completions", "{\"prompt\": \"x\", \"temperature\": 3}", "temperature"),
        ("/v1/completions", "{\"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature"),
        ("/v1/completions", "{\"prompt\": \"x\", \"top_p\": 0}", "top_p"),
        ("/v1/completions", "{\"prompt\": \"x\", \"top_k\": -1}", "top_k"),
        ("/v1/completions", "{\"prompt\": \"x\", \"seed\": \"7\"}", "seed"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stop\": 5}", "stop"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", "stop"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stop\": [\"\"]}", "stop"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stream\": \"yes\"}", "stream"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options"),
        ("/v1/completions", "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}", "stream_options.include_usage"),
        ("/v1/completions", "{\"prompt\": \"x\", \"n\": 2}", "n"),
        ("/v1/completions", "{}", "prompt"),
        ("/v1/completions", "{\"prompt\": [\"a\", \"b\"]}", "prompt"),
        ("/v1/completions", "{\"prompt\": [1, 2]}", "prompt"),
        ("/v1/completions", "{\"prompt\": \"x\", \"echo\": true}", "echo"),
        ("/v1/completions", "{\"prompt\": \"x\", \"logprobs\": 1}", "logprobs"),
        ("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": {\"eos\": 5}}", "logit_bias"),
        ("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": {\"-1\": 5}}", "logit_bias"),
        ("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": {\"2\": 101}}", "logit_bias"),
        ("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": [2]}", "logit_bias"),
    ])
    func badRequestIs400(path: String, body: String, param: String?) throws {
        let service = try ScriptedService(.events(Self.hello))
        let response = try withAPI(service) { port in try APIClient.request(port: port, "POST", path, raw: body) }
        #expect(response.status == 400)
        #expect(response.error["type"] as? String == "invalid_request_error")
        #expect(response.error["param"] as? String == param)
        #expect(response.error["code"] is NSNull)
        #expect((response.error["message"] as? String)?.isEmpty == false)
        #expect(service.requests.isEmpty)
    }

    @Test func chatFormatRefusalNamesTheRule() throws {
        let service = try ScriptedService(.events(Self.hello))
        let response = try withAPI(service) { port in
            try APIClient.request(port: port, "POST", "/v1/chat/completions", json: [
                "messages": [["role": "user", "content": "a"], ["role": "assistant", "content": "b"]],
            ])
        }
        #expect(response.status == 400)
        #expect(response.error["message"] as? String == ChatFormatError.lastMessageNotUser.description)
    }

    @Test(arguments: [
        (SubmitError.queueFull(limit: 4), 429, "server_error", "rate_limit_exceeded" as String?),
        (.contextOverflow(needed: 600, limit: 512), 400, "invalid_request_error", "context_length_exceeded"),
        (.exceedsCacheCapacity(neededTokens: 600, capacityTokens: 100), 400, "invalid_request_error", "context_length_exceeded"),
        (.invalidPrompt("empty prompt"), 400, "invalid_request_error", nil),
        (.shuttingDown, 503, "server_error", nil),
    ])
    func refusedSubmission(error: SubmitError, status: Int, type: String, code: String?) throws {
        let service = try ScriptedService(.reject(error))
        try withAPI(service) { port in
            for stream in [false, true] {
                let response = try APIClient.request(port: port, "POST", "/v1/completions", json: ["prompt": "x", "stream": stream])
                #expect(response.status == status)
                #expect(response.error["message"] as? String == error.description)
                #expect(response.error["type"] as? String == type)
                #expect(response.error["code"] as? String == code)
            }
        }
    }

    @Test func unknownPathAndWrongMethod() throws {
        try withAPI(try ScriptedService(.silent)) { port in
            let missing = try APIClient.request(port: port, "GET", "/v1/embeddings")
            #expect(missing.status == 404)
            #expect(missing.error["type"] as? String == "invalid_request_error")
            let wrong = try APIClient.request(port: port, "GET", "/v1/chat/completions")
            #expect(wrong.status == 405)
            #expect(wrong.headers["allow"] == "POST")
            #expect(try APIClient.request(port: port, "POST", "/v1/models").status == 405)
        }
    }

    @Test func modelsHealthAndMetrics() throws {
        try withAPI(try ScriptedService(.silent)) { port in
            let models = try APIClient.request(port: port, "GET", "/v1/models")
            #expect(models.json["object"] as? String == "list")
            let model = try #require((models.json["data"] as? [[String: Any]])?.first)
            #expect(model["id"] as? String == "tiny-mixtral")
            #expect(model["object"] as? String == "model")
            #expect(model["owned_by"] as? String == "shoal")
            #expect(model["created"] is Int)

            let health = try APIClient.request(port: port, "GET", "/health")
            #expect(health.status == 200)
            #expect(health.json["status"] as? String == "ok")

            let metrics = try APIClient.request(port: port, "GET", "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
            #expect(String(decoding: metrics.body, as: UTF8.self) == "shoal_up 1\n")
        }
        try withAPI(try ScriptedService(.silent, isReady: false)) { port in
            let health = try APIClient.request(port: port, "GET", "/health")
            #expect(health.status == 503)
            #expect(health.json["status"] as? String == "unavailable")
        }
    }

    @Test func disconnectDuringStreamCancels() throws {
        let service = try ScriptedService(.endless)
        try withAPI(service) { port in
            let client = try APIClient(port: port)
            try client.send("POST", "/v1/chat/completions",
                            body: Array(#"{"messages": [{"role": "user", "content": "x"}], "stream": true}"#.utf8))
            try client.read(until: "tick")
            client.hangUp()
            #expect(service.waitForCancel(upTo: .seconds(5)))
        }
    }

    @Test func disconnectWhileWaitingCancels() throws {
        let service = try ScriptedService(.silent)
        try withAPI(service) { port in
            let client = try APIClient(port: port)
            try client.send("POST", "/v1/completions", body: Array(#"{"prompt": "x"}"#.utf8))
            let end = ContinuousClock.now + .seconds(5)
            while service.requests.isEmpty, ContinuousClock.now < end { usleep(5_000) }
            client.reset()
            #expect(service.waitForCancel(upTo: .seconds(5)))
        }
    }

    /// A valid request whose client then shuts down its sending side gets its answer (it got
    /// no reply at all before: the half-close was taken for a client gone).
    @Test func halfClosedClientGetsItsAnswer() throws {
        let service = try ScriptedService(.delayed(.milliseconds(400), [.delta(ids: [5], text: "abc"), .finished(scriptedSummary("abc", .length))]))
        try withAPI(service) { port in
            let client = try APIClient(port: port)
            try client.send("POST", "/v1/completions", body: Array(#"{"prompt": "x"}"#.utf8))
            client.halfClose()
            let response = try client.readResponse()
            #expect(response.status == 200, "\(response.status)")
            #expect(((response.json["choices"] as? [[String: Any]])?.first?["text"] as? String) == "abc")
            #expect(!service.cancelled)
        }
    }
}
