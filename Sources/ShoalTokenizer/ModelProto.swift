// The subset of sentencepiece_model.proto (google/sentencepiece, src/) that encoding
// and decoding depend on. Field numbers are the proto's; defaults are the proto2 defaults.

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

    /// Parses `bytes` as a `ModelProto`. Unknown fields are skipped, as protobuf does;
    /// repeated occurrences of a sub-message merge into one, also as protobuf does.
    init(parsing bytes: ArraySlice<UInt8>) throws(TokenizerError) {
        var reader = WireReader(bytes, context: "ModelProto")
        while let (field, value) = try reader.next() {
            switch field {
            case 1: pieces.append(try Self.parsePiece(value.bytes(field: 1, in: "ModelProto"), index: pieces.count))
            case 2: try parseTrainerSpec(value.bytes(field: 2, in: "ModelProto"))
            case 3: try parseNormalizerSpec(value.bytes(field: 3, in: "ModelProto"))
            case 5: try parseDenormalizerSpec(value.bytes(field: 5, in: "ModelProto"))
            default: continue
            }
        }
    }

    private static func parsePiece(_ bytes: ArraySlice<UInt8>, index: Int) throws(TokenizerError) -> Piece {
        let context = "SentencePiece #\(index)"
        var piece = Piece(piece: "", score: 0, type: .normal)
        var reader = WireReader(bytes, context: context)
        while let (field, value) = try reader.next() {
            switch field {
            case 1: piece.piece = try value.string(field: 1, in: context)
            case 2: piece.score = try value.float(field: 2, in: context)
            case 3:
                let raw = try value.int32(field: 3, in: context)
                guard let type = PieceType(rawValue: raw) else {
                    throw .malformedModel("\(context): unknown piece type \(raw)")
                }
                piece.type = type
            default: continue
            }
        }
        return piece
    }

    private mutating func parseTrainerSpec(_ bytes: ArraySlice<UInt8>) throws(TokenizerError) {
        let context = "TrainerSpec"
        var reader = WireReader(bytes, context: context)
        while let (field, value) = try reader.next() {
            switch field {
            case 3: modelType = try value.int32(field: field, in: context)
            case 24: treatWhitespaceAsSuffix = try value.bool(field: field, in: context)
            case 25: splitDigits = try value.bool(field: field, in: context)
            case 35: byteFallback = try value.bool(field: field, in: context)
            case 44: unkSurface = try value.string(field: field, in: context)
            // An empty name means "use the default", as SentencePiece reads these fields.
            case 45: unkPiece = try Self.nonEmpty(value.string(field: field, in: context), or: unkPiece)
            case 46: bosPiece = try Self.nonEmpty(value.string(field: field, in: context), or: bosPiece)
            case 47: eosPiece = try Self.nonEmpty(value.string(field: field, in: context), or: eosPiece)
            default: continue
            }
        }
    }

    private mutating func parseNormalizerSpec(_ bytes: ArraySlice<UInt8>) throws(TokenizerError) {
        let context = "NormalizerSpec"
        var reader = WireReader(bytes, context: context)
        while let (field, value) = try reader.next() {
            switch field {
            case 1: normalizerName = try value.string(field: field, in: context)
            case 2: hasPrecompiledCharsmap = try !value.bytes(field: field, in: context).isEmpty
            case 3: addDummyPrefix = try value.bool(field: field, in: context)
            case 4: removeExtraWhitespaces = try value.bool(field: field, in: context)
            case 5: escapeWhitespaces = try value.bool(field: field, in: context)
            default: continue
            }
        }
    }

    private mutating func parseDenormalizerSpec(_ bytes: ArraySlice<UInt8>) throws(TokenizerError) {
        var reader = WireReader(bytes, context: "DenormalizerSpec")
        while let (field, value) = try reader.next() {
            guard field == 2 else { continue }
            hasDenormalizerCharsmap = try !value.bytes(field: field, in: "DenormalizerSpec").isEmpty
        }
    }

    private static func nonEmpty(_ value: String, or fallback: String) -> String {
        value.isEmpty ? fallback : value
    }
}
