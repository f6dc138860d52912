/// Why a tokenizer model could not be loaded, or why ids were refused.
public enum TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The model file could not be read from disk.
    case unreadable(path: String, reason: String)
    /// The bytes are not a well-formed SentencePiece `ModelProto` (truncated, corrupt, wrong wire types).
    case malformedModel(String)
    /// `trainer_spec.model_type` is not BPE (2); 1 is UNIGRAM, 3 WORD, 4 CHAR.
    case unsupportedModelType(Int)
    /// The normalizer carries a precompiled character map (e.g. `nmt_nfkc`), which this tokenizer does not apply.
    case unsupportedNormalizer(String)
    /// The pieces break a rule SentencePiece enforces when loading: an empty or duplicate piece,
    /// no (or two) `<unk>` pieces, byte pieces that are invalid, missing, or present without `byte_fallback`.
    case invalidVocabulary(String)
    /// An id outside `0..<vocabSize`, reported by `SentencePieceTokenizer.validate(_:)`.
    case idOutOfRange(id: Int, vocabSize: Int)

    /// A sentence for logs and error responses.
    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            "cannot read tokenizer model at \(path): \(reason)"
        case .malformedModel(let detail):
            "malformed SentencePiece model: \(detail)"
        case .unsupportedModelType(let type):
            "unsupported SentencePiece model type \(type) (\(Self.modelTypeName(type))); only BPE (2) is supported"
        case .unsupportedNormalizer(let name):
            "unsupported SentencePiece normalizer '\(name)': only the identity normalizer is supported"
        case .invalidVocabulary(let detail):
            "invalid SentencePiece vocabulary: \(detail)"
        case .idOutOfRange(let id, let vocabSize):
            "token id \(id) is outside the vocabulary 0..<\(vocabSize)"
        }
    }

    private static func modelTypeName(_ type: Int) -> String {
        switch type {
        case 1: "UNIGRAM"
        case 2: "BPE"
        case 3: "WORD"
        case 4: "CHAR"
        default: "unknown"
        }
    }
}

/// Why a conversation was refused, with mistral_common's rules (its messages, reworded).
public enum ChatFormatError: Error, CustomStringConvertible, Equatable, Sendable {
    /// There are no messages at all.
    case empty
    /// A conversation of one message must be a user or system message.
    case mustStartWithUserOrSystem(ChatMessage.Role)
    /// The last message is an assistant reply without `prefix`: there is nothing to answer.
    case lastMessageNotUser
    /// A message's role may not follow the previous one (v1: a system message after an assistant reply).
    case unexpectedRole(ChatMessage.Role, after: ChatMessage.Role, index: Int)
    /// An assistant message has empty content.
    case emptyAssistantContent(index: Int)
    /// An assistant message with `prefix` is not the last message.
    case prefixNotLast(index: Int)
    /// `prefix` is set on a user or system message; only assistant messages have it.
    case prefixOnNonAssistant(index: Int, role: ChatMessage.Role)
    /// The tokenizer has chat markers as control tokens (a Mistral v3 tokenizer): its chat
    /// format is not the v1 format implemented here.
    case unsupportedTokenizer(controlToken: String, id: Int)

    /// A sentence for logs and error responses.
    public var description: String {
        switch self {
        case .empty:
            "the conversation must have at least one message"
        case .mustStartWithUserOrSystem(let role):
            "a conversation of one message must be a user or system message, not \(role.rawValue)"
        case .lastMessageNotUser:
            "the last message must be a user message (or an assistant message with prefix = true), not assistant"
        case .unexpectedRole(let role, let previous, let index):
            "message \(index): role '\(role.rawValue)' cannot follow role '\(previous.rawValue)'"
        case .emptyAssistantContent(let index):
            "message \(index): an assistant message must have content"
        case .prefixNotLast(let index):
            "message \(index): an assistant message with prefix = true must be the last message"
        case .prefixOnNonAssistant(let index, let role):
            "message \(index): prefix is only allowed on assistant messages, not \(role.rawValue)"
        case .unsupportedTokenizer(let token, let id):
            "this tokenizer has \(token) as control token \(id) (a Mistral v3 tokenizer, tokenizer.model.v3); "
                + "its chat format is not implemented (only v1's, where [INST] is text): chats are refused, plain completions work"
        }
    }
}
