import Foundation
/// Every way a model folder can fail to load. Safetensors-level damage (a truncated file, a
/// bad header) surfaces as `SafetensorsError`, which names the file and the tensor.
public enum ModelLoadError: Error, CustomStringConvertible, Equatable {
    /// The folder is neither a Hugging Face nor a Mistral checkpoint.
    case notACheckpoint(folder: String, found: [String])
    /// A file given where a model was expected that is not a GGUF file.
    case notGGUF(file: String)
    /// `config.json` / `params.json` is unreadable or describes an impossible model.
    case badConfig(file: String, detail: String)
    /// A tensor the model needs is in no file of the folder.
    case missingTensor(name: String, folder: String)
    /// `model.safetensors.index.json` names a shard that is not there.
    case missingShard(file: String, tensor: String)
    /// A tensor's shape differs from what the config implies.
    case shapeMismatch(name: String, expected: [Int], actual: [Int])
    /// A weight stored in a non-float dtype.
    case unsupportedDType(name: String, dtype: String)
    /// No `tokenizer.model` / `tokenizer.model.v1` beside the weights.
    case missingTokenizer(folder: String)
    /// A row of a tensor that `shoal quantize` or `--quantize` cannot store as `type`.
    case unquantizableRow(file: String, tensor: String, row: Int, type: String, reason: String)

    public var description: String {
        switch self {
        case let .notACheckpoint(folder, found):
            let listing = found.isEmpty ? "it is empty or missing" : "found: " + found.prefix(8).joined(separator: ", ")
            return "\(folder) is not a model folder: expected config.json with model.safetensors "
                + "(or model.safetensors.index.json and its shards), or params.json with consolidated.safetensors; \(listing)"
        case let .notGGUF(file):
            return "\(file) is a file but not a GGUF model (it does not start with the bytes GGUF); give a GGUF file or a model folder"
        case let .badConfig(file, detail): return "\(file): \(detail)"
        case let .missingTensor(name, folder): return "tensor \(name) is missing from \(folder)"
        case let .missingShard(file, tensor): return "shard \(file) (holding \(tensor)) is missing"
        case let .shapeMismatch(name, expected, actual):
            return "tensor \(name) has shape \(actual), expected \(expected) from the config"
        case let .unsupportedDType(name, dtype): return "tensor \(name) has dtype \(dtype); weights must be F32, BF16 or F16"
        case let .unquantizableRow(file, tensor, row, type, reason):
            return "\(file): row \(row) of \(tensor) cannot be quantized to \(type): \(reason)"
        case let .missingTokenizer(folder):
            let tekken = FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("tekken.json"))
            return "no tokenizer.model, tokenizer.model.v1 or tokenizer.model.v3 in \(folder)"
                + (tekken ? " (its tekken.json, a tiktoken-style tokenizer of later Mistral models, is not supported)" : "")
        }
    }
}
