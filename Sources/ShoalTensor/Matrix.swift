import CShoalKernels

/// A read-only row-major weight matrix `[rows, cols]` whose storage lives elsewhere
/// (a mapped checkpoint file or an owned buffer). Kernels read it in its stored dtype; a
/// block-quantized row is `cols / blockWeights` consecutive blocks.
///
/// `@unchecked Sendable`: the storage is immutable for the matrix's lifetime and whoever
/// made the matrix keeps it alive (see `SafetensorsFile`, `GGUFFile`).
public struct Matrix: @unchecked Sendable {
    public let dtype: DType
    public let rows: Int
    public let cols: Int
    public let base: UnsafeRawPointer

    public init(dtype: DType, rows: Int, cols: Int, base: UnsafeRawPointer) {
        precondition(dtype != .f16, "f16 weights are widened to f32 at load")
        precondition(cols % dtype.blockWeights == 0, "\(dtype.rawValue) rows hold whole blocks")
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.base = base
    }

    /// Bytes of one row.
    public var rowBytes: Int { dtype.rowBytes(cols) }

    /// Bytes of weights this matrix streams through a kernel.
    public var byteCount: Int { rows * rowBytes }

    /// Element `(r, c)` widened or dequantized to Float by the plain reference
    /// (`BlockFormat`): slow, for tests and the reference kernels.
    public func element(_ r: Int, _ c: Int) -> Float {
        let row = base + r * rowBytes
        switch dtype {
        case .f32: return row.loadUnaligned(fromByteOffset: c * 4, as: Float.self)
        case .bf16: return bf16ToFloat(row.loadUnaligned(fromByteOffset: c * 2, as: UInt16.self))
        case .f16: fatalError("unreachable")
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K:
            let block = row + c / dtype.blockWeights * dtype.blockBytes
            return BlockFormat.weight(dtype, block: UnsafeRawBufferPointer(start: block, count: dtype.blockBytes),
                                      index: c % dtype.blockWeights)
        }
    }

    /// Copies row `r` widened or dequantized to Float into `out[0..<cols]` (embedding lookups),
    /// with the values the kernels multiply by.
    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        shoal_dequantize(dtype.kernelType, base + r * rowBytes, cols, out)
    }
}
