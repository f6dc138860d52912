// The settings of a SentencePiece model that encoding and decoding depend on, read from the
// generated `Sentencepiece_ModelProto` (Protos/sentencepiece/sentencepiece_model.proto) or
// made from a GGUF vocabulary.
import Foundation
import SwiftProtobuf

/// The kind of a vocabulary piece, numbered as `ModelProto.SentencePiece.Type`.
public enum PieceType: Int, Sendable, CaseIterable {
    /// An ordinary piece that BPE merges may produce.
    case normal = 1
    /// The `<unk>` piece; exactly one per model.
    case unknown = 2
    /// A control symbol such as `<s>` or `</s>`: never produced from text, invisible when decoded.
    case control = 3
    /// A piece matched whole in the input before any merging (a placeholder symbol).
    case userDefined = 4
    /// A piece merges may pass through but that is never emitted; it is split back into its parts.
    case unused = 5
    /// One of the 256 byte-fallback pieces `<0x00>`...`<0xFF>`.
    case byte = 6
}

/// The settings and pieces of a `ModelProto`, parsed from its wire format.
struct ModelProto {
    /// `ModelProto.SentencePiece`.
    struct Piece: Equatable {
        var piece: String
        var score: Float
        var type: PieceType
    }

    var pieces: [Piece] = []

    // TrainerSpec (ModelProto field 2).
    var modelType = 1                      // 3: model_type, UNIGRAM by default
    var splitDigits = false                // 25
    var treatWhitespaceAsSuffix = false    // 24
    var byteFallback = false               // 35
    var unkSurface = " \u{2047} "          // 44
    var unkPiece = "<unk>"                 // 45
    var bosPiece = "<s>"                   // 46
    var eosPiece = "</s>"                  // 47

    // NormalizerSpec (ModelProto field 3).
    var normalizerName = ""                // 1
    var hasPrecompiledCharsmap = false     // 2
    var addDummyPrefix = true              // 3
    var removeExtraWhitespaces = true      // 4
    var escapeWhitespaces = true           // 5

    /// DenormalizerSpec (ModelProto field 5) with a character map, applied after decoding.
    var hasDenormalizerCharsmap = false

    /// A model with the proto defaults and no pieces.
    init() {}

    /// Parses `bytes` as a `ModelProto` (the generated `Sentencepiece_ModelProto`, from
    /// `Protos/sentencepiece`). Unknown fields are skipped and repeated occurrences of a
    /// sub-message merge into one, as protobuf does.
    init(parsing bytes: ArraySlice<UInt8>) throws(TokenizerError) {
        let proto: Sentencepiece_ModelProto
        do {
            proto = try Sentencepiece_ModelProto(serializedBytes: Array(bytes))
        } catch {
            throw .malformedModel("ModelProto: \(error)")
        }
        pieces = try proto.pieces.enumerated().map { (index, piece) throws(TokenizerError) in
            guard let type = PieceType(rawValue: Int(piece.type)) else {
                throw .malformedModel("SentencePiece #\(index): unknown piece type \(piece.type)")
            }
            return Piece(piece: piece.piece, score: piece.score, type: type)
        }
        let trainer = proto.trainerSpec
        modelType = Int(trainer.modelType)
        treatWhitespaceAsSuffix = trainer.treatWhitespaceAsSuffix
        splitDigits = trainer.splitDigits
        byteFallback = trainer.byteFallback
        unkSurface = trainer.unkSurface
        // An empty name means "use the default", as SentencePiece reads these fields.
        unkPiece = Self.nonEmpty(trainer.unkPiece, or: unkPiece)
        bosPiece = Self.nonEmpty(trainer.bosPiece, or: bosPiece)
        eosPiece = Self.nonEmpty(trainer.eosPiece, or: eosPiece)
        let normalizer = proto.normalizerSpec
        normalizerName = normalizer.name
        hasPrecompiledCharsmap = !normalizer.precompiledCharsmap.isEmpty
        addDummyPrefix = normalizer.addDummyPrefix
        removeExtraWhitespaces = normalizer.removeExtraWhitespaces
        escapeWhitespaces = normalizer.escapeWhitespaces
        hasDenormalizerCharsmap = !proto.denormalizerSpec.precompiledCharsmap.isEmpty
    }

    private static func nonEmpty(_ value: String, or fallback: String) -> String {
        value.isEmpty ? fallback : value
    }
}
