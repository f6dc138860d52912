import Foundation

/// SentencePiece BPE with byte fallback, read from a `ModelProto` (`tokenizer.model` / `tokenizer.model.v1`).
///
/// Encoding and decoding reproduce the `sentencepiece` library (and therefore `mistral_common`)
/// id for id and byte for byte; see `encode(_:bos:eos:)` and `decode(_:)` for the rules.
/// Immutable after loading, so one instance may be shared across tasks.
public final class SentencePieceTokenizer: Sendable {
    /// Piece text by id, as stored in the model (`▁` for spaces, `<0x41>` for byte pieces).
    let pieces: [String]
    let scores: [Float]
    let types: [PieceType]
    /// The id of a control piece `[INST]` (a Mistral v3 vocabulary), whose chat format is not
    /// v1's; found once at load.
    let chatMarkerControlId: Int?

    /// What each id decodes to: the piece's UTF-8 with `▁` replaced by a space
    /// (control pieces: empty; `<unk>`: the unknown surface; byte pieces: unused).
    let surfaces: [[UInt8]]
    /// Whether the piece starts with `▁`, so that its first space is dropped at the start of a text.
    let startsWithSpaceSymbol: [Bool]
    /// The byte a BYTE piece stands for, or -1.
    let byteValues: [Int16]
    /// The id of the piece for each byte value; empty without byte fallback.
    let byteIds: [Int32]

    /// NORMAL, USER_DEFINED and UNUSED pieces by UTF-8: the pieces BPE may merge into.
    let mergeable: [PieceKey: Int32]
    /// USER_DEFINED pieces by first byte, longest first: matched whole before merging.
    let userDefinedByFirstByte: [UInt8: [[UInt8]]]
    /// The longest mergeable piece in bytes; longer pairs cannot be pieces.
    let maxPieceLength: Int

    let byteFallback: Bool
    let splitDigits: Bool
    let addDummyPrefix: Bool
    let removeExtraWhitespaces: Bool
    let escapeWhitespaces: Bool
    let treatWhitespaceAsSuffix: Bool

    /// Number of pieces; valid ids are `0..<vocabSize`.
    public var vocabSize: Int { pieces.count }
    /// The id of the `<unk>` piece (0 for Mistral).
    public let unkId: Int
    /// The id of the `<s>` control piece (1 for Mistral), or -1 if the model has none.
    public let bosId: Int
    /// The id of the `</s>` control piece (2 for Mistral), or -1 if the model has none.
    public let eosId: Int

