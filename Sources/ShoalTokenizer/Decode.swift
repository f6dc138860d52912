// Decoding as SentencePieceProcessor::Decode does it (sentencepiece_processor.cc):
// control pieces vanish, <unk> shows its surface, byte pieces are joined and read as UTF-8
// with one U+FFFD per byte that does not start a valid sequence (util.cc, DecodeUTF8).

extension SentencePieceTokenizer {
    /// Decodes ids to text exactly as `sentencepiece` (and `mistral_common` with the default
    /// `IGNORE` policy) do.
    ///
    /// - Control pieces (`<s>`, `</s>`) are dropped; `<unk>` becomes `" ⁇ "`.
    /// - `▁` becomes a space. One leading space is removed, only when the first piece that
    ///   produces text starts with `▁` (a leading `<0x20>` byte piece is kept).
    /// - Runs of byte pieces are joined and read as UTF-8; every byte that does not begin a
    ///   complete, valid sequence becomes its own U+FFFD (so a truncated 4-byte character at
    ///   the end gives one U+FFFD per byte present, unlike `String(decoding:as:)`).
    /// - An id outside `0..<vocabSize` is refused (`idOutOfRange`), as `sentencepiece` refuses it
    ///   ("piece id is out of range"), before anything is decoded.
    public func decode(_ ids: [Int]) throws(TokenizerError) -> String {
        try validate(ids)
        var state = DetokenizerState()
        var out: [UInt8] = []
        for id in ids { state.feed(id, tokenizer: self, into: &out) }
        state.finish(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

/// Strict UTF-8 reading, one sequence at a time: a sequence is accepted only when it is
/// complete, shortest-form, not a surrogate and at most U+10FFFF.
enum UTF8Reader {
    /// U+FFFD REPLACEMENT CHARACTER.
    static let replacementCharacter: [UInt8] = [0xEF, 0xBF, 0xBD]

    /// What the bytes at `i` hold.
    enum Step: Equatable {
        /// A valid scalar of `length` bytes.
        case scalar(length: Int)
        /// The byte at `i` cannot start a valid sequence, whatever follows.
        case invalid
        /// A valid beginning that runs into the end of `bytes`: later bytes decide.
        case incomplete
    }

    static func step(_ bytes: [UInt8], at i: Int) -> Step {
        let lead = bytes[i]
        if lead < 0x80 { return .scalar(length: 1) }
        // The second byte's range excludes overlong forms (E0, F0), surrogates (ED) and
        // scalars beyond U+10FFFF (F4); C0, C1 and F5...FF never start a sequence.
        let length: Int
        var secondLow: UInt8 = 0x80, secondHigh: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondLow = 0xA0
        case 0xED: length = 3; secondHigh = 0x9F
        case 0xE1...0xEF: length = 3
        case 0xF0: length = 4; secondLow = 0x90
        case 0xF4: length = 4; secondHigh = 0x8F
        case 0xF1...0xF3: length = 4
        default: return .invalid
        }
        for k in 1..<length {
            guard i + k < bytes.count else { return .incomplete }
            let byte = bytes[i + k]
            let (low, high) = k == 1 ? (secondLow, secondHigh) : (0x80, 0xBF)
            guard (low...high).contains(byte) else { return .invalid }
        }
        return .scalar(length: length)
    }
}
