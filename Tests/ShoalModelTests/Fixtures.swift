import Foundation
import Testing
import ShoalTensor
import ShoalTestSupport
@testable import ShoalModel

/// The fixtures (`FixtureFolder`) and what the model tests read from them.
enum Fixtures {
    static func path(_ relative: String) throws -> String { try FixtureFolder.path(relative) }

    /// The reference tensors of one model.
    final class Expected {
        let file: SafetensorsFile
        let json: [String: Any]
        init(model: String) throws {
            file = try SafetensorsFile(path: try Fixtures.path("models/\(model)/expected.safetensors"))
            let data = try Data(contentsOf: URL(fileURLWithPath: try Fixtures.path("models/\(model)/expected.json")))
            json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        }
        func floats(_ name: String) throws -> [Float] { try file.floats(name) }
        func ints(_ name: String) throws -> [Int] { try file.floats(name).map { Int($0) } }
        var promptCount: Int { (json["prompts"] as! [Any]).count }
    }

    /// A fresh temporary folder, removed by the caller.
    static func temporaryFolder() throws -> String {
        let p = NSTemporaryDirectory() + "shoal-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    /// Copies a fixture folder into a temporary one (to damage it on purpose).
    static func copy(_ relative: String) throws -> String {
        let dst = try temporaryFolder() + "/model"
        try FileManager.default.copyItem(atPath: try path(relative), toPath: dst)
        return dst
    }
}

/// Asserts |a-b| <= atol + rtol*|b| elementwise, reporting the worst element.
func expectClose(_ a: [Float], _ b: [Float], atol: Float = 1e-4, rtol: Float = 1e-4, _ what: String,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, "\(what): \(a.count) values, expected \(b.count)", sourceLocation: sourceLocation)
    guard a.count == b.count else { return }
    var worst = 0, worstExcess: Float = -.infinity
    for i in a.indices {
        let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
        if !(excess <= worstExcess) || excess.isNaN { worstExcess = excess.isNaN ? .infinity : excess; worst = i }
    }
    #expect(worstExcess <= 0,
            "\(what): element \(worst) is \(a[worst]), expected \(b[worst]) (tolerance \(atol) + \(rtol)·|b|)",
            sourceLocation: sourceLocation)
}

/// Prompt 0's router choices (exactly), router weights and logits, and every layer's output
/// against a reference file's `prompt0.*` tensors.
func expectRoutingAndLayers(_ trace: ForwardTrace, _ floats: (String) throws -> [Float], _ tag: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(trace.routerIndices.flatMap { $0 } == (try floats("prompt0.router_topk_indices").map { Int($0) }),
            "\(tag) router indices", sourceLocation: sourceLocation)
    expectClose(trace.routerWeights.flatMap { $0 }, try floats("prompt0.router_topk_weights"), "\(tag) router weights",
                sourceLocation: sourceLocation)
    expectClose(trace.routerLogits.flatMap { $0 }, try floats("prompt0.router_logits"), "\(tag) router logits",
                sourceLocation: sourceLocation)
    expectClose(trace.layerOutputs.flatMap { $0 }, try floats("prompt0.layer_outputs"), "\(tag) layer outputs",
                sourceLocation: sourceLocation)
}
