import Foundation
import ShoalTensor
import ShoalTokenizer

/// Writes a checkpoint as a GGUF file llama.cpp reads: `llama` architecture metadata with
/// experts, the SentencePiece vocabulary as `tokenizer.ggml.*`, merged expert tensors, q/k rows
/// in the interleaved RoPE order, each weight in the type `mix` gives it.
public enum GGUFExport {
    /// Where a running export is: bytes written of the total, and the tensor being written.
    public struct Step: Sendable {
        public let tensor: String
        public let tensorIndex: Int
        public let tensorCount: Int
        public let bytesDone: Int
        public let bytesTotal: Int
    }

    /// One output tensor and where its rows come from.
    struct Planned {
        let tensor: GGUFWriter.Tensor
        /// Source matrices whose rows are laid end to end (several for a merged expert tensor),
        /// or one vector.
        let sources: [TensorName]
        let isVector: Bool
        /// A q/k projection whose rows must move to the interleaved RoPE order.
        let permuteHeads: Int?
    }

    /// Writes `checkpoint` to `path` quantized by `mix`, quantizing rows on `pool`, calling
    /// `progress` after each chunk of rows.
    public static func write(_ checkpoint: Checkpoint, mix: QuantizationMix, to path: String, pool: ComputePool,
                             progress: (Step) -> Void = { _ in }) throws {
        let c = checkpoint.config
        guard c.slidingWindow == nil else {
            throw ModelLoadError.badConfig(file: checkpoint.folder, detail: "a sliding window has no GGUF llama key; not exported")
        }
        let tokenizer = try checkpoint.loadTokenizer()
        let plan = self.plan(c, mix: mix, permute: checkpoint.ropeStyle == .halfSplit)
        for p in plan where p.tensor.dims[0] % p.tensor.type.blockWeights != 0 {
            throw ModelLoadError.badConfig(
                file: checkpoint.folder,
                detail: "\(p.tensor.name): rows of \(p.tensor.dims[0]) weights cannot be quantized to \(p.tensor.type.rawValue) (blocks of \(p.tensor.type.blockWeights)); try a mix of 32-weight blocks (q8_0, q4_0)")
        }
        let writer = try GGUFWriter(path: path, metadata: metadata(c, tokenizer: tokenizer, mix: mix,
                                                                 name: (checkpoint.folder as NSString).lastPathComponent),
                                    tensors: plan.map(\.tensor))
        let total = plan.reduce(0) { $0 + $1.tensor.byteCount }
        var done = 0
        for (index, p) in plan.enumerated() {
            func step() { progress(Step(tensor: p.tensor.name, tensorIndex: index, tensorCount: plan.count, bytesDone: done, bytesTotal: total)) }
            step()
            if p.isVector {
                let v = try checkpoint.vector(p.sources[0], count: p.tensor.dims[0])
                try v.withUnsafeBytes { try writer.write($0) }
                done += p.tensor.byteCount
                continue
            }
            let rows = p.tensor.dims[1], cols = p.tensor.dims[0]
            for source in p.sources {
                let m = try checkpoint.matrix(source, rows: rows, cols: cols)
                let rowBytes = p.tensor.type.rowBytes(cols)
                let chunkRows = max(1, min(rows, (8 << 20) / max(1, rowBytes)))
                let out = UnsafeMutableRawPointer.allocate(byteCount: chunkRows * rowBytes, alignment: 64)
                defer { out.deallocate() }
                for start in stride(from: 0, to: rows, by: chunkRows) {
                    let n = min(chunkRows, rows - start)
                    try quantizeRows(of: m, start..<(start + n), permutingHeads: p.permuteHeads, to: p.tensor.type,
                                     into: out, pool: pool, tensor: checkpoint.layout.name(source), file: checkpoint.folder)
                    try writer.write(UnsafeRawBufferPointer(start: out, count: n * rowBytes))
                    done += n * rowBytes
                    step()
                }
                checkpoint.release(source)
            }
        }
        try writer.finish()
        progress(Step(tensor: "", tensorIndex: plan.count, tensorCount: plan.count, bytesDone: total, bytesTotal: total))
    }

