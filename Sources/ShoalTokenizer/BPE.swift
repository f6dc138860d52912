// Encoding as sentencepiece does it: Normalizer::Normalize (normalizer.cc), then
// bpe::Model::SampleEncode (bpe_model.cc), then byte fallback (sentencepiece_processor.cc).

extension SentencePieceTokenizer {
    /// Encodes `text` exactly as `sentencepiece` (and `mistral_common`) do.
    ///
    /// - The text is normalized: a `▁` dummy prefix is prepended (when the model's `add_dummy_prefix`
    ///   is set and the text is not empty, even if it already starts with a space) and every space
    ///   becomes `▁`; runs of spaces are kept unless the model asks to remove extra whitespace.
    /// - The text is split into Unicode scalars (digits are never merged when the model has
    ///   `split_digits`), then the adjacent pair whose concatenation is the highest-scoring piece
    ///   merges first, leftmost on a tie, until no pair is a piece.
    /// - A scalar with no piece becomes the byte pieces of its UTF-8 (`<0x0A>` for a newline).
    /// - Text that looks like a control token (`<s>`, `</s>`, `[INST]`) is ordinary text.
    ///
    /// - Parameters:
    ///   - bos: Prepends `bosId` (when the model has one).
    ///   - eos: Appends `eosId` (when the model has one).
    public func encode(_ text: String, bos: Bool = false, eos: Bool = false) -> [Int] {
        var ids: [Int] = []
        if bos, bosId >= 0 { ids.append(bosId) }
        let normalized = normalize(text)
        if !normalized.isEmpty {
            precondition(normalized.count < Int(Int32.max), "text of \(normalized.count) bytes is too long to encode")
            var segmentation = Segmentation(text: normalized, tokenizer: self)
            segmentation.mergeAll()
            segmentation.appendIds(to: &ids)
        }
        if eos, eosId >= 0 { ids.append(eosId) }
        return ids
    }

    /// The identity normalizer with SentencePiece's whitespace handling, as UTF-8.
    func normalize(_ text: String) -> [UInt8] {
        let input = Array(text.utf8)
        var i = 0
        if removeExtraWhitespaces {
            while i < input.count, input[i] == 0x20 { i += 1 }
        }
        // Empty, or only spaces that were removed: no dummy prefix either.
        guard i < input.count else { return [] }

        let space = escapeWhitespaces ? Self.spaceSymbol : [0x20]
        var out: [UInt8] = []
        out.reserveCapacity(input.count + 3 * 8)
        if addDummyPrefix, !treatWhitespaceAsSuffix { out += space }
        var previousWasSpace = removeExtraWhitespaces
        for byte in input[i...] {
            if byte == 0x20 {
                // Only ever true when collapsing runs of spaces.
                if previousWasSpace { continue }
                out += space
                previousWasSpace = removeExtraWhitespaces
            } else {
                out.append(byte)
                previousWasSpace = false
            }
        }
        if removeExtraWhitespaces {
            while out.count >= space.count, out[(out.count - space.count)...].elementsEqual(space) {
                out.removeLast(space.count)
            }
        }
        if addDummyPrefix, treatWhitespaceAsSuffix { out += space }
        return out
    }
}

/// The symbols of one normalized text as a doubly linked list over byte ranges,
/// with a priority queue of candidate merges: O(n log n) for n scalars.
private struct Segmentation {
    let text: [UInt8]
    let tokenizer: SentencePieceTokenizer

    // Per symbol; a symbol merged into its left neighbour has `end == start`.
    var start: [Int32] = []
    var end: [Int32] = []
    var prev: [Int32] = []
    var next: [Int32] = []
    var frozen: [Bool] = []
    /// Vocabulary id of the symbol's current text, or -1 for a scalar with no piece.
    var ids: [Int32] = []
    var queue: MergeQueue
    /// For UNUSED pieces: how the most recent pair that formed it was split, as byte lengths.
    var unusedSplits: [Int32: (left: Int32, total: Int32)] = [:]

    init(text: [UInt8], tokenizer: SentencePieceTokenizer) {
        self.text = text
        self.tokenizer = tokenizer
        queue = MergeQueue(capacity: text.count)
        splitIntoSymbols()
    }

    /// One symbol per Unicode scalar, except that a user-defined piece is one frozen symbol.
    private mutating func splitIntoSymbols() {
        var i = 0
        while i < text.count {
            var length = min(Self.scalarLength(lead: text[i]), text.count - i)
            var isFrozen = false
            if let candidates = tokenizer.userDefinedByFirstByte[text[i]] {
                for candidate in candidates where candidate.count <= text.count - i
                    && text[i..<(i + candidate.count)].elementsEqual(candidate) {
                    length = candidate.count
                    isFrozen = true
                    break
                }
            }
            if tokenizer.splitDigits, !isFrozen, Self.isDecimalDigit(text[i..<(i + length)]) {
                isFrozen = true
            }
            let index = Int32(start.count)
            start.append(Int32(i))
            end.append(Int32(i + length))
            prev.append(index - 1)
            next.append(i + length < text.count ? index + 1 : -1)
            frozen.append(isFrozen)
            // Only mergeable pieces count: unlike SentencePiece's PieceToId, which looks at control
            // pieces first, a scalar that happens to spell one stays text.
            ids.append(tokenizer.mergeable[PieceKey(text[i..<(i + length)])] ?? -1)
            i += length
        }
    }

