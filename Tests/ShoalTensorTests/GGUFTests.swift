import Foundation
import ShoalTestSupport
import Testing
@testable import ShoalTensor

/// The GGUF reader against the fixtures' own records (../shared/fixtures/gguf/README.md §3.4):
/// offsets, types, shapes and sizes of every tensor, the metadata, and the dequantized values
/// that gguf-py (bit-identical to ggml's C code) computed for every tensor.
@Suite struct GGUFTests {
    static let variants = [
        "Q4_K_M/q-small.Q4_K_M.gguf", "Q4_K_M-legacy/q-small.Q4_K_M.legacy.gguf",
        "Q4_0/q-small.Q4_0.gguf", "Q8_0/q-small.Q8_0.gguf",
    ]

    static func open(_ variant: String) throws -> (GGUFFile, [String: Any]) {
        let path = try FixtureFolder.path("gguf/q-small/\(variant)")
        let folder = (path as NSString).deletingLastPathComponent
        let json = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: folder + "/expected.json"))) as! [String: Any]
        return (try GGUFFile(path: path), (json["files"] as! [[String: Any]])[0])
    }

    @Test(arguments: variants)
    func headerMatchesTheRecords(variant: String) throws {
        let (file, record) = try Self.open(variant)
        #expect(Int(file.version) == record["gguf_version"] as! Int)
        #expect(file.alignment == record["alignment"] as! Int)
        #expect(file.dataOffset == record["tensor_data_offset"] as! Int)
        #expect(file.fileSize == record["size_bytes"] as! Int)
        let tensors = record["tensors"] as! [[String: Any]]
        #expect(file.tensorList.map(\.name) == tensors.map { $0["name"] as! String })
        for (t, expected) in zip(file.tensorList, tensors) {
            #expect(t.type.rawValue == expected["type"] as! String, "\(t.name) type")
            #expect(t.dims == expected["ne"] as! [Int], "\(t.name) ne")
            #expect(t.offset - file.dataOffset == expected["offset_in_data_section"] as! Int, "\(t.name) offset")
            #expect(t.byteCount == expected["n_bytes"] as! Int, "\(t.name) size")
        }
        let types = record["metadata_value_types"] as! [String: String]
        for (key, value) in record["metadata"] as! [String: Any] {
            let got = file[key]
            switch (types[key], value) {
            case let ("STRING", s as String): #expect(got?.string == s, "\(key)")
            case let ("BOOL", b as Bool): #expect(got?.bool == b, "\(key)")
            case let ("FLOAT32", n as NSNumber), let ("FLOAT64", n as NSNumber): #expect(got?.double == n.doubleValue, "\(key)")
            case let (_, n as NSNumber): #expect(got?.int == n.intValue, "\(key)")
            default: Issue.record("\(key): unexpected JSON value \(value)")
            }
        }
        for (key, info) in record["tokenizer_arrays"] as! [String: [String: Any]] {
            #expect(file[key]?.array?.count == info["length"] as? Int, "\(key)")
        }
    }

    /// Every tensor dequantized by the kernels and by `BlockFormat`: first and last 8 values
    /// float32-exact, sums within the README's bound.
    @Test(arguments: variants)
    func dequantizedValuesMatchTheRecords(variant: String) throws {
        let (file, record) = try Self.open(variant)
        for expected in record["tensors"] as! [[String: Any]] {
            let t = file.tensors[expected["name"] as! String]!
            let cols = t.dims[0], rows = t.dims.dropFirst().reduce(1, *)
            var values = [Float](repeating: 0, count: rows * cols)
            let bytes = file.data(t)
            if t.type == .f16 {
                for i in values.indices {
                    values[i] = Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                }
            } else {
                let m = Matrix(dtype: t.type, rows: rows, cols: cols, base: bytes.baseAddress!)
                values.withUnsafeMutableBufferPointer { out in
                    for r in 0..<rows { m.copyRow(r, into: out.baseAddress! + r * cols) }
                }
                let reference = [0, 1, 2, 3, 4, 5, 6, 7].map { m.element(0, $0) }
                    + (0..<8).map { m.element(rows - 1, cols - 8 + $0) }
                #expect(reference == Array(values.prefix(8) + values.suffix(8)), "\(t.name): BlockFormat")
            }
            let first = (expected["dequant_first8"] as! [Double]).map(Float.init)
            let last = (expected["dequant_last8"] as! [Double]).map(Float.init)
            #expect(Array(values.prefix(8)) == first, "\(t.name) first 8")
            #expect(Array(values.suffix(8)) == last, "\(t.name) last 8")
            let sum = values.reduce(0.0) { $0 + Double($1) }, sumSq = values.reduce(0.0) { $0 + Double($1) * Double($1) }
            let expectedSum = expected["dequant_sum"] as! Double, expectedSq = expected["dequant_sum_sq"] as! Double
            let bound = 1e-6 * (Double(values.count) * expectedSq).squareRoot()
            #expect(abs(sum - expectedSum) <= bound, "\(t.name) sum \(sum) vs \(expectedSum)")
            #expect(abs(sumSq - expectedSq) <= 1e-6 * expectedSq, "\(t.name) sum of squares")
        }
    }

    // MARK: - Damaged files

    /// Every prefix of a small file fails with `truncated` (or, shorter than the magic, says
    /// so), and the whole file parses.
    @Test func everyTruncationIsRefused() throws {
        let bytes = TinyGGUF().bytes
        #expect(throws: Never.self) { try parse(bytes) }
        for length in 0..<bytes.count {
            #expect(throws: GGUFError.self, "prefix of \(length) bytes") { try parse(Array(bytes.prefix(length))) }
        }
    }

    /// Every byte of a small file's header replaced by several values: each parse either
    /// succeeds or throws a `GGUFError`; none crashes, and none reads past the buffer (the
    /// reader's bounds checks; ASan would catch an overrun in the sanitized run).
    @Test func mutatedHeadersNeverCrash() throws {
        let original = TinyGGUF().bytes
        var refused = 0, parsed = 0
        for position in 0..<TinyGGUF.headerLength(original) {
            for value: UInt8 in [0, 1, 2, 0x7F, 0x80, 0xFF, original[position] ^ 0x10] {
                var bytes = original
                bytes[position] = value
                do { try parse(bytes); parsed += 1 } catch is GGUFError { refused += 1 }
            }
        }
        #expect(refused > 0 && parsed > 0, "\(refused) refused, \(parsed) parsed")
    }

    @Test func namedRefusals() throws {
        var tiny = TinyGGUF()
        #expect(throws: GGUFError.notGGUF(file: "t")) { try parse(Array("GGML".utf8) + tiny.bytes.dropFirst(4)) }
        var version = tiny.bytes
        version[4] = 4
        #expect(throws: GGUFError.unsupportedVersion(file: "t", version: 4)) { try parse(version) }
        tiny.secondType = 20  // IQ4_NL
        #expect(throws: GGUFError.unsupportedType(file: "t", tensor: "b.weight", type: "IQ4_NL")) { try parse(tiny.bytes) }
        tiny = TinyGGUF()
        tiny.secondOffset = 40  // not a multiple of 32
        #expect(throws: GGUFError.badOffset(file: "t", tensor: "b.weight", detail: "offset 40 is not a multiple of the alignment 32")) {
            try parse(tiny.bytes)
        }
        tiny.secondOffset = 0  // on top of a.weight
        #expect(throws: GGUFError.self) { try parse(tiny.bytes) }
        tiny = TinyGGUF()
        tiny.alignment = 48
        #expect(throws: GGUFError.self) { try parse(tiny.bytes) }
        tiny = TinyGGUF()
        tiny.firstDims = [33]  // F32 rows of any length are fine, but 33 × 4 bytes now overlap b
        #expect(throws: GGUFError.self) { try parse(tiny.bytes) }
        tiny = TinyGGUF()
        tiny.secondDims = [16, 2]  // Q8_0 rows must hold whole blocks of 32
        #expect(throws: GGUFError.self) { try parse(tiny.bytes) }
        // A count too large for the file is refused before anything is allocated.
        var count = TinyGGUF().bytes
        for i in 8..<16 { count[i] = 0xFF }
        #expect(throws: GGUFError.self) { try parse(count) }
    }

    @Test func truncatedFixtureNamesTheTensor() throws {
        let path = try FixtureFolder.path("gguf/q-small/Q4_0/q-small.Q4_0.gguf")
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let cut = NSTemporaryDirectory() + "shoal-truncated-\(UUID().uuidString).gguf"
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: cut))
        defer { try? FileManager.default.removeItem(atPath: cut) }
        do {
            _ = try GGUFFile(path: cut)
            Issue.record("a truncated file was accepted")
        } catch let error as GGUFError {
            #expect("\(error)".contains("shoal-truncated") && "\(error)".contains("blk.1.ffn_up_exps.weight"), "\(error)")
        }
    }

    func parse(_ bytes: [UInt8]) throws {
        _ = try bytes.withUnsafeBytes { try GGUFHeader($0, file: "t") }
    }
}

