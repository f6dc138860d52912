import Foundation
import ShoalTokenizer
import Testing

/// The mistral_common v1 rules beyond the fixture conversations.
@Suite struct ChatFormatTests {
    private func user(_ text: String) -> ChatMessage { ChatMessage(role: .user, content: text) }
    private func assistant(_ text: String, prefix: Bool = false) -> ChatMessage {
        ChatMessage(role: .assistant, content: text, prefix: prefix)
    }
    private func system(_ text: String) -> ChatMessage { ChatMessage(role: .system, content: text) }

    @Test func refusals() throws {
        let t = try Fixtures.mistral()
        #expect(throws: ChatFormatError.empty) { try t.encodeChat([]) }
        #expect(throws: ChatFormatError.mustStartWithUserOrSystem(.assistant)) { try t.encodeChat([assistant("Hi", prefix: true)]) }
        #expect(throws: ChatFormatError.lastMessageNotUser) { try t.encodeChat([user("Hi"), assistant("Hello")]) }
        #expect(throws: ChatFormatError.unexpectedRole(.system, after: .assistant, index: 2)) {
            try t.encodeChat([user("Hi"), assistant("Hello"), system("Be brief."), user("Bye")])
        }
        #expect(throws: ChatFormatError.emptyAssistantContent(index: 1)) { try t.encodeChat([user("Hi"), assistant(""), user("?")]) }
        #expect(throws: ChatFormatError.prefixNotLast(index: 1)) {
            try t.encodeChat([user("Hi"), assistant("Hel", prefix: true), user("?")])
        }
        #expect(throws: ChatFormatError.prefixOnNonAssistant(index: 0, role: .user)) {
            try t.encodeChat([ChatMessage(role: .user, content: "Hi", prefix: true)])
        }
        #expect(ChatFormatError.lastMessageNotUser.description.contains("last message"))
    }

    @Test func systemPromptGoesToTheFirstUserMessageOnly() throws {
        let t = try Fixtures.mistral()
        let ids = try t.encodeChat([system("A"), system("B"), user("Q1"), assistant("R1"), user("Q2")])
        let expected = [t.bosId] + t.encode("[INST] A\n\nB\n\nQ1 [/INST]") + t.encode("R1") + [t.eosId] + t.encode("[INST] Q2 [/INST]")
        #expect(ids == expected)
    }

    @Test func runsOfOneRoleAreMergedAndEmptyContentSkipped() throws {
        let t = try Fixtures.mistral()
        let ids = try t.encodeChat([user("a"), user(""), user("b"), assistant("c"), assistant("d", prefix: true)])
        #expect(ids == [t.bosId] + t.encode("[INST] a\n\nb [/INST]") + t.encode("c\n\nd"))
    }

    @Test func aSystemMessageEndsARunOfUserMessages() throws {
        let t = try Fixtures.mistral()
        let ids = try t.encodeChat([user("a"), system("S"), user("b")])
        #expect(ids == [t.bosId] + t.encode("[INST] S\n\na [/INST]") + t.encode("[INST] b [/INST]"))
    }

    @Test func anEmptyUserTurnIsAddedWhenTheUserDoesNotSpeakFirst() throws {
        let t = try Fixtures.mistral()
        #expect(try t.encodeChat([system("S")]) == [t.bosId] + t.encode("[INST] S\n\n [/INST]"))
        #expect(try t.encodeChat([assistant("Hi"), user("Q")])
            == [t.bosId] + t.encode("[INST]  [/INST]") + t.encode("Hi") + [t.eosId] + t.encode("[INST] Q [/INST]"))
    }

    @Test func messagesDecodeFromJSONWithOptionalPrefix() throws {
        let json = #"[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "He", "prefix": true}]"#
        let messages = try JSONDecoder().decode([ChatMessage].self, from: Data(json.utf8))
        #expect(messages == [user("Hi"), assistant("He", prefix: true)])
        let roundTrip = try JSONDecoder().decode([ChatMessage].self, from: JSONEncoder().encode(messages))
        #expect(roundTrip == messages)
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(ChatMessage.self, from: Data(#"{"role": "tool", "content": "x"}"#.utf8))
        }
    }
}

/// A Mistral v3 tokenizer (`[INST]` and `[/INST]` are control tokens 3 and 4, as in
/// mistral_common's v3 vocabulary): its chat format is not v1's, so chats are refused by name
/// rather than encoded with `[INST]` as text; plain text still encodes.
@Suite struct V3TokenizerTests {
    @Test func aV3TokenizerRefusesChatsAndEncodesText() throws {
        var pieces: [(piece: String, score: Float, type: PieceType)] = [
            ("<unk>", 0, .unknown), ("<s>", 0, .control), ("</s>", 0, .control),
            ("[INST]", 0, .control), ("[/INST]", 0, .control),
        ]
        for byte in 0..<256 { pieces.append((bytePiece(byte), 0, .byte)) }
        pieces += [("▁", -1, .normal), ("h", -2, .normal), ("i", -3, .normal), ("▁h", -4, .normal), ("▁hi", -5, .normal)]
        let v3 = try SentencePieceTokenizer(modelData: SentencePieceModelWriter.serialize(pieces: pieces))
        #expect(throws: ChatFormatError.unsupportedTokenizer(controlToken: "[INST]", id: 3)) {
            try v3.encodeChat([ChatMessage(role: .user, content: "hi")])
        }
        #expect(v3.encode("hi", bos: true, eos: false) == [1, pieces.firstIndex { $0.piece == "▁hi" }!])
    }
}
