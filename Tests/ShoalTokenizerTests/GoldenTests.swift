import Foundation
import ShoalTokenizer
import Testing

/// The Mistral v1 tokenizer against the ids and texts `sentencepiece` and `mistral_common` produced.
@Suite struct GoldenTests {
    @Test func modelSettings() throws {
        let tokenizer = try Fixtures.mistral()
        let fixture = try Fixtures.load(EncodeFixture.self, from: "encode.json")
        #expect(tokenizer.vocabSize == fixture.vocab_size)
        #expect(tokenizer.bosId == fixture.bos_id)
        #expect(tokenizer.eosId == fixture.eos_id)
        #expect(tokenizer.unkId == fixture.unk_id)
        #expect(tokenizer.piece(3) == "<0x00>" && tokenizer.piece(258) == "<0xFF>")
        #expect(tokenizer.pieceType(1) == .control && tokenizer.pieceType(0) == .unknown)
        #expect(tokenizer.pieceType(13) == .byte && tokenizer.pieceType(259) == .normal)
        #expect(tokenizer.score(259) == -1e9)
    }

    @Test func encodeMatchesEveryCase() throws {
        let tokenizer = try Fixtures.mistral()
        let fixture = try Fixtures.load(EncodeFixture.self, from: "encode.json")
        #expect(fixture.cases.count == 42)
        for c in fixture.cases {
            let ids = tokenizer.encode(c.text)
            #expect(ids == c.ids, "encode/\(c.name): pieces \(ids.map(tokenizer.piece)) expected \(c.pieces)")
            #expect(tokenizer.encode(c.text, bos: true) == c.ids_bos, "encode/\(c.name) with BOS")
            #expect(tokenizer.encode(c.text, bos: true, eos: true) == c.ids_bos_eos, "encode/\(c.name) with BOS and EOS")
            #expect(c.ids.map(tokenizer.piece) == c.pieces, "encode/\(c.name): piece(_:) of the expected ids")
        }
    }

    /// Every public case round-trips exactly (`roundtrip_exact` is true for all of them).
    @Test func decodeOfEncodedCasesGivesTheText() throws {
        let tokenizer = try Fixtures.mistral()
        for c in try Fixtures.load(EncodeFixture.self, from: "encode.json").cases {
            #expect(try tokenizer.decode(c.ids) == c.text, "encode/\(c.name): decode(ids)")
            #expect(try tokenizer.decode(c.ids_bos_eos) == c.text, "encode/\(c.name): decode(ids_bos_eos)")
        }
    }

    @Test func decodeMatchesEveryCase() throws {
        let tokenizer = try Fixtures.mistral()
        let fixture = try Fixtures.load(DecodeFixture.self, from: "decode.json")
        #expect(fixture.cases.count == 16)
        for c in fixture.cases {
            let text = try tokenizer.decode(c.ids)
            #expect(text == c.text, "decode/\(c.name): got \(Array(text.unicodeScalars)) expected \(Array(c.text.unicodeScalars))")
            // `==` on String is canonical equivalence; the bytes must match too.
            #expect(Array(text.utf8) == Array(c.text.utf8), "decode/\(c.name): UTF-8 bytes")
            #expect(throws: Never.self, "decode/\(c.name): ids are in range") { try tokenizer.validate(c.ids) }
        }
    }

    @Test func chatMatchesEveryCase() throws {
        let tokenizer = try Fixtures.mistral()
        let fixture = try Fixtures.load(ChatFixture.self, from: "chat.json")
        #expect(fixture.cases.count == 11)
        for c in fixture.cases {
            if let expected = c.ids {
                let ids = try #require(try? tokenizer.encodeChat(c.messages), "chat/\(c.name): refused, expected ids")
                #expect(ids == expected, "chat/\(c.name): pieces \(ids.map(tokenizer.piece))")
                if let prefix = c.prefix_ids {
                    #expect(ids.suffix(prefix.count).elementsEqual(prefix), "chat/\(c.name): prefix_ids at the end")
                }
            } else {
                #expect(c.error != nil, "chat/\(c.name): fixture has neither ids nor error")
                #expect(throws: ChatFormatError.self, "chat/\(c.name): mistral_common refused with \(c.error ?? "")") {
                    try tokenizer.encodeChat(c.messages)
                }
            }
        }
    }

    @Test func endsWithAssistantIsRefusedForTheRightReason() throws {
        let tokenizer = try Fixtures.mistral()
        let messages = [ChatMessage(role: .user, content: "Hi"), ChatMessage(role: .assistant, content: "Hello!")]
        #expect(throws: ChatFormatError.lastMessageNotUser) { try tokenizer.encodeChat(messages) }
    }

    @Test func fixtureFilesAreWhereTheTestsLook() throws {
        let directory = try Fixtures.tokenizerDirectory()
        for name in ["tokenizer.model.v1", "encode.json", "decode.json", "chat.json"] {
            #expect(FileManager.default.fileExists(atPath: directory.appendingPathComponent(name).path), "missing \(name)")
        }
    }
}
