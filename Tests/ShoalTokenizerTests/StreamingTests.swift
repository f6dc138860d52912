import ShoalTokenizer
import Testing
import ShoalTensor

/// Streaming detokenization gives, piece by piece, exactly what `decode` gives at once.
@Suite struct StreamingTests {
    /// All appends and the finish, concatenated; also checks each chunk is whole characters.
    private func streamed(_ ids: [Int], _ tokenizer: SentencePieceTokenizer) -> (text: String, chunks: [String]) {
        var stream = StreamingDetokenizer(tokenizer: tokenizer)
        var chunks = ids.map { stream.append($0) }
        chunks.append(stream.finish())
        return (chunks.joined(), chunks)
    }

    @Test func invariantOnEveryDecodeCase() throws {
        let tokenizer = try Fixtures.mistral()
        for c in try Fixtures.load(DecodeFixture.self, from: "decode.json").cases {
            let (text, _) = streamed(c.ids, tokenizer)
            #expect(try Array(text.utf8) == Array(tokenizer.decode(c.ids).utf8), "decode/\(c.name): stream != decode")
            #expect(Array(text.utf8) == Array(c.text.utf8), "decode/\(c.name): stream != fixture text")
        }
    }

    @Test func invariantOnEveryEncodeCase() throws {
        let tokenizer = try Fixtures.mistral()
        for c in try Fixtures.load(EncodeFixture.self, from: "encode.json").cases {
            for ids in [c.ids, c.ids_bos_eos] {
                let (text, _) = streamed(ids, tokenizer)
                #expect(try Array(text.utf8) == Array(tokenizer.decode(ids).utf8), "encode/\(c.name): stream != decode")
            }
        }
    }

    @Test func holdsBackAnUnfinishedCharacter() throws {
        let tokenizer = try Fixtures.mistral()
        // "▁I ▁love <0xF0><0x9F><0xA6><0x99>" = "I love🦙"
        let (_, chunks) = streamed([315, 2016, 243, 162, 169, 156], tokenizer)
        #expect(chunks == ["I", " love", "", "", "", "🦙", ""])
    }

    @Test func finishFlushesTruncatedBytesOneReplacementEach() throws {
        let tokenizer = try Fixtures.mistral()
        let (_, chunks) = streamed([22557, 243, 162], tokenizer)
        #expect(chunks == ["Hello", "", "", "\u{FFFD}\u{FFFD}"])
    }

    @Test func invalidBytesAreReleasedAtOnce() throws {
        let tokenizer = try Fixtures.mistral()
        // <0xFF> can never start a character; <0xE4> followed by "▁b" is cut short.
        let (_, chunks) = streamed([2607, 258, 231, 287], tokenizer)
        #expect(chunks == ["bad", "\u{FFFD}", "", "\u{FFFD} b", ""])
    }

    @Test func controlTokensKeepTheLeadingSpaceRule() throws {
        let tokenizer = try Fixtures.mistral()
        let (_, chunks) = streamed([1, 22557, 736, 2], tokenizer)
        #expect(chunks == ["", "Hello", " there", "", ""])
    }

    /// Random id sequences, heavy in byte pieces so that every UTF-8 error path is crossed.
    @Test func invariantOnRandomSequences() throws {
        let tokenizer = try Fixtures.mistral()
        var generator = SplitMix64(seed: 0x5EED)
        for round in 0..<300 {
            let count = Int(generator.next() % 24)
            let ids = (0..<count).map { _ -> Int in
                let r = generator.next()
                switch r % 4 {
                case 0, 1: return 3 + Int((r >> 8) % 256)                   // a byte piece
                case 2: return [0, 1, 2, 259, 28705, 13][Int((r >> 8) % 6)] // special and space pieces
                default: return Int((r >> 8) % UInt64(tokenizer.vocabSize))
                }
            }
            let (text, _) = streamed(ids, tokenizer)
            #expect(try Array(text.utf8) == Array(tokenizer.decode(ids).utf8), "random round \(round): \(ids)")
        }
    }
}

