import ArgumentParser
import Foundation
import ShoalModel
import ShoalTensor
import ShoalTokenizer

/// `shoal tokenize`: text or a conversation to ids, as a JSON array.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize", abstract: "Print the token ids of a text or a chat conversation as a JSON array.")

    @Option(help: "tokenizer.model, tokenizer.model.v1, or a GGUF model file (its vocabulary)") var tokenizer: String
    @Flag(help: "Prepend the beginning-of-sequence id.") var bos = false
    @Flag(help: "Append the end-of-sequence id.") var eos = false
    @Option(help: "A JSON file of [{\"role\", \"content\", \"prefix\"?}] in the Mistral v1 chat format.") var chat: String?
    @Argument(help: "The text (may follow --).") var text: String?

    func run() throws {
        try reportingErrors {
            let tok = try loadTokenizer(tokenizer)
            let ids: [Int]
            switch (chat, text) {
            case let (path?, nil): ids = try tok.encodeChat(try readChat(path))
            case let (nil, text?): ids = tok.encode(text, bos: bos, eos: eos)
            default: throw UsageError.conflicting("give either TEXT or --chat FILE")
            }
            print(jsonArray(ids))
        }
    }
}

/// `shoal detokenize`: ids to text, as a JSON string.
struct DetokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detokenize", abstract: "Print the text of token ids as a JSON string.")

    @Option(help: "tokenizer.model, tokenizer.model.v1, or a GGUF model file (its vocabulary)") var tokenizer: String
    @Option(help: "Comma-separated ids, e.g. 1,2,3") var ids: String

    func run() throws {
        try reportingErrors {
            let tok = try loadTokenizer(tokenizer)
            let list = try parseIDs(ids)
            print(jsonString(try tok.decode(list)))  // refuses ids outside the vocabulary
        }
    }
}

/// Errors reading a conversation file.
enum ChatFileError: Error, CustomStringConvertible {
    case unreadable(String, String)

    var description: String {
        switch self {
        case let .unreadable(path, why): return "\(path): \(why)"
        }
    }
}

func readChat(_ path: String) throws -> [ChatMessage] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ChatFileError.unreadable(path, "cannot read the file")
    }
    do { return try JSONDecoder().decode([ChatMessage].self, from: data) } catch {
        throw ChatFileError.unreadable(path, "expected a JSON array of {\"role\": \"system|user|assistant\", \"content\": \"…\"}")
    }
}

/// A SentencePiece model file, or the vocabulary inside a GGUF model file.
func loadTokenizer(_ path: String) throws -> SentencePieceTokenizer {
    if GGUFFile.looksLikeGGUF(path) { return try Checkpoint(folder: path).loadTokenizer() }
    return try SentencePieceTokenizer(contentsOf: path)
}
