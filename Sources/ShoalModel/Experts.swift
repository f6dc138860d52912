import ShoalTensor

/// Errors from reaching experts, local or remote.
public enum ExpertError: Error, CustomStringConvertible, Equatable {
    /// A route names an expert that no backend holds.
    case notHeld(layer: Int, expert: Int)

    public var description: String {
        switch self {
        case let .notHeld(layer, expert): return "layer \(layer) expert \(expert) is not held here"
        }
    }
}

/// The one way the model reaches experts. The in-process implementation is `LocalExperts`;
/// a remote one sends the same call over the network. The model never knows which.
public protocol ExpertBackend: AnyObject {
    /// For each token t of `x` (`[n, dim]`), writes `out[t] = Σ_j weight_j · expert_j(x[t])`
    /// over the token's routes, adding in ascending expert order starting from zero.
    func moe(layer: Int, x: UnsafePointer<Float>, routes: Routes, out: UnsafeMutablePointer<Float>) throws
}

/// Experts computed in this process: each expert gathers the tokens routed to it and runs
/// one matrix product over them (mistral-inference `moe.py`), all experts in one dispatch.
public final class LocalExperts: ExpertBackend {
    public let store: ExpertStore
    let pool: ComputePool
    let dim: Int
    let hidden: Int
    /// Weight bytes streamed by the last calls since reset (for `shoal bench`).
    public var weightBytesRead = 0

    // Run state, reused across calls.
    private let gathered = FloatBuffer()  // (slots, dim)      tokens in expert order
    private let hb = FloatBuffer()  // (slots, hidden)   w1 · x, then silu(w1 x) ⊙ w3 x
    private let hb2 = FloatBuffer()  // (slots, hidden)  w3 · x
    private let y = FloatBuffer()  // (slots, dim)       w2 · hb
    private var slotToken: [Int] = []
    private var slotWeight: [Float] = []
    private var counts: [Int]  // (experts,) tokens routed to each expert
    private var offsets: [Int]  // (experts+1,) first slot of each expert
    private var fill: [Int]  // (experts,) next free slot while gathering
    private var products = ProductBatch()

    public init(store: ExpertStore, pool: ComputePool) {
        self.store = store
        self.pool = pool
        dim = store.config.dim
        hidden = store.config.hiddenDim
        counts = Array(repeating: 0, count: store.config.experts)
        offsets = Array(repeating: 0, count: store.config.experts + 1)
        fill = counts
    }

    /// out[t] = Σ weight · expert(x[t]) over token t's routes, added in ascending expert
    /// order from zero; `routes` may give a token any number of experts (a worker's share).
    public func moe(layer: Int, x: UnsafePointer<Float>, routes: Routes, out: UnsafeMutablePointer<Float>) throws {
        let n = routes.tokenCount, slots = routes.count
        // Gather: slot order is expert-major, token-ascending inside an expert.
        for e in counts.indices { counts[e] = 0 }
        for s in 0..<slots {
            let e = Int(routes.expert[s])
            guard e < counts.count, store.experts[ExpertKey(layer: layer, expert: e)] != nil else {
                throw ExpertError.notHeld(layer: layer, expert: e)
            }
            counts[e] += 1
        }
        for e in counts.indices { offsets[e + 1] = offsets[e] + counts[e] }
        for e in counts.indices { fill[e] = offsets[e] }
        let xs = gathered.reserve(slots * dim)
        if slotToken.count < slots {
            slotToken = Array(repeating: 0, count: slots)
            slotWeight = Array(repeating: 0, count: slots)
        }
        for s in 0..<slots {
            let e = Int(routes.expert[s]), t = Int(routes.token[s]), slot = fill[e]
            fill[e] += 1
            slotToken[slot] = t
            slotWeight[slot] = routes.weight[s]
            (xs + slot * dim).update(from: x + t * dim, count: dim)
        }
        let h1 = hb.reserve(slots * hidden), h3 = hb2.reserve(slots * hidden), ys = y.reserve(slots * dim)

        // w1 and w3 of every active expert in one dispatch; then w2 of every one in another.
        dispatch(layer: layer, phase: .up, xs: xs, h1: h1, h3: h3, ys: ys)
        swiglu(h1, h3, count: slots * hidden)
        dispatch(layer: layer, phase: .down, xs: xs, h1: h1, h3: h3, ys: ys)

        // Scatter in ascending expert order: out[t] = 0 + w_a·y_a + w_b·y_b + …
        out.update(repeating: 0, count: n * dim)
        for slot in 0..<slots {
            let o = out + slotToken[slot] * dim, w = slotWeight[slot], src = ys + slot * dim
            for i in 0..<dim { o[i] += w * src[i] }
        }
    }

    private enum Phase { case up, down }

    /// Dispatches one phase's products for each active expert in one `ProductBatch`: an
    /// expert's result depends only on its own tokens, never on which other experts share the
    /// call, so a worker holding a subset computes the same bits.
    private func dispatch(
        layer: Int, phase: Phase, xs: UnsafeMutablePointer<Float>, h1: UnsafeMutablePointer<Float>,
        h3: UnsafeMutablePointer<Float>, ys: UnsafeMutablePointer<Float>
    ) {
        products.removeAll()
        func add(_ m: Matrix, _ x: UnsafePointer<Float>, _ ldx: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ n: Int) {
            products.append(MatMul(matrix: m, x: x, ldx: ldx, n: n, y: y, ldy: ldy))
        }
        for e in counts.indices where counts[e] > 0 {
            let w = store.experts[ExpertKey(layer: layer, expert: e)]!
            let o = offsets[e], m = counts[e]
            switch phase {
            case .up:
                add(w.w1, xs + o * dim, dim, h1 + o * hidden, hidden, m)
                add(w.w3, xs + o * dim, dim, h3 + o * hidden, hidden, m)
            case .down:
                add(w.w2, h1 + o * hidden, hidden, ys + o * dim, dim, m)
            }
        }
        weightBytesRead += products.weightBytes
        products.run(pool: pool)
    }

    /// hb = silu(hb) ⊙ hb2, split across the pool.
    private func swiglu(_ h1: UnsafeMutablePointer<Float>, _ h3: UnsafeMutablePointer<Float>, count: Int) {
        let chunks = count >= 65536 ? pool.threadCount : 1
        let per = (count + chunks - 1) / chunks
        let body = { (c: Int) in
            let lo = c * per, hi = min(count, lo + per)
            if lo < hi { Kernels.swiglu(h1 + lo, h3 + lo, count: hi - lo) }
        }
        if chunks == 1 { body(0) } else { pool.parallelFor(chunks, body) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
