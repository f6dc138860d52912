import Foundation
@testable import ShoalClient
import ShoalModel
import ShoalRPC
@testable import ShoalServe
import ShoalTestSupport
import Testing

/// Who may use the prompt APIs: API keys on HTTP and gRPC (hot-reloaded), the Host and
/// Origin checks that keep web pages out, and the fields and sizes a request may not carry.
@Suite(.timeLimit(.minutes(1))) struct AccessTests {
    static let finished: ScriptedService.Script = .events([.finished(scriptedSummary("", .stop))])
    static var chat: [String: Any] { ["messages": [["role": "user", "content": "Hi"]], "max_tokens": 2] }

    static func keyFile(_ keys: [String]) throws -> String {
        let path = NSTemporaryDirectory() + "shoal-keys-\(UUID().uuidString)"
        try (["# test keys"] + keys).joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func keysAreRequiredAndNameTheClient() throws {
        let file = try Self.keyFile(["sk-alpha", "sk-beta"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let keys = try #require(try APIKeys.load(file: file, list: nil))
        let service = try ScriptedService(Self.finished)
        try withAPI(service, access: HTTPAccess(keys: keys)) { port throws in
            let bare = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: Self.chat)
            #expect(bare.status == 401 && bare.error["code"] as? String == "invalid_api_key")
            #expect(bare.headers["www-authenticate"] == "Bearer")
            let wrong = try APIClient.request(port: port, "GET", "/v1/models",
                                              headers: [("Host", "test"), ("Authorization", "Bearer sk-alphx")])
            #expect(wrong.status == 401)
            let prefix = try APIClient.request(port: port, "GET", "/metrics",
                                               headers: [("Host", "test"), ("Authorization", "Bearer sk-alph")])
            #expect(prefix.status == 401)
            let right = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: Self.chat,
                                              headers: [("Host", "test"), ("Authorization", "Bearer sk-beta")])
            #expect(right.status == 200, "\(right.json)")
            // Probes need no key.
            #expect(try APIClient.request(port: port, "GET", "/health").status == 200)
        }
        #expect(service.requests.count == 1)
        #expect(service.requests.first?.client.hasPrefix("key-") == true)
    }

    @Test func aChangedKeyFileIsReread() throws {
        let file = try Self.keyFile(["sk-old"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let keys = try #require(try APIKeys.load(file: file, list: "sk-env1, sk-env2"))
        #expect(keys.client(presenting: "sk-old") != nil && keys.client(presenting: "sk-env2") != nil)
        #expect(keys.client(presenting: "sk-new") == nil)
        try "sk-new\n".write(toFile: file, atomically: true, encoding: .utf8)
        // Another modification time than the first write's, whatever the file system's resolution.
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: file)
        let deadline = ContinuousClock.now + .seconds(5)
        while keys.client(presenting: "sk-new") == nil, ContinuousClock.now < deadline { usleep(50_000) }
        #expect(keys.client(presenting: "sk-new") != nil)
        #expect(keys.client(presenting: "sk-old") == nil)
        #expect(keys.client(presenting: "sk-env1") != nil)
        // A file emptied by a half-written save keeps the last good keys.
        try "".write(toFile: file, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(10)], ofItemAtPath: file)
        usleep(1_100_000)
        #expect(keys.client(presenting: "sk-new") != nil)
        #expect(throws: ServeError.self) { try APIKeys.load(file: file, list: nil) }
        #expect(throws: ServeError.self) { try APIKeys.load(file: "/nonexistent/keys", list: nil) }
    }

    @Test func onlyKnownHostsAndOriginsGetIn() throws {
        let service = try ScriptedService(Self.finished)
        let loopback = HTTPAccess(allowedHosts: HTTPAccess.defaultHosts(listening: "127.0.0.1", extra: []))
        try withAPI(service, access: loopback) { port throws in
            // DNS rebinding: a page of evil.example whose name now points at 127.0.0.1.
            let rebound = try APIClient.request(port: port, "GET", "/v1/models", headers: [("Host", "evil.example:\(port)")])
            #expect(rebound.status == 403 && rebound.error["code"] as? String == "host_not_allowed")
            // HTTP/1.1 without a Host is refused before the API sees it.
            #expect(try APIClient.request(port: port, "GET", "/v1/models", headers: []).status == 400)
            #expect(try APIClient.request(port: port, "GET", "/v1/models", headers: [("Host", "localhost:\(port)")]).status == 200)
            #expect(try APIClient.request(port: port, "GET", "/v1/models", headers: [("Host", "[::1]:\(port)")]).status == 200)
            // Another site's page calling the API from a browser.
            let crossSite = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: Self.chat,
                                                  headers: [("Host", "localhost:\(port)"), ("Origin", "https://evil.example")])
            #expect(crossSite.status == 403 && crossSite.error["code"] as? String == "origin_not_allowed")
            // The same origin is fine (a page the server itself serves).
            let sameOrigin = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: Self.chat,
                                                   headers: [("Host", "localhost:\(port)"), ("Origin", "http://localhost:\(port)")])
            #expect(sameOrigin.status == 200)
            #expect(sameOrigin.headers["access-control-allow-origin"] == nil)
        }
        #expect(service.requests.count == 1)

        var listed = loopback
        listed.corsOrigins = ["https://app.example"]
        try withAPI(service, access: listed) { port throws in
            let host = ("Host", "127.0.0.1:\(port)")
            let preflight = try APIClient.request(port: port, "OPTIONS", "/v1/chat/completions",
                                                  headers: [host, ("Origin", "https://app.example")])
            #expect(preflight.status == 204 && preflight.headers["access-control-allow-origin"] == "https://app.example")
            #expect(preflight.headers["access-control-allow-headers"]?.contains("Authorization") == true)
            let call = try APIClient.request(port: port, "GET", "/v1/models", headers: [host, ("Origin", "https://app.example")])
            #expect(call.status == 200 && call.headers["access-control-allow-origin"] == "https://app.example")
            let other = try APIClient.request(port: port, "OPTIONS", "/v1/chat/completions",
                                              headers: [host, ("Origin", "https://evil.example")])
            #expect(other.status == 403)
        }
    }

    @Test func theMetricsListenerServesOnlyMetricsAndHealth() throws {
        let service = try ScriptedService(Self.finished)
        try withAPI(service, surface: .metricsOnly) { port throws in
            #expect(try APIClient.request(port: port, "GET", "/metrics").status == 200)
            #expect(try APIClient.request(port: port, "GET", "/health").status == 200)
            #expect(try APIClient.request(port: port, "GET", "/v1/models").status == 404)
            #expect(try APIClient.request(port: port, "POST", "/v1/chat/completions", json: Self.chat).status == 404)
        }
        #expect(service.requests.isEmpty)
    }

    @Test func unknownModelsAndUnsupportedFieldsAreRefused() throws {
        let service = try ScriptedService(Self.finished)
        try withAPI(service) { port throws in
            var other = Self.chat
            other["model"] = "gpt-4o"
            let unknown = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: other)
            #expect(unknown.status == 404 && unknown.error["code"] as? String == "model_not_found")
            #expect(unknown.error["param"] as? String == "model")
            var named = Self.chat
            named["model"] = "tiny-mixtral"
            #expect(try APIClient.request(port: port, "POST", "/v1/chat/completions", json: named).status == 200)

            let unsupported: [(String, Any)] = [
                ("tools", [["type": "function", "function": ["name": "f"]]]), ("functions", [["name": "f"]]),
                ("response_format", ["type": "json_object"]), ("tool_choice", "auto"),
                ("presence_penalty", 0.5), ("n", 2), ("logprobs", true),
            ]
            for (field, value) in unsupported {
                var body = Self.chat
                body[field] = value
                let response = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: body)
                #expect(response.status == 400 && response.error["param"] as? String == field, "\(field): \(response.json)")
            }
            let text = try APIClient.request(port: port, "POST", "/v1/completions",
                                             json: ["prompt": "Hi", "suffix": "end", "max_tokens": 2])
            #expect(text.status == 400 && text.error["param"] as? String == "suffix")
        }
        #expect(service.requests.count == 1)
    }

    @Test func stopStringsAndPromptTextAreBounded() throws {
        let service = try ScriptedService(Self.finished)
        try withAPI(service) { port throws in
            var longStop = Self.chat
            longStop["stop"] = [String(repeating: "x", count: maxStopBytes + 1)]
            let stop = try APIClient.request(port: port, "POST", "/v1/chat/completions", json: longStop)
            #expect(stop.status == 400 && stop.error["param"] as? String == "stop", "\(stop.json)")
            var okStop = Self.chat
            okStop["stop"] = [String(repeating: "x", count: maxStopBytes)]
            #expect(try APIClient.request(port: port, "POST", "/v1/chat/completions", json: okStop).status == 200)

            let tooLong = String(repeating: "a", count: service.maxPromptBytes + 1)
            let prompt = try APIClient.request(port: port, "POST", "/v1/completions", json: ["prompt": tooLong, "max_tokens": 1])
            #expect(prompt.status == 400 && prompt.error["param"] as? String == "prompt", "\(prompt.json)")
            let chat = try APIClient.request(port: port, "POST", "/v1/chat/completions",
                                             json: ["messages": [["role": "user", "content": tooLong]], "max_tokens": 1])
            #expect(chat.status == 400 && chat.error["param"] as? String == "messages")
        }
        #expect(service.requests.count == 1)
    }

    @Test func grpcCallsNeedAKey() async throws {
        let service = try FakeGenerationService(.events([.finished(scriptedSummary("", .stop))]))
        let keys = try #require(try APIKeys.load(file: nil, list: "sk-grpc"))
        let api = CoordinatorService(service: service, modelName: "tiny", keys: keys) { (0, 0) }
        try await RPCServer.withServer(unary: api.unaryHandlers, serverStreaming: api.streamingHandlers) { server in
            for key in [nil, "sk-wrong"] as [String?] {
                let client = CoordinatorClient(target: "127.0.0.1:\(server.port)", apiKey: key)
                defer { client.close() }
                await #expect(throws: RPCStatus.self) { _ = try await client.health() }
                do { _ = try await client.health() } catch let status as RPCStatus {
                    #expect(status.code == .unauthenticated && status.message.contains("API key"))
                }
            }
            let client = CoordinatorClient(target: "127.0.0.1:\(server.port)", apiKey: "sk-grpc")
            defer { client.close() }
            #expect(try await client.health().model == "tiny")
            _ = try await client.complete(.ids([1, 2]), options: CoordinatorGenerateOptions(maxTokens: 2))
        }
        #expect(service.requests.count == 1 && service.requests[0].client.hasPrefix("key-"))
    }
}
