// The mistral_common v1 chat format (MistralTokenizer.v1().encode_chat_completion): the
// request validator (protocol/instruct/validator.py), the normalizer that merges messages
// (protocol/instruct/normalize.py) and InstructTokenizerV1 (tokens/tokenizers/instruct.py).

/// One message of a conversation.
public struct ChatMessage: Codable, Sendable, Equatable {
    /// Who speaks.
    public enum Role: String, Codable, Sendable {
        /// Instructions for the assistant; v1 has no system tokens, so they go in front of the first user message.
        case system
        /// The person asking.
        case user
        /// The model's earlier replies.
        case assistant
    }

    /// Who speaks.
    public var role: Role
    /// The text, used as is (not stripped).
    public var content: String
    /// On a final assistant message: the reply to continue, so no `</s>` closes it.
    /// Optional in JSON (`"prefix"`), false when absent.
    public var prefix: Bool

    /// A message; `prefix` only makes sense on a final assistant message.
    public init(role: Role, content: String, prefix: Bool = false) {
        self.role = role
        self.content = content
        self.prefix = prefix
    }

    private enum CodingKeys: String, CodingKey {
        case role, content, prefix
    }

    /// Decodes `{"role": ..., "content": ..., "prefix": ...}`, with `prefix` optional.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        role = try container.decode(Role.self, forKey: .role)
        content = try container.decode(String.self, forKey: .content)
        prefix = try container.decodeIfPresent(Bool.self, forKey: .prefix) ?? false
    }
}

extension SentencePieceTokenizer {
    /// Encodes a conversation in the mistral_common v1 format (Mistral 7B / Mixtral 8x7B Instruct):
    /// `<s>`, then each user turn as `encode("[INST] " + content + " [/INST]")` (plain text, so
    /// `[INST]` is three ordinary pieces) and each assistant turn as `encode(content)` + `</s>`
    /// (no `</s>` after a final assistant message with `prefix`).
    ///
    /// System messages are joined with "\n\n" and put in front of the first user message;
    /// consecutive messages of one role are merged with "\n\n".
    ///
    /// - Throws: `ChatFormatError` when mistral_common would refuse the conversation.
    public func encodeChat(_ messages: [ChatMessage]) throws -> [Int] {
        // A v3 tokenizer (`tokenizer.model.v3`) has `[INST]` as a control token: its chat
        // format puts control ids where v1 puts text, so v1's encoding would be wrong for it.
        if let marker = chatMarkerControlId {
            throw ChatFormatError.unsupportedTokenizer(controlToken: pieces[marker], id: marker)
        }
        try ChatFormatV1.validate(messages)
        let (systemPrompt, turns) = ChatFormatV1.merge(messages)
        var ids = bosId >= 0 ? [bosId] : []
        for (index, turn) in turns.enumerated() {
            switch turn.role {
            case .user:
                // `merge` guarantees the first turn is the user's.
                let content = index == 0 ? systemPrompt.map { $0 + "\n\n" + turn.content } ?? turn.content : turn.content
                ids += encode("[INST] " + content + " [/INST]")
            case .assistant:
                ids += encode(turn.content)
                if !turn.prefix, eosId >= 0 { ids.append(eosId) }
            case .system:
                continue
            }
        }
        return ids
    }
}

/// The rules of the v1 format, apart from the tokenizer.
enum ChatFormatV1 {
    /// mistral_common's request validation: structure first, then each message's content.
    static func validate(_ messages: [ChatMessage]) throws(ChatFormatError) {
        guard let last = messages.last else { throw .empty }
        if messages.count == 1, last.role == .assistant {
            throw .mustStartWithUserOrSystem(last.role)
        }
        // A final system message is accepted, as mistral_common accepts it.
        if messages.count > 1, last.role == .assistant, !last.prefix {
            throw .lastMessageNotUser
        }
        for index in messages.indices.dropFirst()
        where messages[index].role == .system && messages[index - 1].role == .assistant {
            throw .unexpectedRole(.system, after: .assistant, index: index)
        }
        for (index, message) in messages.enumerated() {
            if message.prefix, message.role != .assistant {
                throw .prefixOnNonAssistant(index: index, role: message.role)
            }
            guard message.role == .assistant else { continue }
            if message.content.isEmpty { throw .emptyAssistantContent(index: index) }
            if message.prefix, index != messages.count - 1 { throw .prefixNotLast(index: index) }
        }
    }

    /// mistral_common's normalization: the system prompt apart, runs of one role merged
    /// (empty contents skipped), and an empty user turn first if the first turn is not the user's.
    static func merge(_ messages: [ChatMessage]) -> (systemPrompt: String?, turns: [ChatMessage]) {
        let systemParts = messages.filter { $0.role == .system && !$0.content.isEmpty }.map(\.content)
        let systemPrompt = systemParts.isEmpty ? nil : systemParts.joined(separator: "\n\n")

        var turns: [ChatMessage] = []
        var start = messages.startIndex
        while start < messages.endIndex {
            let role = messages[start].role
            let end = messages[start...].firstIndex { $0.role != role } ?? messages.endIndex
            let run = messages[start..<end]
            start = end
            // System messages already went into the system prompt; they still end a run.
            guard role != .system else { continue }
            let content = run.map(\.content).filter { !$0.isEmpty }.joined(separator: "\n\n")
            turns.append(ChatMessage(role: role, content: content, prefix: run.contains { $0.prefix }))
        }
        if turns.first?.role != .user {
            turns.insert(ChatMessage(role: .user, content: ""), at: 0)
        }
        return (systemPrompt, turns)
    }
}
