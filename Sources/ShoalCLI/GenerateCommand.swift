import ArgumentParser
import Foundation
import ShoalClient
import ShoalCluster
import ShoalModel
import ShoalServe
import ShoalTensor

/// `shoal generate`: stream a completion of a prompt, a conversation or raw ids.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text, streaming it to stdout; speeds go to stderr.")

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String?
    @Option(help: "A coordinator's prompt API, HOST:PORT, instead of --model.") var coordinator: String?
    @OptionGroup var coordinatorAccess: CoordinatorAccessOptions
    @Option(help: "Prompt text (BOS is prepended).") var prompt: String?
    @Option(help: "A JSON conversation in the Mistral v1 chat format.") var chat: String?
    @Option(help: "Prompt as comma-separated token ids.") var ids: String?
    @Option(help: "Most tokens to generate.") var maxTokens = 256
    @Option(help: "0 is greedy.") var temperature: Float = 0
    @Option(help: "Sample among the k most likely tokens (0: all).") var topK = 0
    @Option(help: "Sample among the most likely tokens reaching this probability.") var topP: Float = 1
    @Option(help: "Seed for sampling (default: random).") var seed: UInt64?
    @Option(help: "Stop before this text (repeatable).") var stop: [String] = []
    @Flag(help: "Do not stop at the end-of-sequence token.") var ignoreEos = false
    @Flag(help: "Print one JSON object {\"ids\", \"text\"} instead of streaming.") var json = false
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @OptionGroup var cluster: ClusterOptions
    @Argument(help: "Prompt text, after -- when it begins with '-'.") var text: String?

    func validate() throws {
        guard (model == nil) != (coordinator == nil) else {
            throw ValidationError("give exactly one of --model FOLDER, --coordinator HOST:PORT")
        }
        if let coordinator {
            guard ClusterOptions.isHostPort(coordinator) else {
                throw ValidationError("--coordinator takes HOST:PORT, got \(coordinator)")
            }
            guard cluster.workers == nil else { throw ValidationError("--workers goes with --model, not --coordinator") }
        }
        let given = [prompt != nil || text != nil, chat != nil, ids != nil].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give exactly one of --prompt TEXT, --chat FILE, --ids LIST") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard temperature >= 0, topK >= 0, topP > 0, topP <= 1 else {
            throw ValidationError("need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            if let coordinator { return try generateRemotely(coordinator) }
            let coordinator = try cluster.coordinator(folder: model!, threads: threads)  // validate() saw one of the two
            defer { withExtendedLifetime(coordinator) {} }
            let engine = coordinator.engine
            let promptIDs: [Int]
            if let ids {
                promptIDs = try parseIDs(ids)
            } else if let chat {
                promptIDs = try engine.tokenizer.encodeChat(try readChat(chat))
            } else {
                promptIDs = engine.tokenizer.encode(prompt ?? text ?? "", bos: true)
            }
            let parameters = GenerationParameters(
                maxTokens: maxTokens,
                sampling: SamplingParameters(
                    temperature: temperature, topK: topK, topP: topP, seed: seed ?? UInt64.random(in: 0...UInt64.max)),
                stop: stop, ignoreEOS: ignoreEos)
            let stdout = FileHandle.standardOutput
            let result = try engine.generator.generate(prompt: promptIDs, parameters: parameters) { piece in
                if !json { stdout.write(Data(piece.utf8)) }
            }
            if json {
                print("{\"ids\":\(jsonArray(result.ids)),\"text\":\(jsonString(result.text))}")
            } else {
                stdout.write(Data("\n".utf8))  // through the same unbuffered handle as the text
            }
            printErr(String(
                format: "prefill: %d tokens, %.1f tokens/s; decode: %d tokens, %.1f tokens/s; finish: %@",
                result.promptTokens, result.prefillTokensPerSecond, result.ids.count,
                result.decodeTokensPerSecond, result.finishReason.rawValue))
            if let remote = coordinator.remote {
                printErr("decode " + remote.stats.summary { $0.tokens == 1 }.line)
            }
        }
    }

    /// The same output from a coordinator's prompt API; the speeds are as the client saw them.
    private func generateRemotely(_ address: String) throws {
        let remotePrompt: CoordinatorPrompt
        if let ids {
            remotePrompt = .ids(try parseIDs(ids))
        } else if let chat {
            remotePrompt = .chat(try readChat(chat))
        } else {
            remotePrompt = .text(prompt ?? text ?? "")
        }
        let options = CoordinatorGenerateOptions(
            maxTokens: maxTokens, temperature: temperature, topK: topK, topP: topP, seed: seed, stop: stop,
            ignoreEOS: ignoreEos)
        let streaming = !json
        let result = try blocking {
            let client = try coordinatorAccess.client(address)
            defer { client.close() }
            let stdout = FileHandle.standardOutput
            return try await client.complete(remotePrompt, options: options) { piece in
                if streaming { stdout.write(Data(piece.utf8)) }
            }
        }
        if json {
            print("{\"ids\":\(jsonArray(result.ids)),\"text\":\(jsonString(result.text))}")
        } else {
            FileHandle.standardOutput.write(Data("\n".utf8))
        }
        let done = result.done
        // Prefill as the coordinator timed it (queueing included); decode between the first
        // and the last token as they reached this client.
        let prefillSeconds = done.timeToFirstToken?.seconds ?? 0
        let decodeSeconds = result.firstTokenAfter.map { (result.elapsed - $0).seconds } ?? 0
        printErr(String(
            format: "prefill: %d tokens, %.1f tokens/s; decode: %d tokens, %.1f tokens/s; finish: %@",
            done.promptTokens, Double(done.promptTokens) / max(prefillSeconds, 1e-9), done.completionTokens,
            Double(max(done.completionTokens - 1, 0)) / max(decodeSeconds, 1e-9), done.finishReason.rawValue))
    }
}

/// `shoal logits`: every position's logits of a prompt, for comparison with references.
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits", abstract: "Write the float32 logits of every prompt position to a safetensors file.")

    @Option(help: "Model folder (Hugging Face or Mistral layout) or GGUF file.") var model: String
    @Option(help: "Comma-separated token ids.") var ids: String
    @Option(help: "Output .safetensors file (tensor `logits`, shape [n, vocab]).") var out: String
    @Option(help: "Compute threads (default: one per core).") var threads = Engine.defaultThreads
    @OptionGroup var cluster: ClusterOptions

    func run() throws {
        try reportingErrors {
            let coordinator = try cluster.coordinator(folder: model, threads: threads)
            defer { withExtendedLifetime(coordinator) {} }
            let engine = coordinator.engine
            let list = try parseIDs(ids)
            let cache = KVCache(config: engine.model.config, capacity: list.count)
            let logits = try engine.model.forward(list, cache: cache, allLogits: true)
            try SafetensorsWriter.writeFloat32(
                path: out, tensors: [("logits", [list.count, engine.model.config.vocabSize], Array(logits))])
        }
    }
}