    /// Rows `rows` of `m` (each moved from `sourceRow` when `permutingHeads` is given)
    /// quantized to `type` into `out`, one row after another, split across `pool`. A row with
    /// NaN or infinite weights, or one whose stored form does not dequantize to finite weights
    /// (values past what a block's binary16 scale holds), is refused with the first such row
    /// of `tensor` (`file` the source): llama.cpp would write it and fail at inference.
    static func quantizeRows(of m: Matrix, _ rows: Range<Int>, permutingHeads heads: Int?, to type: DType,
                             into out: UnsafeMutableRawPointer, pool: ComputePool, tensor: String, file: String) throws {
        let rowBytes = type.rowBytes(m.cols), n = rows.count
        let parts = min(n, pool.threadCount * ComputePool.chunksPerThread)
        guard parts > 0 else { return }
        // each part's first refused row, n for none
        let refused = UnsafeMutableBufferPointer<Int>.allocate(capacity: parts)
        refused.initialize(repeating: n)
        defer { refused.deallocate() }
        pool.parallelFor(parts) { part in
            let row = UnsafeMutableBufferPointer<Float>.allocate(capacity: m.cols)
            defer { row.deallocate() }
            for i in (n * part / parts)..<(n * (part + 1) / parts) {
                m.copyRow(sourceRow(rows.lowerBound + i, heads: heads, rows: m.rows), into: row.baseAddress!)
                guard allFinite(UnsafeBufferPointer(row)) else { refused[part] = i; return }
                Quantizer.quantize(type, row.baseAddress!, count: m.cols, into: out + i * rowBytes)
                Matrix(dtype: type, rows: 1, cols: m.cols, base: out + i * rowBytes).copyRow(0, into: row.baseAddress!)
                guard allFinite(UnsafeBufferPointer(row)) else { refused[part] = i; return }
            }
        }
        guard let i = refused.min(), i < n else { return }
        let source = sourceRow(rows.lowerBound + i, heads: heads, rows: m.rows)  // the row as the user's file numbers it
        var row = [Float](repeating: 0, count: m.cols)
        row.withUnsafeMutableBufferPointer { m.copyRow(source, into: $0.baseAddress!) }
        let finite = row.allSatisfy(\.isFinite)
        throw ModelLoadError.unquantizableRow(
            file: file, tensor: tensor, row: source, type: type.rawValue,
            reason: finite ? "its largest weight, \(row.map(abs).max() ?? 0), is past what the type's binary16 scales hold"
                           : "it holds NaN or infinite weights")
    }

    /// The row of a Hugging Face q/k projection that holds output row `r` in the interleaved
    /// order: within each head, pair i is rows (i, i + head_dim/2) there and (2i, 2i+1) here
    /// (llama.cpp's convert_hf_to_gguf.py undoes transformers' permutation the same way).
    static func sourceRow(_ r: Int, heads: Int?, rows: Int) -> Int {
        guard let heads else { return r }
        let headDim = rows / heads, h = r / headDim, m = r % headDim
        return h * headDim + (m % 2) * (headDim / 2) + m / 2
    }

