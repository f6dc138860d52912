import Foundation

/// A GGUF model as llama.cpp opens one: a single file, or the splits that llama.cpp's
/// `gguf-split` (or gguf-py's writer with `split_max_tensors` / `split_max_size`) cut it into,
/// `NAME-00001-of-0000N.gguf` … `NAME-0000N-of-0000N.gguf`, opened from the first. Large
/// Mixtral quantizations are published that way (a file of the hub is at most 50 GB).
///
/// Each split is a whole GGUF file, validated as `GGUFFile` validates one; the first holds the
/// model's metadata, and every split says which it is (`split.no`, from 0), how many there are
/// (`split.count`) and how many tensors all of them hold (`split.tensors.count`). Those are
/// checked, and no tensor may appear in two splits. A split is mapped like a single file, so a
/// worker still reads only the pages of the experts it serves. docs/gguf.md, "Split files".
public final class GGUFModelFiles: @unchecked Sendable {
    /// The file the model was opened from (the first split).
    public let path: String
    /// The files, in split order (one for an unsplit model).
    public let files: [GGUFFile]
    /// Every tensor of every split, by name.
    public let tensors: [String: GGUFTensorInfo]
    /// For each tensor name, the index in `files` of the split holding it.
    private let splitOf: [String: Int]

    /// Opens `path`, and the other splits beside it when it is the first of several.
    public init(path: String) throws {
        let first = try GGUFFile(path: path)
        self.path = path
        let name = (path as NSString).lastPathComponent
        func fail(_ detail: String) -> GGUFError { .malformed(file: name, detail: detail) }

        var files = [first]
        var count = 1  // an unsplit file has no split keys
        if let countValue = first["split.count"] {
            guard let c = countValue.int, (1...9999).contains(c) else {
                throw fail("split.count is not a number of splits from 1 to 9999")
            }
            count = c
            let number = first["split.no"]?.int ?? 0
            guard number == 0 else {
                let hint = Self.name(of: path, split: 0, count: count).map { ", \(($0 as NSString).lastPathComponent)" } ?? ""
                throw fail("this is split \(number + 1) of \(count); open the first\(hint)")
            }
        }
        if count > 1 {
            guard Self.name(of: path, split: 0, count: count) == path else {
                throw fail("split 1 of \(count), but the name does not end in \(Self.suffix(0, count)): the other splits cannot be found")
            }
            for i in 1..<count {
                let other = Self.name(of: path, split: i, count: count)!
                let otherName = (other as NSString).lastPathComponent
                guard FileManager.default.fileExists(atPath: other) else {
                    throw GGUFError.unreadable(file: otherName, reason: "split \(i + 1) of \(count) of \(name) is missing")
                }
                let file = try GGUFFile(path: other)
                guard file["split.no"]?.int == i, file["split.count"]?.int == count else {
                    throw GGUFError.malformed(file: otherName, detail: "its split.no / split.count do not say split \(i + 1) of \(count)")
                }
                files.append(file)
            }
        }
        var tensors: [String: GGUFTensorInfo] = [:]
        var splitOf: [String: Int] = [:]
        for (i, file) in files.enumerated() {
            for t in file.tensorList {
                if let seen = splitOf[t.name] {
                    throw GGUFError.malformed(file: (file.path as NSString).lastPathComponent,
                                              detail: "tensor \(t.name) is also in split \(seen + 1)")
                }
                tensors[t.name] = t
                splitOf[t.name] = i
            }
        }
        if first["split.count"] != nil, let expected = first["split.tensors.count"]?.int, expected != tensors.count {
            throw fail("split.tensors.count is \(expected), but the \(count) splits hold \(tensors.count) tensors")
        }
        self.files = files
        self.tensors = tensors
        self.splitOf = splitOf
    }

    /// The model's metadata: the first file's.
    public subscript(key: String) -> GGUFValue? { files[0][key] }

    /// The raw bytes of a tensor of this model (one of `tensors`), valid as long as this object
    /// lives.
    public func data(_ info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        guard let split = splitOf[info.name] else { preconditionFailure("\(info.name) is not a tensor of \(path)") }
        return files[split].data(info)
    }

    /// `-00001-of-00003.gguf` for split 0 of 3: llama.cpp's `llama_split_path` format.
    static func suffix(_ split: Int, _ count: Int) -> String {
        func five(_ n: Int) -> String { String(repeating: "0", count: max(0, 5 - String(n).count)) + String(n) }
        return "-\(five(split + 1))-of-\(five(count)).gguf"
    }

    /// The path of split `split` of `count` beside `path`, a split of the same model: `path`
    /// with its own split suffix replaced, or nil when its name has no such suffix.
    static func name(of path: String, split: Int, count: Int) -> String? {
        for own in 0..<count where path.hasSuffix(suffix(own, count)) {
            return String(path.dropLast(suffix(own, count).count)) + suffix(split, count)
        }
        return nil
    }
}
