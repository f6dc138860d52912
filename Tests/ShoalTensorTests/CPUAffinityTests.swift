import Foundation
import Synchronization
import Testing
import ShoalTensor

/// Pinning runs on threads of the tests' own, so the runner's threads stay where they were.
@Suite struct CPUAffinityTests {
    @Test func listsParseAndMalformedOnesAreRefused() {
        #expect(CPUAffinity.parse("0,2-3") == [0, 2, 3])
        #expect(CPUAffinity.parse("1") == [1])
        for bad in ["", "a", "3-1", "1,", "-1", "0-2-3", "5000", " 1"] {
            #expect(CPUAffinity.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func aPinnedThreadRunsOnlyOnItsCPU() throws {
        let allowed = try #require(CPUAffinity.allowedCPUs)
        let cpu = try #require(allowed.last)
        let (pinned, mask) = onNewThread { (CPUAffinity.pinCurrentThread(to: cpu), CPUAffinity.allowedCPUs) }
        #expect(pinned && mask == [cpu])
        #expect(CPUAffinity.allowedCPUs == allowed, "the calling thread is not moved")
        let outside = (0..<1024).first { !allowed.contains($0) }!
        #expect(!onNewThread { CPUAffinity.pinCurrentThread(to: outside) }, "CPU \(outside) is not ours")
    }

    /// The caller runs on `cpus[0]`, the helper on `cpus[1]`, and every index still runs once.
    @Test func aPinnedPoolRunsOnItsCPUs() throws {
        let allowed = try #require(CPUAffinity.allowedCPUs)
        let cpus = [allowed.last!, allowed.first!]
        let (caller, masks, counts) = onNewThread { () -> ([Int]?, [[Int]], [Int]) in
            let pool = ComputePool(threads: 2, cpus: cpus)
            let seen = Mutex<[[Int]]>([]), counts = Mutex([Int](repeating: 0, count: 32))
            pool.parallelFor(32) { i in
                usleep(2000)  // long enough that the helper takes chunks too
                let mask = CPUAffinity.allowedCPUs ?? []
                seen.withLock { $0.append(mask) }
                counts.withLock { $0[i] += 1 }
            }
            return (CPUAffinity.allowedCPUs, seen.withLock { $0 }, counts.withLock { $0 })
        }
        #expect(caller == [cpus[0]])
        #expect(counts == [Int](repeating: 1, count: 32))
        #expect(masks.allSatisfy { $0 == [cpus[0]] || $0 == [cpus[1]] }, "\(masks)")
        #expect(masks.contains([cpus[1]]), "the helper ran a chunk on its CPU: \(masks)")
    }
}

/// `body`'s result, computed on a new thread.
private func onNewThread<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
    let result = Mutex<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        let value = body()
        result.withLock { $0 = value }
        done.signal()
    }
    thread.start()
    done.wait()
    return result.withLock { $0! }
}
