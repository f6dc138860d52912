import CShoalKernels

/// Measures what decode is bound by: tokens/s ≤ read bandwidth ÷ weight bytes per token.
public enum MemoryBandwidth {
    /// Median read bandwidth in GB/s (1e9 bytes) of `repeats` plain streaming reads of a
    /// `bytes` buffer (much bigger than the caches), split over the pool's threads.
    public static func measureRead(pool: ComputePool, bytes: Int = 512 << 20,
                                   repeats: Int = 5) -> Double {
        precondition(bytes >= 4096 && repeats >= 1)
        let count = bytes / 4
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { buffer.deallocate() }
        let parts = pool.threadCount
        // Touch every page first so the timed reads measure DRAM, not page faults.
        pool.parallelFor(parts) { part in
            let range = slice(part, of: parts, count: count)
            (buffer + range.lowerBound).initialize(repeating: 1, count: range.count)
        }
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: parts)
        defer { sums.deallocate() }
        let clock = ContinuousClock()
        var rates: [Double] = []
        for _ in 0..<repeats {
            let elapsed = clock.measure {
                pool.parallelFor(parts) { part in
                    let range = slice(part, of: parts, count: count)
                    sums[part] = shoal_read_sum_f32(buffer + range.lowerBound, range.count)
                }
            }
            rates.append(Double(count * 4) / elapsed.seconds / 1e9)
        }
        rates.sort()
        return rates[rates.count / 2]
    }

    private static func slice(_ part: Int, of parts: Int, count: Int) -> Range<Int> {
        (count * part / parts)..<(count * (part + 1) / parts)
    }
}
