import Foundation
import Testing
import ShoalTensor
@testable import ShoalModel

/// Bad folders and bad inputs get one clear error each, never a crash.
@Suite struct LoadErrorTests {
    @Test func folderThatIsNoCheckpointSaysWhatItExpected() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/weights.bin", contents: Data([1, 2, 3]))
        #expect(throws: ModelLoadError.notACheckpoint(folder: dir, found: ["weights.bin"])) {
            try Checkpoint(folder: dir)
        }
        let message = "\(ModelLoadError.notACheckpoint(folder: dir, found: ["weights.bin"]))"
        #expect(message.contains("config.json") && message.contains("params.json") && message.contains("weights.bin"))
    }

    @Test func truncatedSafetensorsNamesFileAndTensor() throws {
        let dir = try Fixtures.copy("models/tiny-bf16/hf")
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let file = dir + "/model.safetensors"
        let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.truncate(atOffset: UInt64(size - 1000))
        try handle.close()
        do {
            _ = try Engine(folder: dir, threads: 1)
            Issue.record("a truncated file loaded")
        } catch let error as SafetensorsError {
            guard case let .truncated(name, detail) = error else { Issue.record("wrong error \(error)"); return }
            #expect(name == "model.safetensors")
            #expect(detail.contains("tensor "))
        }
    }

    @Test func garbageHeaderIsRefused() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var bytes = Data()
        var n = UInt64(12).littleEndian
        bytes.append(Data(bytes: &n, count: 8))
        bytes.append(Data("{not json!!}".utf8))
        _ = FileManager.default.createFile(atPath: dir + "/x.safetensors", contents: bytes)
        #expect(throws: SafetensorsError.malformedHeader(file: "x.safetensors", detail: "header is not JSON")) {
            try SafetensorsFile(path: dir + "/x.safetensors")
        }
        // A header length past the end of the file.
        n = UInt64(1 << 40).littleEndian
        _ = FileManager.default.createFile(atPath: dir + "/y.safetensors", contents: Data(bytes: &n, count: 8))
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: dir + "/y.safetensors") }
    }

    @Test func sizeMismatchAndOverlapAreRefused() throws {
        let dir = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func write(_ header: String, dataBytes: Int) -> String {
            var h = Data(header.utf8)
            var n = UInt64(h.count).littleEndian
            var file = Data(bytes: &n, count: 8)
            file.append(h)
            file.append(Data(count: dataBytes))
            h.removeAll()
            let p = dir + "/\(UUID().uuidString).safetensors"
            _ = FileManager.default.createFile(atPath: p, contents: file)
            return p
        }
        let wrongSize = write(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, dataBytes: 16)
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: wrongSize) }
        let overlap = write(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, dataBytes: 16)
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: overlap) }
        let badType = write(#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 8)
        #expect(throws: SafetensorsError.unsupportedDType(file: (badType as NSString).lastPathComponent, tensor: "a", dtype: "Q4")) {
            try SafetensorsFile(path: badType)
        }
        let fine = write(#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 8)
        #expect(try SafetensorsFile(path: fine).tensors["a"]?.shape == [2])
    }

    @Test func missingTensorAndWrongShapeAreNamed() throws {
        let dir = try Fixtures.copy("models/tiny-f32/hf")
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        // Rewrite the file without one tensor and with another reshaped.
        let original = try SafetensorsFile(path: dir + "/model.safetensors")
        let names = original.tensors.keys.sorted().filter { $0 != "model.layers.1.self_attn.o_proj.weight" }
        let writer = try SafetensorsWriter(path: dir + "/new.safetensors", tensors: names.map { name in
            let info = original.tensors[name]!
            let shape = name == "model.layers.0.block_sparse_moe.experts.3.w2.weight" ? [128, 64] : info.shape
            return SafetensorsWriter.tensor(name, info.type, shape)
        })
        for name in names { try writer.append(original.data(original.tensors[name]!)) }
        try writer.finish()
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        try FileManager.default.moveItem(atPath: dir + "/new.safetensors", toPath: dir + "/model.safetensors")

        let checkpoint = try Checkpoint(folder: dir)
        #expect(throws: ModelLoadError.missingTensor(name: "model.layers.1.self_attn.o_proj.weight", folder: dir)) {
            try CoordinatorWeights(checkpoint: checkpoint)
        }
        #expect(throws: ModelLoadError.shapeMismatch(
            name: "model.layers.0.block_sparse_moe.experts.3.w2.weight", expected: [64, 128], actual: [128, 64])) {
            try ExpertStore.load(checkpoint, pairs: [ExpertKey(layer: 0, expert: 3)])
        }
        // A worker that holds other experts never touches the broken ones.
        #expect(try ExpertStore.load(checkpoint, pairs: [ExpertKey(layer: 0, expert: 2)]).experts.count == 1)
    }

    @Test func missingShardIsNamed() throws {
        let dir = try Fixtures.copy("models/tiny-bf16/hf-sharded")
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        try FileManager.default.removeItem(atPath: dir + "/model-00003-of-00003.safetensors")
        #expect(throws: ModelLoadError.self) { try Engine(folder: dir, threads: 1) }
    }

    @Test func badInputsAreRefusedAndTheModelStaysUsable() throws {
        let engine = try Engine(folder: try Fixtures.path("models/tiny-f32/hf"), threads: 1)
        let m = engine.model
        let cache = KVCache(config: m.config, capacity: 8)
        #expect(throws: InferenceError.tokenOutOfRange(id: 32000, vocabSize: 32000)) {
            try m.forward([1, 32000], cache: cache)
        }
        #expect(throws: InferenceError.tokenOutOfRange(id: -1, vocabSize: 32000)) { try m.forward([-1], cache: cache) }
        #expect(throws: InferenceError.emptyInput) { try m.forward([], cache: cache) }
        #expect(throws: InferenceError.contextOverflow(needed: 9, limit: 8)) {
            try m.forward(Array(repeating: 5, count: 9), cache: cache)
        }
        #expect(cache.length == 0)
        let long = Array(repeating: 5, count: m.config.maxContext)
        #expect(throws: InferenceError.contextOverflow(needed: m.config.maxContext + 10, limit: m.config.maxContext)) {
            try engine.generator.generate(prompt: long, parameters: GenerationParameters(maxTokens: 10))
        }
        #expect(try m.forward([1, 2, 3], cache: cache).count == m.config.vocabSize)
    }
}
