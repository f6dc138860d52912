import Foundation
import ShoalTokenizer
import Testing

/// Finds and loads the golden files in `shared/fixtures/tokenizer/`, next to the repository.
///
/// The repository root is three levels above this file; the fixtures sit beside it in
/// `../shared/fixtures`. Symlinks are resolved first because a dev package may link this folder
/// in; `SHOAL_FIXTURES` (pointing at `shared/fixtures`) overrides both. A missing fixture is
/// a test failure, never a skip.
enum Fixtures {
    struct Missing: Error, CustomStringConvertible {
        var tried: [String]
        var description: String {
            "tokenizer fixtures not found; tried \(tried.joined(separator: ", ")). "
                + "Set SHOAL_FIXTURES to the shared/fixtures directory."
        }
    }

    static func tokenizerDirectory(filePath: String = #filePath) throws -> URL {
        var candidates: [URL] = []
        if let override = ProcessInfo.processInfo.environment["SHOAL_FIXTURES"], !override.isEmpty {
            candidates.append(URL(fileURLWithPath: override))
        }
        let file = URL(fileURLWithPath: filePath)
        for source in [file.resolvingSymlinksInPath(), file] {
            let repositoryRoot = source.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            candidates.append(repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared/fixtures"))
        }
        for fixtures in candidates {
            let directory = fixtures.appendingPathComponent("tokenizer")
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("tokenizer.model.v1").path) {
                return directory
            }
        }
        throw Missing(tried: candidates.map { $0.appendingPathComponent("tokenizer").path })
    }

    static func url(_ name: String) throws -> URL {
        try tokenizerDirectory().appendingPathComponent(name)
    }

    /// The Mistral v1 tokenizer, loaded once.
    static func mistral() throws -> SentencePieceTokenizer {
        try cache.withLock { cached in
            if let cached { return cached }
            let tokenizer = try SentencePieceTokenizer(contentsOf: url("tokenizer.model.v1").path)
            cached = tokenizer
            return tokenizer
        }
    }

    static func modelBytes() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: url("tokenizer.model.v1")))
    }

    static func load<T: Decodable>(_ type: T.Type, from name: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: url(name)))
    }

    private static let cache = Locked<SentencePieceTokenizer?>(nil)
}

/// A value behind a lock, for the fixture cache shared by parallel tests.
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

// The parts of the fixture files the tests read.

struct EncodeFixture: Decodable {
    struct Case: Decodable {
        var name: String
        var text: String
        var ids: [Int]
        var ids_bos: [Int]
        var ids_bos_eos: [Int]
        var pieces: [String]
    }
    var vocab_size: Int
    var bos_id: Int
    var eos_id: Int
    var unk_id: Int
    var cases: [Case]
}

struct DecodeFixture: Decodable {
    struct Case: Decodable {
        var name: String
        var ids: [Int]
        var text: String
    }
    var cases: [Case]
}

struct ChatFixture: Decodable {
    struct Case: Decodable {
        var name: String
        var messages: [ChatMessage]
        var ids: [Int]?
        var prefix_ids: [Int]?
        var error: String?
    }
    var cases: [Case]
}
