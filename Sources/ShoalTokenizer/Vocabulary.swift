// Lookup tables built from the pieces, with the checks SentencePiece makes when it
// loads a model (model_interface.cc, InitializePieces): a model it would refuse, we refuse.

import Foundation

/// A piece's UTF-8 as a dictionary key.
///
/// Bytes, not `String`: `String` equality is canonical equivalence and would conflate "é"
/// (U+00E9) with "e" + U+0301, which are different pieces. Hashed as one block because
/// hashing an `ArraySlice` element by element dominated encoding time.
struct PieceKey: Hashable, Sendable {
    let utf8: ArraySlice<UInt8>

    init(_ utf8: ArraySlice<UInt8>) {
        self.utf8 = utf8
    }

    func hash(into hasher: inout Hasher) {
        utf8.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    static func == (a: PieceKey, b: PieceKey) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        return a.utf8.withUnsafeBytes { x in
            b.utf8.withUnsafeBytes { y in
                x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0
            }
        }
    }
}

/// The lookup tables derived from a `ModelProto`'s pieces.
struct Vocabulary {
    var mergeable: [PieceKey: Int32] = [:]
    /// CONTROL, UNKNOWN and BYTE pieces: never produced by merging.
    var reserved: [PieceKey: Int32] = [:]
    var userDefinedByFirstByte: [UInt8: [[UInt8]]] = [:]
    var byteValues: [Int16] = []
    var byteIds = [Int32](repeating: -1, count: 256)
    var maxPieceLength = 0
    var unkId = -1

    /// SentencePiece refuses pieces this long.
    static let maxPieceBytes = 8000

    init(_ model: ModelProto) throws(TokenizerError) {
        guard !model.pieces.isEmpty else { throw .invalidVocabulary("the model has no pieces") }
        guard model.pieces.count <= Int(Int32.max) else { throw .invalidVocabulary("too many pieces") }
        byteValues.reserveCapacity(model.pieces.count)
        mergeable.reserveCapacity(model.pieces.count)

        for (id, piece) in model.pieces.enumerated() {
            let utf8 = Array(piece.piece.utf8)
            try Self.check(utf8, id: id)
            let key = PieceKey(utf8[...])
            let isMergeable = piece.type == .normal || piece.type == .userDefined || piece.type == .unused
            if isMergeable {
                guard mergeable.updateValue(Int32(id), forKey: key) == nil else {
                    throw .invalidVocabulary("piece \(Self.quoted(piece.piece)) (id \(id)) is already defined")
                }
                maxPieceLength = max(maxPieceLength, utf8.count)
            } else {
                guard reserved.updateValue(Int32(id), forKey: key) == nil else {
                    throw .invalidVocabulary("piece \(Self.quoted(piece.piece)) (id \(id)) is already defined")
                }
            }
            if piece.type == .userDefined {
                userDefinedByFirstByte[utf8[0], default: []].append(utf8)
            }
            if piece.type == .unknown {
                guard unkId < 0 else { throw .invalidVocabulary("a second <unk> piece at id \(id); the first is \(unkId)") }
                unkId = id
            }
            var byteValue: Int16 = -1
            if piece.type == .byte {
                guard model.byteFallback else {
                    throw .invalidVocabulary("byte piece \(piece.piece) (id \(id)) although byte_fallback is false")
                }
                guard let value = Self.byteValue(of: utf8) else {
                    throw .invalidVocabulary("byte piece \(Self.quoted(piece.piece)) (id \(id)) is not of the form <0xXX>")
                }
                byteIds[Int(value)] = Int32(id)
                byteValue = Int16(value)
            }
            byteValues.append(byteValue)
        }
        guard unkId >= 0 else { throw .invalidVocabulary("no piece has type UNKNOWN (<unk>)") }
        if model.byteFallback {
            let missing = byteIds.filter { $0 < 0 }.count
            guard missing == 0 else {
                throw .invalidVocabulary("byte_fallback is true but \(missing) of the 256 byte pieces are missing")
            }
        }
        for first in userDefinedByFirstByte.keys {
            userDefinedByFirstByte[first]?.sort { $0.count > $1.count }
        }
    }

    /// The id SentencePiece reports for a special piece name: the reserved piece of that name
    /// if it is a CONTROL piece, otherwise -1.
    func controlId(named name: String, in model: ModelProto) -> Int {
        guard let id = reserved[PieceKey(Array(name.utf8)[...])], model.pieces[Int(id)].type == .control else { return -1 }
        return Int(id)
    }

    private static func check(_ utf8: [UInt8], id: Int) throws(TokenizerError) {
        guard !utf8.isEmpty else { throw .invalidVocabulary("piece \(id) is empty") }
        guard utf8.count < maxPieceBytes else { throw .invalidVocabulary("piece \(id) is \(utf8.count) bytes long") }
        guard !utf8.contains(0) else { throw .invalidVocabulary("piece \(id) contains a NUL character") }
    }

    /// The value of a byte piece, spelled exactly as SentencePiece writes it: `<0x` two uppercase hex digits `>`.
    static func byteValue(of utf8: [UInt8]) -> UInt8? {
        guard utf8.count == 6, utf8.starts(with: Array("<0x".utf8)), utf8[5] == UInt8(ascii: ">"),
              let high = hexDigit(utf8[3]), let low = hexDigit(utf8[4]) else { return nil }
        return high << 4 | low
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func quoted(_ piece: String) -> String {
        "'" + piece.unicodeScalars.map { $0.properties.isWhitespace || $0.value < 0x20 ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined() + "'"
    }
}
