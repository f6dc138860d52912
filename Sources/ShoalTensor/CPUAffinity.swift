#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Pinning threads to CPUs, for processes that share one machine's cores: the demo's
/// coordinator and its loopback workers, or an operator's several workers on one host.
///
/// Measured on 2 cores with 4 workers (README, "The cluster on one machine"): left to the
/// scheduler, the second of a layer's two workers often waits behind the first one's compute
/// threads for up to a millisecond; pinned (with `ComputePool`'s yield between chunks), that
/// tail is cut to about half a millisecond and the cluster decodes faster.
///
/// Linux only (`sched_setaffinity`, looked up at run time because Glibc's Swift module leaves
/// out the GNU declarations); elsewhere nothing is pinned and `allowedCPUs` is nil.
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
        guard let getAffinity = functions?.get else { return nil }
        var set = cpu_set_t()
        guard getAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else { return nil }
        return withUnsafeBytes(of: &set) { bytes in
            (0..<(bytes.count * 8)).filter { bytes[$0 / 8] & (1 << ($0 % 8)) != 0 }
        }
        #else
        return nil
        #endif
    }

    /// Pins the calling thread to `cpu`; false if the system refused (a CPU this process may
    /// not use) or cannot pin.
    @discardableResult
    public static func pinCurrentThread(to cpu: Int) -> Bool {
        #if os(Linux)
        guard let setAffinity = functions?.set, cpu >= 0, cpu < MemoryLayout<cpu_set_t>.size * 8 else { return false }
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { $0[cpu / 8] = 1 << (cpu % 8) }
        // pid 0: the calling thread (Linux applies affinity per thread).
        return setAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0
        #else
        return false
        #endif
    }

    #if os(Linux)
    private typealias SetAffinity = @convention(c) (pid_t, Int, UnsafePointer<cpu_set_t>) -> Int32
    private typealias GetAffinity = @convention(c) (pid_t, Int, UnsafeMutablePointer<cpu_set_t>) -> Int32

    /// glibc's `sched_setaffinity` and `sched_getaffinity`, found in the process's symbols.
    private static let functions: (set: SetAffinity, get: GetAffinity)? = {
        let everywhere = dlopen(nil, RTLD_NOW)
        guard let set = dlsym(everywhere, "sched_setaffinity"), let get = dlsym(everywhere, "sched_getaffinity")
        else { return nil }
        return (unsafeBitCast(set, to: SetAffinity.self), unsafeBitCast(get, to: GetAffinity.self))
    }()
    #endif
}
