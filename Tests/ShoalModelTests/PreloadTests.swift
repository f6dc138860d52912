import ShoalModel
import ShoalTensor
import Testing

/// `serve --preload`: the engine reads in every weight it computes with, and no other.
@Suite struct PreloadTests {
    /// A backend for an engine whose experts are elsewhere; never called here.
    final class ExpertsElsewhere: ExpertBackend {
        func moe(layer: Int, x: UnsafePointer<Float>, routes: Routes, out: UnsafeMutablePointer<Float>) throws {
            throw ExpertError.notHeld(layer: layer, expert: Int(routes.expert.first ?? 0))
        }
    }

    @Test func preloadCoversTheWeightsThisProcessComputesWith() throws {
        let folder = try Fixtures.path("models/tiny-bf16/hf")
        let local = try Engine(folder: folder, threads: 1)
        // The byte counts from the config (bf16: two bytes a weight), not from the loaded matrices.
        let c = local.model.config
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        let shared = 2 * (2 * c.vocabSize * c.dim + c.layers * (2 * q * c.dim + 2 * kv * c.dim + c.experts * c.dim))
        let experts = 2 * c.layers * c.experts * 3 * c.hiddenDim * c.dim

        var reports: [(done: Int, total: Int)] = []
        local.preload { reports.append(($0, $1)) }
        #expect(reports.last.map { $0.done == shared + experts && $0.total == shared + experts } == true, "\(reports)")
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.done < $1.done }, "progress only grows")

        let coordinator = try Engine(folder: folder, threads: 1) { _, _ in ExpertsElsewhere() }
        reports.removeAll()
        coordinator.preload { reports.append(($0, $1)) }
        #expect(reports.last.map { $0.done == shared && $0.total == shared } == true, "only the coordinator's matrices: \(reports)")
    }
}
