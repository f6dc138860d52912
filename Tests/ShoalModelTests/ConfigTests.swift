import Foundation
import Testing
@testable import ShoalModel

@Suite struct ConfigTests {
    /// The real Mixtral-8x7B files (transformers 4.x style and params.json) give the same model.
    @Test func realMixtralConfigsAgree() throws {
        let hf = try JSONDecoder().decode(
            HFConfig.self, from: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("configs/Mixtral-8x7B-Instruct-v0.1.config.json"))))
        let mistral = try JSONDecoder().decode(
            MistralParams.self, from: Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("configs/Mixtral-8x7B-Instruct-v0.1.params.json"))))
        let a = hf.modelConfig, b = mistral.modelConfig
        #expect(a == b)
        #expect(a.dim == 4096 && a.layers == 32 && a.heads == 32 && a.kvHeads == 8 && a.headDim == 128)
        #expect(a.hiddenDim == 14336 && a.vocabSize == 32000 && a.experts == 8 && a.expertsPerToken == 2)
        #expect(a.ropeTheta == 1e6 && a.maxContext == 32768 && a.slidingWindow == nil)
    }

    /// transformers 5.x puts rope_theta under rope_parameters.
    @Test func fixtureConfigsOfBothStylesLoad() throws {
        for layout in ["hf", "mistral"] {
            let c = try Checkpoint(folder: try Fixtures.path("models/tiny-bf16/\(layout)")).config
            #expect(c == ModelConfig(dim: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, hiddenDim: 128, vocabSize: 32000))
        }
        let sharded = try Checkpoint(folder: try Fixtures.path("models/tiny-bf16/hf-sharded"))
        #expect(sharded.layout == .huggingFace && sharded.tokenizerPath != nil)
        #expect(try Checkpoint(folder: try Fixtures.path("models/tiny-bf16/mistral")).tokenizerPath?.hasSuffix(".v1") == true)
    }

    @Test func impossibleConfigIsRefused() throws {
        let dir = try Fixtures.copy("models/tiny-f32/hf")
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as! [String: Any]
        json["num_key_value_heads"] = 3
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(throws: ModelLoadError.self) { try Checkpoint(folder: dir) }
        json.removeValue(forKey: "hidden_size")
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(throws: ModelLoadError.badConfig(file: dir + "/config.json", detail: "missing key hidden_size")) {
            try Checkpoint(folder: dir)
        }
    }
}
