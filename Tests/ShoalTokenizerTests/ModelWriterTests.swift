import ShoalTokenizer
import Testing

/// `SentencePieceModelWriter` output reads back as the same model.
@Suite struct ModelWriterTests {
    @Test func serializeThenParseKeepsPiecesScoresAndTypes() throws {
        var pieces: [(piece: String, score: Float, type: PieceType)] = [
            ("<unk>", 0, .unknown), ("<s>", 0, .control), ("</s>", 0, .control),
        ]
        for byte in 0..<256 { pieces.append((bytePiece(byte), 0, .byte)) }
        pieces += [
            ("▁▁", -1e9, .normal), ("▁", -0.5, .normal), ("a", -1.25, .normal), ("é", 3.5, .normal),
            ("e\u{301}", 2, .normal), ("🦙", -31740, .normal), ("<mask>", 0, .userDefined),
            ("<reserved>", 0, .unused), ("<ctl>", 0, .control), ("nan-free", .greatestFiniteMagnitude, .normal),
        ]
        let tokenizer = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.serialize(pieces: pieces))
        #expect(tokenizer.vocabSize == pieces.count)
        for (id, expected) in pieces.enumerated() {
            #expect(Array(tokenizer.piece(id).utf8) == Array(expected.piece.utf8), "piece \(id)")
            #expect(tokenizer.score(id) == expected.score, "score of \(expected.piece)")
            #expect(tokenizer.pieceType(id) == expected.type, "type of \(expected.piece)")
        }
        #expect(tokenizer.unkId == 0 && tokenizer.bosId == 1 && tokenizer.eosId == 2)
    }

    @Test func withoutByteFallbackOrSpecialTokens() throws {
        let pieces: [(piece: String, score: Float, type: PieceType)] = [("▁", 0, .normal), ("<unk>", 0, .unknown), ("a", 0, .normal)]
        let tokenizer = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.serialize(pieces: pieces, byteFallback: false))
        #expect(tokenizer.unkId == 1 && tokenizer.bosId == -1 && tokenizer.eosId == -1)
        #expect(tokenizer.encode("aé", bos: true, eos: true) == [0, 2, 1])
    }

    @Test func syntheticVocabularyHasTheAdvertisedLayout() throws {
        let bytes = SentencePieceModelWriter.synthetic(vocabSize: 32000)
        #expect(bytes == SentencePieceModelWriter.synthetic(vocabSize: 32000), "deterministic")
        let tokenizer = try SentencePieceTokenizer(modelData: bytes)
        #expect(tokenizer.vocabSize == 32000)
        #expect(tokenizer.unkId == 0 && tokenizer.bosId == 1 && tokenizer.eosId == 2)
        #expect((0..<256).allSatisfy { tokenizer.piece(3 + $0) == bytePiece($0) && tokenizer.pieceType(3 + $0) == .byte })
        #expect(tokenizer.piece(259) == "▁")
        let normal = 259..<32000
        #expect(normal.allSatisfy { tokenizer.pieceType($0) == .normal })
        #expect(normal.dropFirst().allSatisfy { tokenizer.score($0) < tokenizer.score($0 - 1) }, "strictly descending scores")
        #expect(Set(normal.map { tokenizer.piece($0) }).count == normal.count, "no duplicates")
    }

    /// Every merged piece comes after all its prefixes, so BPE can build it: a `▁word` piece
    /// encodes `word` as that single piece.
    @Test func syntheticMergesAreReachable() throws {
        let tokenizer = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.synthetic(vocabSize: 32000))
        var idOf: [String: Int] = [:]
        for id in 259..<tokenizer.vocabSize {
            let piece = tokenizer.piece(id)
            let scalars = Array(piece.unicodeScalars)
            for count in 1..<scalars.count {
                var prefix = String.UnicodeScalarView()
                prefix.append(contentsOf: scalars[..<count])
                #expect(idOf[String(prefix)] != nil, "prefix \(String(prefix)) of \(piece) comes before it")
            }
            idOf[piece] = id
            if scalars.count > 1, scalars[0] == "\u{2581}" {
                let word = String(piece.unicodeScalars.dropFirst())
                #expect(tokenizer.encode(word) == [id], "\(word) encodes as \(piece)")
            }
        }
        #expect(idOf["▁the"] != nil && idOf["▁Hello"] != nil && idOf["ing"] != nil)
    }

    @Test func syntheticRoundTripsText() throws {
        let tokenizer = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.synthetic(vocabSize: 32000))
        let sentences = [
            "Hello, world! The quick brown fox jumps over the lazy dog.",
            "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
            "  leading and trailing spaces  ", "Größenwahn und Straßenbahn: Übermäßig schöne Äpfel.",
            "你好，世界！こんにちは 안녕하세요", "Emoji: 👨‍👩‍👧‍👦 🇫🇷 🦙 e\u{301}", "tabs\tand\r\nnewlines 2024-01-15",
        ]
        for sentence in sentences {
            let ids = tokenizer.encode(sentence, bos: true, eos: true)
            #expect(ids.first == 1 && ids.last == 2)
            #expect(try Array(tokenizer.decode(ids).utf8) == Array(sentence.utf8), "round trip of \(sentence)")
        }
        let english = tokenizer.encode("the people of the world")
        #expect(english.count == 5, "common words are single pieces: \(english.map(tokenizer.piece))")
    }

    @Test func syntheticVocabularySizes() throws {
        for size in [SentencePieceModelWriter.minimumSyntheticVocabSize, 1000, 40000] {
            let tokenizer = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.synthetic(vocabSize: size))
            #expect(tokenizer.vocabSize == size)
            #expect(try tokenizer.decode(tokenizer.encode("Hello there, 42!")) == "Hello there, 42!")
        }
    }
}
