import ShoalTokenizer
import Testing

/// A small BPE model: `<unk>`, `<s>`, `</s>`, optionally the 256 byte pieces, then `normal`
/// (scores as given) and `extra` pieces of any type, in that order.
func tinyTokenizer(
    _ normal: [(String, Float)],
    extra: [(String, Float, PieceType)] = [],
    byteFallback: Bool = true,
    addDummyPrefix: Bool = true,
    appending trailer: [UInt8] = []
) throws -> SentencePieceTokenizer {
    var pieces: [(piece: String, score: Float, type: PieceType)] = [("<unk>", 0, .unknown), ("<s>", 0, .control), ("</s>", 0, .control)]
    if byteFallback {
        for byte in 0..<256 { pieces.append((bytePiece(byte), 0, .byte)) }
    }
    pieces += normal.map { ($0.0, $0.1, .normal) }
    pieces += extra.map { ($0.0, $0.1, $0.2) }
    let bytes = SentencePieceModelWriter.serialize(pieces: pieces, byteFallback: byteFallback, addDummyPrefix: addDummyPrefix)
    return try SentencePieceTokenizer(modelData: bytes + trailer)
}

func bytePiece(_ byte: Int) -> String {
    let hex = String(byte, radix: 16, uppercase: true)
    return "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
}

/// Extra protobuf bytes that merge into the serialized model, as protobuf merges a repeated sub-message.
enum Trailer {
    /// TrainerSpec { split_digits: true }
    static let splitDigits: [UInt8] = [0x12, 0x03, 0xC8, 0x01, 0x01]
    /// NormalizerSpec { remove_extra_whitespaces: true }
    static let removeExtraWhitespaces: [UInt8] = [0x1A, 0x02, 0x20, 0x01]
    /// TrainerSpec { model_type: UNIGRAM }
    static let unigram: [UInt8] = [0x12, 0x02, 0x18, 0x01]
    /// NormalizerSpec { name: "nfkc", precompiled_charsmap: [1, 2] }
    static let charsmap: [UInt8] = [0x1A, 0x0A, 0x0A, 0x04] + Array("nfkc".utf8) + [0x12, 0x02, 0x01, 0x02]
}

/// The SentencePiece BPE rules on vocabularies small enough to reason about by hand.
@Suite struct BPERulesTests {
    /// Pieces in id order after the 259 fixed ones: 259 "▁", 260 "a", 261 "b", 262 "c", ...
    private func tokens(_ tokenizer: SentencePieceTokenizer, _ text: String) -> [String] {
        tokenizer.encode(text).map(tokenizer.piece)
    }

