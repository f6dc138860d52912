import Foundation
import ShoalTensor
import Testing

/// A model cut into splits (`NAME-0000i-of-0000N.gguf`) opens from its first split, and each
/// way a set of splits can be inconsistent is refused, naming the file. (That splits written by
/// gguf-py give the whole file's logits is `Tests/e2e/test_gguf.py`.)
@Suite struct GGUFSplitTests {
    /// Three splits of two tensors each in a fresh folder: `m-00001-of-00003.gguf` holds `t0.weight`
    /// and `t1.weight`, the second `t2`/`t3`, the third `t4`/`t5`; split i's Q8_0 tensor has quants
    /// 10·i + block. `change` edits split i before it is written.
    static func write(_ change: (Int, inout TinyGGUF) -> Void = { _, _ in }) throws -> String {
        let folder = NSTemporaryDirectory() + "shoal-splits-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for i in 0..<3 {
            var tiny = TinyGGUF()
            tiny.names = ("t\(2 * i).weight", "t\(2 * i + 1).weight")
            tiny.quant = UInt8(10 * i)
            tiny.split = (no: UInt16(i), count: 3, tensors: 6)
            change(i, &tiny)
            try Data(tiny.bytes).write(to: URL(fileURLWithPath: "\(folder)/m-0000\(i + 1)-of-00003.gguf"))
        }
        return folder
    }

    static func refusal(_ path: String) -> String? {
        do {
            _ = try GGUFModelFiles(path: path)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func opensEverySplitFromTheFirst() throws {
        let folder = try Self.write()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try GGUFModelFiles(path: "\(folder)/m-00001-of-00003.gguf")
        #expect(model.files.count == 3)
        #expect(model.tensors.keys.sorted() == (0..<6).map { "t\($0).weight" })
        #expect(model["general.architecture"]?.string == "llama")
        // t3 is split 2's Q8_0 tensor: its second block (after d = 1.0) holds 10 + 1 in every byte.
        let t3 = try #require(model.tensors["t3.weight"])
        let bytes = Array(model.data(t3))
        #expect(bytes.count == 68 && bytes[36...].allSatisfy { $0 == 11 } && bytes[2..<34].allSatisfy { $0 == 10 })
    }

    @Test func aLaterSplitNamesTheFirst() throws {
        let folder = try Self.write()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let error = Self.refusal("\(folder)/m-00002-of-00003.gguf")
        #expect(error?.contains("split 2 of 3") == true && error?.contains("m-00001-of-00003.gguf") == true, "\(error ?? "accepted")")
    }

    @Test func aMissingSplitIsNamed() throws {
        let folder = try Self.write()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.removeItem(atPath: "\(folder)/m-00003-of-00003.gguf")
        let error = Self.refusal("\(folder)/m-00001-of-00003.gguf")
        #expect(error?.contains("m-00003-of-00003.gguf") == true && error?.contains("missing") == true, "\(error ?? "accepted")")
    }

    @Test func inconsistentSplitsAreRefused() throws {
        let cases: [(String, (Int, inout TinyGGUF) -> Void, String)] = [
            ("a tensor in two splits", { i, t in if i == 2 { t.names.0 = "t1.weight" } }, "t1.weight is also in split 1"),
            ("a split that says another number", { i, t in if i == 1 { t.split!.no = 2 } }, "do not say split 2 of 3"),
            ("a split that says another count", { i, t in if i == 2 { t.split!.count = 4 } }, "do not say split 3 of 3"),
            ("a wrong total of tensors", { i, t in if i == 0 { t.split!.tensors = 7 } }, "split.tensors.count is 7"),
            ("a count of no splits", { i, t in if i == 0 { t.split!.count = 0 } }, "split.count is not a number of splits from 1 to 9999"),
        ]
        for (what, change, expected) in cases {
            let folder = try Self.write(change)
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let error = Self.refusal("\(folder)/m-00001-of-00003.gguf")
            #expect(error?.contains(expected) == true, "\(what): \(error ?? "accepted")")
        }
    }

    @Test func aFirstSplitWithoutTheSuffixIsRefused() throws {
        let folder = try Self.write()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.moveItem(atPath: "\(folder)/m-00001-of-00003.gguf", toPath: "\(folder)/m.gguf")
        let error = Self.refusal("\(folder)/m.gguf")
        #expect(error?.contains("does not end in -00001-of-00003.gguf") == true, "\(error ?? "accepted")")
    }
}