/// A small GGUF v3 file built field by field: two metadata pairs (a string and an array of
/// f32), an F32 tensor `a.weight` of 32 values and a Q8_0 tensor `b.weight` of 2 × 32 (other
/// names with `names`); with
/// `split`, also the three keys of a split (`split.no`, `split.count`, `split.tensors.count`).
struct TinyGGUF {
    var alignment: UInt32? = nil
    var firstDims: [UInt64] = [32]
    var secondDims: [UInt64] = [32, 2]
    var secondType: UInt32 = 8
    var secondOffset: UInt64 = 128
    var names = ("a.weight", "b.weight")
    /// `b.weight`'s quants: block i holds `quant + i` in every byte.
    var quant: UInt8 = 0
    var split: (no: UInt16, count: UInt16, tensors: Int32)? = nil

    var bytes: [UInt8] {
        var out: [UInt8] = Array("GGUF".utf8)
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        u32(3)
        u64(2)
        u64((alignment == nil ? 2 : 3) + (split == nil ? 0 : 3))
        string("general.architecture"); u32(8); string("llama")
        string("x.scores"); u32(9); u32(6); u64(3)
        for f: Float in [1, -2, 0.5] { u32(f.bitPattern) }
        if let alignment { string("general.alignment"); u32(4); u32(alignment) }
        if let split {  // the types gguf-py's writer gives them: u16, u16, i32
            string("split.no"); u32(2); u16(split.no)
            string("split.count"); u32(2); u16(split.count)
            string("split.tensors.count"); u32(5); u32(UInt32(bitPattern: split.tensors))
        }
        string(names.0); u32(UInt32(firstDims.count)); firstDims.forEach(u64); u32(0); u64(0)
        string(names.1); u32(UInt32(secondDims.count)); secondDims.forEach(u64); u32(secondType); u64(secondOffset)
        let a = Int(alignment ?? 32)
        while out.count % a != 0 { out.append(0) }
        out += [UInt8](repeating: 0, count: 128)  // a.weight, padded to 128
        for block in 0..<2 {  // b.weight: d = 1.0, qs = quant + block index
            out += [0x00, 0x3C]
            out += [UInt8](repeating: quant + UInt8(block), count: 32)
        }
        return out
    }

    /// Where the tensor data starts: everything before it is header.
    static func headerLength(_ bytes: [UInt8]) -> Int { bytes.count - 128 - 68 }
}