    @Test func highestScoringMergeComesFirst() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0), ("c", 0), ("ab", -2), ("bc", -1)])
        #expect(tokens(t, "abc") == ["▁", "a", "bc"])
        let u = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0), ("c", 0), ("ab", -1), ("bc", -2)])
        #expect(tokens(u, "abc") == ["▁", "ab", "c"])
    }

    @Test func tiesGoToTheLeftmostPair() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0), ("ab", -1), ("ba", -1)])
        #expect(tokens(t, "aba") == ["▁", "ab", "a"])
        #expect(tokens(t, "bab") == ["▁", "ba", "b"])
    }

    @Test func mergesContinueThroughLongerPieces() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0), ("▁a", -1), ("ab", -2), ("▁ab", -3), ("▁abab", -4)])
        #expect(tokens(t, "abab") == ["▁abab"])
        #expect(tokens(t, "ab ab") == ["▁ab", "▁ab"])
    }

    @Test func unusedPiecesAreSplitBackIntoTheirParts() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0), ("c", 0), ("abc", -2)], extra: [("ab", -1, .unused)])
        #expect(tokens(t, "ab") == ["▁", "a", "b"])
        #expect(tokens(t, "abc") == ["▁", "abc"])
    }

    @Test func userDefinedPiecesAreMatchedWholeAndNeverMerged() throws {
        let t = try tinyTokenizer([("▁", 0), ("x", 0), ("y", 0), ("x<", 5), ("▁x", -1)],
                                  extra: [("<t>", 0, .userDefined), ("<tag>", 0, .userDefined)])
        #expect(tokens(t, "x<tag>y") == ["▁x", "<tag>", "y"])
        #expect(tokens(t, "<t>x") == ["▁", "<t>", "x"])
    }

    @Test func controlPiecesAreNeverProducedFromText() throws {
        let t = try tinyTokenizer([("▁", 0), ("<", 0), ("s", 0), (">", 0), ("<s", -1)])
        #expect(tokens(t, "<s>") == ["▁", "<s", ">"])
        #expect(!t.encode("<s></s>").contains(1) && !t.encode("<s></s>").contains(2))
    }

    @Test func splitDigitsKeepsDigitsApart() throws {
        let vocabulary: [(String, Float)] = [("▁", 0), ("1", 0), ("2", 0), ("x", 0), ("12", -1), ("x1", -1), ("▁1", -2)]
        let plain = try tinyTokenizer(vocabulary)
        #expect(tokens(plain, "12") == ["▁", "12"])
        let split = try tinyTokenizer(vocabulary, appending: Trailer.splitDigits)
        #expect(tokens(split, "12") == ["▁", "1", "2"])
        #expect(tokens(split, "x12") == ["▁", "x", "1", "2"])
        #expect(tokens(split, "１２") == ["▁", "<0xEF>", "<0xBC>", "<0x91>", "<0xEF>", "<0xBC>", "<0x92>"])
    }

    @Test func unknownScalarsBecomeTheirUTF8Bytes() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0)])
        #expect(tokens(t, "a€\n") == ["▁", "a", "<0xE2>", "<0x82>", "<0xAC>", "<0x0A>"])
        #expect(try t.decode(t.encode("a€\n")) == "a€\n")
    }

    @Test func withoutByteFallbackARunOfUnknownsIsOneUnk() throws {
        let t = try tinyTokenizer([("▁", 0), ("a", 0), ("b", 0)], byteFallback: false)
        #expect(t.encode("a€€b") == [3, 4, 0, 5])
        #expect(t.encode("€a€") == [3, 0, 4, 0])
        #expect(try t.decode(t.encode("a€€b")) == "a ⁇ b")
    }

    /// `String` equality is canonical equivalence; piece lookup must not be.
    @Test func canonicallyEquivalentTextsAreDifferentPieces() throws {
        let t = try tinyTokenizer([("▁", 0), ("e", 0), ("\u{E9}", 0), ("▁\u{E9}", -1)])
        #expect(tokens(t, "\u{E9}") == ["▁\u{E9}"])
        #expect(tokens(t, "e\u{301}") == ["▁", "e", "<0xCC>", "<0x81>"])
    }

    @Test func dummyPrefixAndSpacesFollowTheModel() throws {
        let vocabulary: [(String, Float)] = [("▁", 0), ("a", 0), ("b", 0)]
        let mistralLike = try tinyTokenizer(vocabulary)
        #expect(tokens(mistralLike, "  a  b ") == ["▁", "▁", "▁", "a", "▁", "▁", "b", "▁"])
        #expect(mistralLike.encode("") == [])
        let noPrefix = try tinyTokenizer(vocabulary, addDummyPrefix: false)
        #expect(tokens(noPrefix, "a b") == ["a", "▁", "b"])
        #expect(try noPrefix.decode(noPrefix.encode("a b")) == "a b")
        let collapsing = try tinyTokenizer(vocabulary, appending: Trailer.removeExtraWhitespaces)
        #expect(tokens(collapsing, "  a   b  ") == ["▁", "a", "▁", "b"])
        #expect(collapsing.encode("   ") == [])
        #expect(try collapsing.decode(collapsing.encode("  a   b  ")) == "a b")
    }

    /// Long inputs must not go quadratic: a 256 kB run of one letter and 64 kB of prose.
    @Test func longInputsEncode() throws {
        let tokenizer = try Fixtures.mistral()
        let letters = String(repeating: "a", count: 1 << 18)
        #expect(try tokenizer.decode(tokenizer.encode(letters)) == letters)
        let prose = String(repeating: "The quick brown fox jumps over the lazy dog; 🦙 naïve café 123.\n", count: 1000)
        let ids = tokenizer.encode(prose)
        #expect(try tokenizer.decode(ids) == prose)
    }
}
