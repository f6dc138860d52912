import Foundation
import Testing
import ShoalTensor
import ShoalTestSupport
@testable import ShoalModel

/// The fixtures (`FixtureFolder`) and what the model tests read from them.
enum Fixtures {
    static func path(_ relative: String) throws -> String { try FixtureFolder.path(relative) }

    /// The reference tensors of one model.
    typealias Expected = ReferenceOutputs

    /// A fresh temporary folder, removed by the caller.
    static func temporaryFolder() throws -> String { try FixtureFolder.temporary() }

    /// Copies a fixture folder into a temporary one (to damage it on purpose).
    static func copy(_ relative: String) throws -> String {
        let dst = try temporaryFolder() + "/model"
        try FileManager.default.copyItem(atPath: try path(relative), toPath: dst)
        return dst
    }
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
