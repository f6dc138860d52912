import ShoalTokenizer
import Testing
import ShoalTensor

/// Bad model bytes throw `TokenizerError`; none of them may trap.
@Suite struct ModelLoadingTests {
    private func loadError(_ bytes: [UInt8]) -> TokenizerError? {
        do {
            _ = try SentencePieceTokenizer(modelData: bytes)
            return nil
        } catch let error as TokenizerError {
            return error
        } catch {
            Issue.record("unexpected error type \(type(of: error)): \(error)")
            return nil
        }
    }

    @Test func emptyBytesThrow() {
        #expect(loadError([]) != nil)
    }

    @Test func truncatedModelsThrow() throws {
        let model = try Fixtures.modelBytes()
        for length in [1, 2, 3, 7, 100, 1000, 4096, model.count / 2, model.count - 600, model.count - 100, model.count - 1] {
            #expect(loadError(Array(model[..<length])) != nil, "truncated to \(length) of \(model.count) bytes")
        }
    }

    @Test func randomBytesThrow() {
        var generator = SplitMix64(seed: 42)
        for round in 0..<300 {
            let count = Int(generator.next() % 2048)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            #expect(loadError(bytes) != nil, "random round \(round), \(count) bytes")
        }
    }

    /// Corrupted copies of the real model either load or throw; loading ones still encode and decode.
    @Test func corruptedModelsNeverTrap() throws {
        let model = try Fixtures.modelBytes()
        var generator = SplitMix64(seed: 7)
        for _ in 0..<40 {
            var bytes = model
            for _ in 0..<8 {
                bytes[Int(generator.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: generator.next())
            }
            if let tokenizer = try? SentencePieceTokenizer(modelData: bytes) {
                _ = try tokenizer.decode(tokenizer.encode("Hello, world! 🦙 123"))
            }
        }
    }

    @Test func specificRefusals() throws {
        let base: [(String, Float)] = [("▁", 0), ("a", 0)]
        #expect(throws: TokenizerError.unsupportedModelType(1)) {
            try tinyTokenizer(base, appending: Trailer.unigram)
        }
        #expect(throws: TokenizerError.unsupportedNormalizer("nfkc")) {
            try tinyTokenizer(base, appending: Trailer.charsmap)
        }
        let noUnknown: [(piece: String, score: Float, type: PieceType)] = [("▁", 0, .normal), ("a", 0, .normal)]
        #expect(throws: TokenizerError.self) {
            try SentencePieceTokenizer(modelData: SentencePieceModelWriter.serialize(pieces: noUnknown, byteFallback: false))
        }
        #expect(throws: TokenizerError.self, "duplicate piece") { try tinyTokenizer(base + [("a", -1)]) }
        #expect(throws: TokenizerError.self, "empty piece") { try tinyTokenizer(base + [("", -1)]) }
        #expect(throws: TokenizerError.self, "two <unk>") { try tinyTokenizer(base, extra: [("<unk2>", 0, .unknown)]) }
        #expect(throws: TokenizerError.self, "byte piece without byte_fallback") {
            try tinyTokenizer(base, extra: [("<0x41>", 0, .byte)], byteFallback: false)
        }
        #expect(throws: TokenizerError.self, "badly spelled byte piece") {
            try tinyTokenizer(base, extra: [("<0x4g>", 0, .byte)])
        }
        let missingBytes: [(piece: String, score: Float, type: PieceType)] = [("<unk>", 0, .unknown), ("<0x00>", 0, .byte)]
        #expect(throws: TokenizerError.self, "byte_fallback with 1 of 256 byte pieces") {
            try SentencePieceTokenizer(modelData: SentencePieceModelWriter.serialize(pieces: missingBytes))
        }
    }

    @Test func wrongWireTypeForAKnownField() {
        // ModelProto { pieces: SentencePiece { piece: varint 5 } }: protobuf keeps a field of
        // the wrong wire type as an unknown field, so the model is refused for what it lacks
        // (here: no trainer spec, so the default model type, UNIGRAM).
        #expect(loadError([0x0A, 0x02, 0x08, 0x05]) == .unsupportedModelType(1))
        // A varint that never ends.
        #expect(loadError([0x08] + Array(repeating: 0xFF, count: 12)) != nil)
        // A length that points past the end.
        #expect(loadError([0x0A, 0x7F, 0x00]) != nil)
    }

    @Test func missingFileIsUnreadable() {
        let error = #expect(throws: TokenizerError.self) {
            try SentencePieceTokenizer(contentsOf: "/nonexistent/tokenizer.model")
        }
        guard case .unreadable(let path, _) = error else {
            Issue.record("expected .unreadable, got \(String(describing: error))")
            return
        }
        #expect(path == "/nonexistent/tokenizer.model")
    }

    @Test func idsOutsideTheVocabulary() throws {
        let tokenizer = try Fixtures.mistral()
        #expect(throws: TokenizerError.idOutOfRange(id: 32000, vocabSize: 32000)) { try tokenizer.validate([1, 32000]) }
        #expect(throws: TokenizerError.idOutOfRange(id: -1, vocabSize: 32000)) { try tokenizer.validate([-1]) }
        // sentencepiece refuses the id ("piece id is out of range"), so does decode.
        #expect(throws: TokenizerError.idOutOfRange(id: 32000, vocabSize: 32000)) { try tokenizer.decode([22557, 32000, 1526]) }
        #expect(throws: TokenizerError.idOutOfRange(id: -1, vocabSize: 32000)) { try tokenizer.decode([-1]) }
        #expect(tokenizer.piece(-5) == "<unk>")
    }
}
