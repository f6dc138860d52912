import SwiftProtobuf

/// Writes a SentencePiece `ModelProto` (the `tokenizer.model` wire format), so that a project
/// tool can generate a tokenizer for random-weight demo checkpoints.
public enum SentencePieceModelWriter {
    /// The smallest vocabulary `synthetic(vocabSize:)` can build: `<unk>`, `<s>`, `</s>`,
    /// 256 byte pieces, `▁` and the 94 printable ASCII characters.
    public static let minimumSyntheticVocabSize = 3 + 256 + 1 + 94

    /// Serializes pieces as a BPE `ModelProto` with the identity normalizer and Mistral's
    /// whitespace settings (spaces escaped as `▁`, runs of spaces kept).
    ///
    /// - Parameters:
    ///   - pieces: The vocabulary in id order. With `byteFallback` it must hold the 256 byte
    ///     pieces `<0x00>`...`<0xFF>`; it must hold exactly one `.unknown` piece.
    ///   - byteFallback: Whether characters without a piece become byte pieces.
    ///   - addDummyPrefix: Whether encoding prepends `▁` to the text.
    public static func serialize(
        pieces: [(piece: String, score: Float, type: PieceType)],
        byteFallback: Bool = true,
        addDummyPrefix: Bool = true
    ) -> [UInt8] {
        func id(of name: String, type: PieceType) -> Int32 {
            Int32(pieces.firstIndex { $0.type == type && $0.piece == name } ?? -1)
        }

        var model = Sentencepiece_ModelProto()
        model.pieces = pieces.map { piece in
            var entry = Sentencepiece_ModelProto.SentencePiece()
            entry.piece = piece.piece
            entry.score = piece.score
            entry.type = Int32(piece.type.rawValue)
            return entry
        }
        model.trainerSpec.modelType = 2  // BPE
        model.trainerSpec.vocabSize = Int32(clamping: pieces.count)
        model.trainerSpec.byteFallback = byteFallback
        model.trainerSpec.unkID = Int32(pieces.firstIndex { $0.type == .unknown } ?? 0)
        model.trainerSpec.bosID = id(of: "<s>", type: .control)
        model.trainerSpec.eosID = id(of: "</s>", type: .control)
        model.trainerSpec.padID = -1
        model.normalizerSpec.name = "identity"
        model.normalizerSpec.addDummyPrefix = addDummyPrefix
        model.normalizerSpec.removeExtraWhitespaces = false
        model.normalizerSpec.escapeWhitespaces = true
        // Serializing a message of plain fields cannot fail (no required fields, no Any).
        return try! model.serializedBytes()
    }

    /// A synthetic BPE vocabulary of exactly `vocabSize` pieces, serialized; deterministic.
    ///
    /// Ids 0...2 are `<unk>`, `<s>`, `</s>`; ids 3...258 the byte pieces (`id = 3 + byte`);
    /// then `▁`, the printable ASCII characters, and merges with strictly descending scores:
    /// common English words with and without `▁`, frequent letter pairs and suffixes, then all
    /// lowercase strings by length. Every piece longer than one character comes after all
    /// its prefixes, so BPE can always build it (a `▁word` piece encodes `"word"` as one token).
    ///
    /// - Precondition: `vocabSize >= minimumSyntheticVocabSize`.
    public static func synthetic(vocabSize: Int) -> [UInt8] {
        precondition(vocabSize >= minimumSyntheticVocabSize,
                     "a synthetic vocabulary needs at least \(minimumSyntheticVocabSize) pieces, not \(vocabSize)")
        var pieces: [(piece: String, score: Float, type: PieceType)] = [
            ("<unk>", 0, .unknown), ("<s>", 0, .control), ("</s>", 0, .control),
        ]
        for byte in 0..<256 {
            let hex = String(byte, radix: 16, uppercase: true)
            pieces.append(("<0x\(hex.count == 1 ? "0" + hex : hex)>", 0, .byte))
        }
        let merges = SyntheticMerges(capacity: vocabSize - pieces.count)
        for (index, text) in merges.pieces.enumerated() {
            pieces.append((text, -Float(index), .normal))
        }
        return serialize(pieces: pieces)
    }
}

/// The NORMAL pieces of the synthetic vocabulary, most "frequent" first, closed under prefixes.
private struct SyntheticMerges {
    private(set) var pieces: [String] = []
    private var seen: Set<String> = []
    private let capacity: Int

    private static let letters = Array("abcdefghijklmnopqrstuvwxyz")
    private static let words = """
        the of and to a in is you that it he was for on are as with his they I at be this have from \
        or one had by word but not what all were we when your can said there use an each which she \
        do how their if will up other about out many then them these so some her would make like him \
        into time has look two more write go see number no way could people my than first water been \
        call who its now find long down day did get come made may part over new sound take only little \
        work know place year live me back give most very after thing our just name good sentence man \
        think say great where help through much before line right too mean old any same tell boy follow \
        came want show also around form three small set put end does another well large must big even \
        such because turn here why ask went men read need land different home us move try kind hand \
        picture again change off play spell air away animal house point page letter mother answer found \
        study still learn should world hello model token data code function return value string number \
        The A In It This That He She We They You What When Where Why How If And But For Hello World
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    private static let fragments = """
        th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve \
        co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur ing ion tion ed ly er est ment ness \
        able ous ive ful less al ity ies s ers ings ation
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)

    init(capacity: Int) {
        self.capacity = capacity
        add("\u{2581}")
        for ascii in UInt8(0x21)...UInt8(0x7E) { add(String(UnicodeScalar(ascii))) }
        for word in Self.words { add("\u{2581}" + word) }
        for fragment in Self.fragments { add(fragment) }
        for word in Self.words { add(word) }
        // Then every lowercase string, shortest first, with and without a leading `▁`.
        var length = 1
        while pieces.count < capacity {
            for text in Self.lowercaseStrings(length: length) where pieces.count < capacity {
                add("\u{2581}" + text)
            }
            for text in Self.lowercaseStrings(length: length + 1) where pieces.count < capacity {
                add(text)
            }
            length += 1
        }
    }

    /// Adds `text` after its missing prefixes, while there is room.
    private mutating func add(_ text: String) {
        let scalars = Array(text.unicodeScalars)
        for count in 1...scalars.count {
            guard pieces.count < capacity else { return }
            var prefix = String.UnicodeScalarView()
            prefix.append(contentsOf: scalars[..<count])
            let piece = String(prefix)
            if seen.insert(piece).inserted { pieces.append(piece) }
        }
    }

    /// All strings of `length` lowercase letters, in lexicographic order.
    private static func lowercaseStrings(length: Int) -> some Sequence<String> {
        var digits = [Int](repeating: 0, count: length)
        var finished = false
        return AnySequence {
            AnyIterator<String> {
                guard !finished else { return nil }
                let text = String(digits.map { letters[$0] })
                var position = length - 1
                while position >= 0 {
                    digits[position] += 1
                    if digits[position] < letters.count { break }
                    digits[position] = 0
                    position -= 1
                }
                if position < 0 { finished = true }
                return text
            }
        }
    }
}
