#if os(Linux)
import CShoalOS
#endif

/// Pinning threads to CPUs, for processes that share one machine's cores: the demo's
/// coordinator and its loopback workers, or an operator's several workers on one host.
///
/// Measured on 2 cores with 4 workers (README, "The cluster on one machine"): left to the
/// scheduler, the second of a layer's two workers often waits behind the first one's compute
/// threads for up to a millisecond; pinned (with `ComputePool`'s yield between chunks), that
/// tail is cut to about half a millisecond and the cluster decodes faster.
///
/// Linux only (`sched_setaffinity` through the `CShoalOS` shim, because Glibc's Swift module
/// leaves out the GNU declarations); elsewhere nothing is pinned and `allowedCPUs` is nil.
public enum CPUAffinity {
    /// A comma-separated list of CPU numbers and inclusive ranges, `0,2-3`; nil if malformed.
    public static func parse(_ text: String) -> [Int]? {
        var cpus: [Int] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let range = ClosedRange(listItem: item), range.upperBound < 1024 else { return nil }
            cpus.append(contentsOf: range)
        }
        return cpus
    }

    /// The CPUs this process may run on, ascending; nil where that cannot be asked.
    public static var allowedCPUs: [Int]? {
        #if os(Linux)
        var mask = [UInt8](repeating: 0, count: 128)  // 1024 CPUs, glibc's CPU_SETSIZE
        guard shoal_allowed_cpus(&mask, mask.count) == 0 else { return nil }
        return (0..<(mask.count * 8)).filter { mask[$0 / 8] & (1 << ($0 % 8)) != 0 }
        #else
        return nil
        #endif
    }

    /// Pins the calling thread to `cpu`; false if the system refused (a CPU this process may
    /// not use) or cannot pin.
    @discardableResult
    public static func pinCurrentThread(to cpu: Int) -> Bool {
        #if os(Linux)
        guard cpu >= 0, cpu < 1024 else { return false }
        return shoal_pin_current_thread(Int32(cpu)) == 0
        #else
        return false
        #endif
    }
}