    mutating func mergeAll() {
        for right in start.indices.dropFirst() {
            addCandidate(left: Int32(right - 1), right: Int32(right))
        }
        while let top = queue.pop() {
            let (l, r) = (Int(top.left), Int(top.right))
            let leftLength = end[l] - start[l]
            let rightLength = end[r] - start[r]
            // Stale: one side was merged away, or grew, since this pair was queued.
            guard leftLength > 0, rightLength > 0, leftLength + rightLength == top.length else { continue }
            end[l] = end[r]
            ids[l] = top.id
            next[l] = next[r]
            if next[r] >= 0 { prev[Int(next[r])] = top.left }
            end[r] = start[r]
            addCandidate(left: prev[l], right: top.left)
            addCandidate(left: top.left, right: next[l])
        }
    }

    private mutating func addCandidate(left: Int32, right: Int32) {
        guard left >= 0, right >= 0, !frozen[Int(left)], !frozen[Int(right)] else { return }
        let from = Int(start[Int(left)]), to = Int(end[Int(right)])
        guard to - from <= tokenizer.maxPieceLength, let id = tokenizer.mergeable[PieceKey(text[from..<to])] else { return }
        queue.push(MergeCandidate(score: tokenizer.scores[Int(id)], left: left, right: right,
                                  length: Int32(to - from), id: id))
        if tokenizer.types[Int(id)] == .unused {
            unusedSplits[id] = (left: end[Int(left)] - start[Int(left)], total: Int32(to - from))
        }
    }

    /// Appends the final ids: UNUSED pieces split back into their parts, and scalars without a
    /// piece as byte pieces (or as one `<unk>` per run, without byte fallback).
    func appendIds(to output: inout [Int]) {
        var previousWasUnknown = false
        var pending: [(from: Int, to: Int, id: Int32)] = []
        var symbol: Int32 = 0
        while symbol >= 0 {
            let s = Int(symbol)
            pending.append((Int(start[s]), Int(end[s]), ids[s]))
            while let (from, to, id) = pending.popLast() {
                if id >= 0, tokenizer.types[Int(id)] == .unused, let split = unusedSplits[id], split.total == to - from {
                    let middle = from + Int(split.left)
                    // Right half first: the stack hands back the left half next.
                    pending.append((middle, to, tokenizer.mergeable[PieceKey(text[middle..<to])] ?? -1))
                    pending.append((from, middle, tokenizer.mergeable[PieceKey(text[from..<middle])] ?? -1))
                    continue
                }
                if id >= 0 {
                    output.append(Int(id))
                    previousWasUnknown = false
                } else if !tokenizer.byteFallback {
                    if !previousWasUnknown { output.append(tokenizer.unkId) }
                    previousWasUnknown = true
                } else {
                    for byte in text[from..<to] { output.append(Int(tokenizer.byteIds[Int(byte)])) }
                    previousWasUnknown = true
                }
            }
            symbol = next[s]
        }
    }

    /// Byte length of the UTF-8 sequence a lead byte starts (the text is valid UTF-8).
    private static func scalarLength(lead: UInt8) -> Int {
        switch lead {
        case ..<0xC0: 1
        case ..<0xE0: 2
        case ..<0xF0: 3
        default: 4
        }
    }

    /// The digits SentencePiece's `split_digits` keeps apart: ASCII 0-9 and fullwidth U+FF10...U+FF19.
    private static func isDecimalDigit(_ scalar: ArraySlice<UInt8>) -> Bool {
        let i = scalar.startIndex
        if scalar.count == 1 { return (0x30...0x39).contains(scalar[i]) }
        return scalar.count == 3 && scalar[i] == 0xEF && scalar[i + 1] == 0xBC && (0x90...0x99).contains(scalar[i + 2])
    }
}

/// A candidate merge of two adjacent symbols into the vocabulary piece `id`.
struct MergeCandidate {
    var score: Float
    /// Index of the left symbol; the leftmost pair wins a tie, as in SentencePiece.
    var left: Int32
    var right: Int32
    /// Byte length of the merged piece, to recognise a pair made stale by an earlier merge.
    var length: Int32
    var id: Int32

    /// Whether `self` merges before `other`: higher score first, then further left.
    @inline(__always)
    func precedes(_ other: MergeCandidate) -> Bool {
        score > other.score || (score == other.score && left < other.left)
    }
}

/// A binary max-heap of merge candidates, ordered by `MergeCandidate.precedes`.
struct MergeQueue {
    private var heap: [MergeCandidate] = []

    init(capacity: Int) {
        heap.reserveCapacity(capacity)
    }

    var isEmpty: Bool { heap.isEmpty }

    // Both sifts move a hole instead of swapping, inside one unsafe buffer access:
    // the queue is the encoder's hottest code.

    mutating func push(_ candidate: MergeCandidate) {
        heap.append(candidate)
        heap.withUnsafeMutableBufferPointer { h in
            var child = h.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard candidate.precedes(h[parent]) else { break }
                h[child] = h[parent]
                child = parent
            }
            h[child] = candidate
        }
    }

    mutating func pop() -> MergeCandidate? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        guard !heap.isEmpty else { return top }
        heap.withUnsafeMutableBufferPointer { h in
            var parent = 0
            while true {
                let left = 2 * parent + 1
                guard left < h.count else { break }
                let right = left + 1
                let best = right < h.count && h[right].precedes(h[left]) ? right : left
                guard h[best].precedes(last) else { break }
                h[parent] = h[best]
                parent = best
            }
            h[parent] = last
        }
        return top
    }
}
