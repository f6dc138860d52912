import ArgumentParser
import Foundation
import ShoalClient
import ShoalServe
import ShoalTokenizer
import Synchronization

/// `shoal chat`: a conversation with a coordinator, one line per user turn.
struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a coordinator, streaming each reply.",
        discussion: """
            Reads one user message per line from stdin and sends the whole conversation each turn. \
            /reset forgets the conversation; /exit or end of input quits. A failed turn is \
            reported on stderr and left out of the conversation.
            """)

    @Option(help: "The coordinator's prompt API, HOST:PORT.") var coordinator: String
    @OptionGroup var access: CoordinatorAccessOptions
    @Option(help: "A system prompt for the whole conversation.") var system: String?
    @Option(help: "Most tokens per reply (0: as many as the context allows).") var maxTokens = 1024
    @Option(help: "0 is greedy.") var temperature: Float = 0.7
    @Option(help: "Sample among the most likely tokens reaching this probability.") var topP: Float = 1
    @Option(help: "Seed for sampling each reply (default: the coordinator picks one).") var seed: UInt64?

    func validate() throws {
        guard ClusterOptions.isHostPort(coordinator) else {
            throw ValidationError("--coordinator takes HOST:PORT, got \(coordinator)")
        }
        guard maxTokens >= 0, maxTokens <= Int(UInt32.max) else {
            throw ValidationError("--max-tokens must be between 0 and \(UInt32.max)")
        }
        guard temperature >= 0, topP > 0, topP <= 1 else {
            throw ValidationError("need --temperature >= 0 and 0 < --top-p <= 1")
        }
    }

    func run() throws {
        try reportingErrors {
            let client = try access.client(coordinator)
            defer { client.close() }
            let interactive = isatty(STDIN_FILENO) != 0
            let start = system.map { [ChatMessage(role: .system, content: $0)] } ?? []
            var history = start
            while true {
                if interactive { writeOut("> ") }
                guard let line = readLine() else { break }
                switch line.trimmingCharacters(in: .whitespaces) {
                case "": continue
                case "/exit": return
                case "/reset":
                    history = start
                    continue
                default: break
                }
                let turn = history + [ChatMessage(role: .user, content: line)]
                if let reply = self.reply(to: turn, client: client) {
                    history = turn + [ChatMessage(role: .assistant, content: reply)]
                }
            }
            if interactive { writeOut("\n") }
        }
    }

    /// Streams the reply to `conversation` to stdout; nil when the turn should be dropped
    /// (the call failed, or the reply was empty and so cannot be an assistant turn).
    private func reply(to conversation: [ChatMessage], client: CoordinatorClient) -> String? {
        let options = CoordinatorGenerateOptions(maxTokens: maxTokens, temperature: temperature, topP: topP, seed: seed)
        do {
            let completion = try blocking {
                var printed = false
                do {
                    return try await client.complete(.chat(conversation), options: options) { piece in
                        writeOut(piece)
                        printed = true
                    }
                } catch {
                    if printed { writeOut("\n") }
                    throw error
                }
            }
            writeOut("\n")
            if completion.done.finishReason == .length { printErr("(the reply was cut at the token limit)") }
            guard !completion.text.isEmpty else {
                printErr("(the reply was empty; this turn is left out of the conversation)")
                return nil
            }
            return completion.text
        } catch {
            printErr("error: \(error)")
            return nil
        }
    }
}

/// Writes `text` to stdout unbuffered, so a reply shows as it streams.
private func writeOut(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

/// Runs `body` on Swift's task pool and waits for it: the subcommands are synchronous.
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let finished = DispatchSemaphore(value: 0)
    let result = ResultBox<T>()
    Task {
        do { result.set(.success(try await body())) } catch { result.set(.failure(error)) }
        finished.signal()
    }
    finished.wait()
    return try result.take().get()
}

/// The result of a task, handed to the thread that waits for it.
private final class ResultBox<T: Sendable>: Sendable {
    private let result = Mutex<Result<T, Error>?>(nil)

    func set(_ value: Result<T, Error>) { result.withLock { $0 = value } }
    func take() -> Result<T, Error> { result.withLock { $0! } }
}