    /// Loads a model file such as `tokenizer.model.v1`.
    public convenience init(contentsOf path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError.unreadable(path: path, reason: error.localizedDescription)
        }
        try self.init(modelData: [UInt8](data))
    }

    /// Parses a serialized `ModelProto`. Only BPE models with the identity normalizer are accepted;
    /// anything malformed throws `TokenizerError`.
    public convenience init(modelData: [UInt8]) throws {
        guard !modelData.isEmpty else { throw TokenizerError.malformedModel("the model is empty (0 bytes)") }
        try self.init(model: try ModelProto(parsing: modelData[...]))
    }

    /// The SentencePiece BPE model a GGUF file's `tokenizer.ggml.model = llama` vocabulary
    /// stands for: its pieces, scores and types (GGUF's token types are SentencePiece's piece
    /// types), with the settings of the Llama and Mistral models, which GGUF does not store:
    /// byte fallback when the vocabulary has byte pieces, digits split, spaces kept as they are,
    /// a dummy `▁` prefix unless `addDummyPrefix` is false (`tokenizer.ggml.add_space_prefix`).
    public convenience init(llamaVocabulary pieces: [String], scores: [Float], types: [Int],
                            bosId: Int, eosId: Int, addDummyPrefix: Bool = true) throws {
        guard pieces.count == scores.count, pieces.count == types.count else {
            throw TokenizerError.invalidVocabulary(
                "\(pieces.count) tokens, \(scores.count) scores and \(types.count) token types")
        }
        var model = ModelProto()
        model.modelType = 2
        model.pieces = try pieces.indices.map { id in
            guard let type = PieceType(rawValue: types[id]) else {
                throw TokenizerError.invalidVocabulary("token \(id) has unknown token type \(types[id])")
            }
            return ModelProto.Piece(piece: pieces[id], score: scores[id], type: type)
        }
        model.byteFallback = model.pieces.contains { $0.type == .byte }
        model.splitDigits = true
        model.addDummyPrefix = addDummyPrefix
        model.removeExtraWhitespaces = false
        for (id, role) in [(bosId, "BOS"), (eosId, "EOS")] where id >= 0 {
            guard pieces.indices.contains(id) else {
                throw TokenizerError.invalidVocabulary("the \(role) id \(id) is outside the \(pieces.count) tokens")
            }
        }
        model.bosPiece = bosId >= 0 ? pieces[bosId] : ""
        model.eosPiece = eosId >= 0 ? pieces[eosId] : ""
        try self.init(model: model)
    }

    init(model: ModelProto) throws {
        guard model.modelType == 2 else { throw TokenizerError.unsupportedModelType(model.modelType) }
        guard !model.hasPrecompiledCharsmap else {
            throw TokenizerError.unsupportedNormalizer(model.normalizerName.isEmpty ? "precompiled" : model.normalizerName)
        }
        guard !model.hasDenormalizerCharsmap else { throw TokenizerError.unsupportedNormalizer("denormalizer") }
        let vocabulary = try Vocabulary(model)

        pieces = model.pieces.map(\.piece)
        scores = model.pieces.map(\.score)
        types = model.pieces.map(\.type)
        chatMarkerControlId = model.pieces.firstIndex { $0.type == .control && $0.piece == "[INST]" }
        byteValues = vocabulary.byteValues
        byteIds = model.byteFallback ? vocabulary.byteIds : []
        mergeable = vocabulary.mergeable
        userDefinedByFirstByte = vocabulary.userDefinedByFirstByte
        maxPieceLength = vocabulary.maxPieceLength
        unkId = vocabulary.unkId
        bosId = vocabulary.controlId(named: model.bosPiece, in: model)
        eosId = vocabulary.controlId(named: model.eosPiece, in: model)

        byteFallback = model.byteFallback
        splitDigits = model.splitDigits
        addDummyPrefix = model.addDummyPrefix
        removeExtraWhitespaces = model.removeExtraWhitespaces
        escapeWhitespaces = model.escapeWhitespaces
        treatWhitespaceAsSuffix = model.treatWhitespaceAsSuffix

        let unkSurface = Array(model.unkSurface.utf8)
        var surfaces: [[UInt8]] = []
        var startsWithSpaceSymbol: [Bool] = []
        for piece in model.pieces {
            let utf8 = Array(piece.piece.utf8)
            switch piece.type {
            case .control, .byte:
                surfaces.append([])
                startsWithSpaceSymbol.append(false)
            case .unknown:
                surfaces.append(unkSurface)
                startsWithSpaceSymbol.append(false)
            case .normal, .userDefined, .unused:
                surfaces.append(Self.replacingSpaceSymbols(utf8))
                startsWithSpaceSymbol.append(utf8.starts(with: Self.spaceSymbol))
            }
        }
        self.surfaces = surfaces
        self.startsWithSpaceSymbol = startsWithSpaceSymbol
    }

    /// The piece text of `id` as stored in the model (`"▁Hello"`, `"<0x0A>"`, `"<s>"`).
    /// Ids outside `0..<vocabSize` give the `<unk>` piece.
    public func piece(_ id: Int) -> String {
        pieces.indices.contains(id) ? pieces[id] : pieces[unkId]
    }

    /// The score of `id` (higher merges first); 0 outside the vocabulary.
    public func score(_ id: Int) -> Float {
        scores.indices.contains(id) ? scores[id] : 0
    }

    /// The type of `id`; ids outside the vocabulary are `.unknown`.
    public func pieceType(_ id: Int) -> PieceType {
        types.indices.contains(id) ? types[id] : .unknown
    }

    /// Refuses ids outside 0..<vocabSize, as `sentencepiece` does: `decode` checks with it, and
    /// so does every place ids come from outside (the prompt APIs, `detokenize`).
    public func validate(_ ids: [Int]) throws(TokenizerError) {
        for id in ids where !(0..<vocabSize).contains(id) {
            throw .idOutOfRange(id: id, vocabSize: vocabSize)
        }
    }

    /// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible stand-in for a space.
    static let spaceSymbol: [UInt8] = [0xE2, 0x96, 0x81]

    private static func replacingSpaceSymbols(_ utf8: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count)
        var i = 0
        while i < utf8.count {
            if utf8[i] == 0xE2, i + 2 < utf8.count, utf8[i + 1] == 0x96, utf8[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(utf8[i])
                i += 1
            }
        }
        return out
    }
}
