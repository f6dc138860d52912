/// A 64-byte-aligned float32 scratch buffer owned by a run state. It grows when a larger
/// batch arrives and is reused for every later token, so hot loops allocate nothing.
///
/// `@unchecked Sendable`: one owner at a time writes it (the run state's thread and the
/// compute pool threads it hands disjoint ranges to).
public final class FloatBuffer: @unchecked Sendable {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var capacity: Int

    public init(_ capacity: Int = 0) {
        self.capacity = max(capacity, 1)
        pointer = Self.allocate(self.capacity)
    }

    deinit { pointer.deallocate() }

    /// Makes room for `count` floats; old contents are not kept.
    @discardableResult
    public func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            capacity = count
            pointer = Self.allocate(count)
        }
        return pointer
    }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    private static func allocate(_ n: Int) -> UnsafeMutablePointer<Float> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: n * 4, alignment: 64)
        raw.initializeMemory(as: Float.self, repeating: 0, count: n)
        return raw.assumingMemoryBound(to: Float.self)
    }
}