    static func plan(_ c: ModelConfig, mix: QuantizationMix, permute: Bool) -> [Planned] {
        func matrix(_ name: String, _ t: TensorName, rows: Int, cols: Int, heads: Int? = nil) -> Planned {
            Planned(tensor: .init(name: name, type: mix.type(for: t, layers: c.layers), dims: [cols, rows]),
                    sources: [t], isVector: false, permuteHeads: permute ? heads : nil)
        }
        func vector(_ name: String, _ t: TensorName) -> Planned {
            Planned(tensor: .init(name: name, type: .f32, dims: [c.dim]), sources: [t], isVector: true, permuteHeads: nil)
        }
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        var plan = [matrix("token_embd.weight", .embedding, rows: c.vocabSize, cols: c.dim)]
        for l in 0..<c.layers {
            plan += [
                vector("blk.\(l).attn_norm.weight", .attentionNorm(l)),
                matrix("blk.\(l).attn_q.weight", .wq(l), rows: q, cols: c.dim, heads: c.heads),
                matrix("blk.\(l).attn_k.weight", .wk(l), rows: kv, cols: c.dim, heads: c.kvHeads),
                matrix("blk.\(l).attn_v.weight", .wv(l), rows: kv, cols: c.dim),
                matrix("blk.\(l).attn_output.weight", .wo(l), rows: c.dim, cols: q),
                vector("blk.\(l).ffn_norm.weight", .ffnNorm(l)),
                matrix("blk.\(l).ffn_gate_inp.weight", .router(l), rows: c.experts, cols: c.dim),
            ]
            for (role, w, rows, cols) in [("gate", "w1", c.hiddenDim, c.dim), ("up", "w3", c.hiddenDim, c.dim),
                                          ("down", "w2", c.dim, c.hiddenDim)] {
                let sources = (0..<c.experts).map { TensorName.expert(l, $0, w) }
                plan.append(Planned(tensor: .init(name: "blk.\(l).ffn_\(role)_exps.weight",
                                                  type: mix.type(for: sources[0], layers: c.layers),
                                                  dims: [cols, rows, c.experts]),
                                    sources: sources, isVector: false, permuteHeads: nil))
            }
        }
        plan.append(vector("output_norm.weight", .finalNorm))
        if !c.tiedEmbeddings { plan.append(matrix("output.weight", .output, rows: c.vocabSize, cols: c.dim)) }
        return plan
    }

    static func metadata(_ c: ModelConfig, tokenizer t: SentencePieceTokenizer, mix: QuantizationMix,
                         name: String) -> [(String, GGUFWriter.Value)] {
        let ids = 0..<t.vocabSize
        return [
            ("general.architecture", .string("llama")),
            ("general.name", .string(name)),
            ("general.file_type", .u32(mix.fileType)),
            ("general.quantization_version", .u32(2)),
            ("llama.block_count", .u32(UInt32(c.layers))),
            ("llama.context_length", .u32(UInt32(c.maxContext))),
            ("llama.embedding_length", .u32(UInt32(c.dim))),
            ("llama.feed_forward_length", .u32(UInt32(c.hiddenDim))),
            ("llama.attention.head_count", .u32(UInt32(c.heads))),
            ("llama.attention.head_count_kv", .u32(UInt32(c.kvHeads))),
            ("llama.attention.key_length", .u32(UInt32(c.headDim))),
            ("llama.attention.value_length", .u32(UInt32(c.headDim))),
            ("llama.rope.dimension_count", .u32(UInt32(c.headDim))),
            ("llama.rope.freq_base", .f32(c.ropeTheta)),
            ("llama.attention.layer_norm_rms_epsilon", .f32(c.normEps)),
            ("llama.expert_count", .u32(UInt32(c.experts))),
            ("llama.expert_used_count", .u32(UInt32(c.expertsPerToken))),
            ("llama.vocab_size", .u32(UInt32(c.vocabSize))),
            ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.pre", .string("default")),
            ("tokenizer.ggml.tokens", .strings(ids.map(t.piece))),
            ("tokenizer.ggml.scores", .f32s(ids.map(t.score))),
            ("tokenizer.ggml.token_type", .i32s(ids.map { Int32(t.pieceType($0).rawValue) })),
            ("tokenizer.ggml.bos_token_id", .u32(UInt32(max(0, t.bosId)))),
            ("tokenizer.ggml.eos_token_id", .u32(UInt32(max(0, t.eosId)))),
            ("tokenizer.ggml.unknown_token_id", .u32(UInt32(max(0, t.unkId)))),
            ("tokenizer.ggml.add_bos_token", .bool(true)),
            ("tokenizer.ggml.add_eos_token", .bool(false)),
        ]
    }
}
