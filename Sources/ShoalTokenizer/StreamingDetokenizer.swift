// The decoding loop of SentencePieceProcessor::Decode (sentencepiece_processor.cc), one id
// at a time; `decode` (Decode.swift) runs the same state machine over a whole sequence.

/// Incremental detokenization for streaming: text is released as soon as it is final.
///
/// `append(_:)` returns the text that became complete (whole UTF-8 characters), with the same
/// leading-space rule as `decode` of the whole sequence; `finish()` flushes what remains
/// (each byte of an unfinished character becomes U+FFFD). Concatenating every `append` and
/// the `finish` gives exactly `tokenizer.decode(ids)`.
///
/// ```swift
/// var stream = StreamingDetokenizer(tokenizer: tokenizer)
/// for id in generated { print(stream.append(id), terminator: "") }
/// print(stream.finish())
/// ```
public struct StreamingDetokenizer: Sendable {
    private let tokenizer: SentencePieceTokenizer
    private var state = DetokenizerState()

    /// Starts an empty stream.
    public init(tokenizer: SentencePieceTokenizer) {
        self.tokenizer = tokenizer
    }

    /// Feeds one id and returns the text it completes, possibly empty (a control token, or
    /// the first bytes of a multi-byte character split over byte pieces).
    public mutating func append(_ id: Int) -> String {
        var out: [UInt8] = []
        state.feed(id, tokenizer: tokenizer, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Ends the stream and returns the text still held back. Ids appended afterwards continue
    /// the same text (their leading `▁` is kept); start a new stream for a new text.
    public mutating func finish() -> String {
        var out: [UInt8] = []
        state.finish(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

/// The decoder's state between ids, shared by `decode` and `StreamingDetokenizer` so that
/// streaming and whole-sequence decoding cannot disagree.
struct DetokenizerState: Sendable {
    /// Byte-piece bytes not yet written: at most the start of one incomplete UTF-8 sequence.
    private var pendingBytes: [UInt8] = []
    /// SentencePiece's `is_bos_ws`: the next text piece may still lose its leading `▁`.
    private var atStartOfText = true
    /// The previous piece had its leading `▁` removed.
    private var removedLeadingSpace = false
    private var wroteText = false

    /// Writes the text `id` completes. Bytes of an unfinished UTF-8 sequence stay pending
    /// until a later byte settles them or `finish` flushes them.
    mutating func feed(_ id: Int, tokenizer: SentencePieceTokenizer, into out: inout [UInt8]) {
        let inVocabulary = tokenizer.types.indices.contains(id)
        if inVocabulary, tokenizer.types[id] == .byte {
            pendingBytes.append(UInt8(truncatingIfNeeded: tokenizer.byteValues[id]))
            flushBytes(final: false, into: &out)
            return
        }
        flushBytes(final: true, into: &out)
        if removedLeadingSpace || wroteText { atStartOfText = false }

        removedLeadingSpace = false
        let surface: ArraySlice<UInt8>
        if !inVocabulary {
            surface = tokenizer.surfaces[tokenizer.unkId][...]
        } else if atStartOfText, tokenizer.startsWithSpaceSymbol[id],
                  tokenizer.addDummyPrefix || tokenizer.removeExtraWhitespaces {
            // The `▁` was the dummy prefix encode added; it is already a space in `surfaces`.
            surface = tokenizer.surfaces[id].dropFirst()
            // With extra whitespace removed, every leading space piece goes, not only the first.
            removedLeadingSpace = !tokenizer.removeExtraWhitespaces
        } else {
            surface = tokenizer.surfaces[id][...]
        }
        out += surface
        if !surface.isEmpty { wroteText = true }
    }

    /// Writes whatever is pending; incomplete UTF-8 becomes one U+FFFD per byte.
    mutating func finish(into out: inout [UInt8]) {
        flushBytes(final: true, into: &out)
    }

    private mutating func flushBytes(final: Bool, into out: inout [UInt8]) {
        var i = 0
        scan: while i < pendingBytes.count {
            switch UTF8Reader.step(pendingBytes, at: i) {
            case .scalar(let length):
                out += pendingBytes[i..<(i + length)]
                i += length
            case .invalid:
                out += UTF8Reader.replacementCharacter
                i += 1
            case .incomplete:
                guard final else { break scan }
                out += UTF8Reader.replacementCharacter
                i += 1
            }
        }
        guard i > 0 else { return }
        wroteText = true
        pendingBytes.removeFirst(i)
    }
}
