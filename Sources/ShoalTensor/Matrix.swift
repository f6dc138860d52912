/// A read-only row-major weight matrix `[rows, cols]` whose storage lives elsewhere
/// (a mapped checkpoint file or an owned buffer). Kernels read it in its stored dtype.
///
/// `@unchecked Sendable`: the storage is immutable for the matrix's lifetime and whoever
/// made the matrix keeps it alive (see `SafetensorsFile`, `OwnedBuffer`).
public struct Matrix: @unchecked Sendable {
    public let dtype: DType
    public let rows: Int
    public let cols: Int
    public let base: UnsafeRawPointer

    public init(dtype: DType, rows: Int, cols: Int, base: UnsafeRawPointer) {
        precondition(dtype != .f16, "f16 weights are widened to f32 at load")
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.base = base
    }

    /// Bytes of weights this matrix streams through a kernel.
    public var byteCount: Int { rows * cols * dtype.size }

    /// Element `(r, c)` widened to Float (slow: for tests and small lookups).
    @inline(__always)
    public func element(_ r: Int, _ c: Int) -> Float {
        let i = r * cols + c
        switch dtype {
        case .f32: return base.load(fromByteOffset: i * 4, as: Float.self)
        case .bf16: return bf16ToFloat(base.load(fromByteOffset: i * 2, as: UInt16.self))
        case .f16: fatalError("unreachable")
        }
    }

    /// Copies row `r` widened to Float into `out[0..<cols]` (embedding lookups).
    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f32:
            out.update(from: (base + r * cols * 4).assumingMemoryBound(to: Float.self), count: cols)
        case .bf16:
            let row = (base + r * cols * 2).assumingMemoryBound(to: UInt16.self)
            for c in 0..<cols { out[c] = bf16ToFloat(row[c]) }
        case .f16: fatalError("unreachable")
        }
    }
}
