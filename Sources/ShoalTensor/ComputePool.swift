import CShoalKernels
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A fixed set of OS threads for matrix work: `threads - 1` workers created once, plus the
/// thread that calls `parallelFor`, which takes part.
///
/// A dispatch costs a few microseconds: workers spin on a generation counter for a while after
/// each job (the next matrix product of a token usually follows within microseconds) and only
/// then sleep on a condition variable. One thread at a time may call `parallelFor`.
///
/// `@unchecked Sendable`: all shared state is atomics or the mutex-guarded condition, and the
/// job slots are written only while every worker is idle (see `parallelFor`).
public final class ComputePool: @unchecked Sendable {
    private let state: PoolState
    private var workers: [pthread_t] = []

    /// Threads that run a `parallelFor`, the caller's included.
    public var threadCount: Int { state.threads }

    /// Starts `threads - 1` worker threads (`threads` >= 1; 1 means everything runs inline).
    public init(threads: Int) {
        precondition(threads >= 1, "a pool needs at least the calling thread")
        state = PoolState(threads: threads)
        for index in 1..<threads {
            workers.append(spawnWorker(state, index: index))
        }
    }

    /// Runs `body(i)` for every `i` in `0..<count`, split into `threadCount` contiguous chunks
    /// (the caller runs the first), and returns when all have finished.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if state.threads == 1 || count == 1 {
            for i in 0..<count { body(i) }
            return
        }
        precondition(!state.busy.exchange(true, ordering: .acquiring), "parallelFor is not reentrant")
        // Sound: workers reach `body` only through this pointer, and we return only after every
        // worker has finished its chunk and dropped its copy (pending == 0), so the closure never
        // outlives this call; withoutActuallyEscaping checks exactly that on the way out.
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { pointer in
                state.dispatch(UnsafeRawPointer(pointer), count: count)
            }
        }
        state.busy.store(false, ordering: .releasing)
    }

    deinit {
        state.stop()
        for thread in workers { pthread_join(thread, nil) }
    }
}

/// The state the caller and the workers share; workers hold it, not the pool, so the pool's
/// `deinit` runs when its owner lets go.
private final class PoolState: @unchecked Sendable {
    let threads: Int
    /// Bumped once per job (and once to stop): workers wait for it to move.
    let generation = Atomic<Int>(0)
    /// Workers still running the current job.
    let pending = Atomic<Int>(0)
    /// Workers asleep (or about to be) on `wake`: the caller signals only if this is nonzero.
    let sleepers = Atomic<Int>(0)
    let stopping = Atomic<Bool>(false)
    let busy = Atomic<Bool>(false)
    /// The job: address of the caller's `(Int) -> Void` and its count, published by `generation`.
    let body = Atomic<UInt>(0)
    let count = Atomic<Int>(0)
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    let wake: UnsafeMutablePointer<pthread_cond_t>

    /// How long an idle worker polls before sleeping: longer than the gap between a token's
    /// matrix products, short enough not to burn a core between requests.
    static let spin = Duration.microseconds(200)

    init(threads: Int) {
        self.threads = threads
        mutex = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        wake.deallocate()
    }

    func dispatch(_ job: UnsafeRawPointer, count: Int) {
        body.store(UInt(bitPattern: Int(bitPattern: job)), ordering: .relaxed)
        self.count.store(count, ordering: .relaxed)
        pending.store(threads - 1, ordering: .relaxed)
        // Sequentially consistent with the worker's `sleepers` increment: either it sees the new
        // generation before sleeping, or we see it asleep and signal.
        generation.add(1, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 { broadcast() }
        runChunk(0)
        var polls = 0
        while pending.load(ordering: .acquiring) > 0 {
            polls += 1
            if polls & 1023 == 0 { sched_yield() } else { shoal_spin_pause() }
        }
    }

    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        generation.add(1, ordering: .sequentiallyConsistent)
        broadcast()
    }

    private func broadcast() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
    }

    /// Chunk `part` of `threads` contiguous chunks of `0..<count`.
    func runChunk(_ part: Int) {
        let count = self.count.load(ordering: .relaxed)
        let start = count * part / threads, end = count * (part + 1) / threads
        if start == end { return }
        let bits = Int(bitPattern: body.load(ordering: .relaxed))
        let body = UnsafeRawPointer(bitPattern: bits)!.assumingMemoryBound(to: ((Int) -> Void).self).pointee
        for i in start..<end { body(i) }
    }

    func workerLoop(_ part: Int) {
        var seen = 0
        while true {
            seen = waitForGeneration(after: seen)
            if stopping.load(ordering: .acquiring) { return }
            runChunk(part)
            pending.subtract(1, ordering: .releasing)
        }
    }

    private func waitForGeneration(after seen: Int) -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now + Self.spin
        var polls = 0
        while true {
            let now = generation.load(ordering: .acquiring)
            if now != seen { return now }
            polls += 1
            if polls & 63 != 0 { shoal_spin_pause(); continue }
            if clock.now >= deadline { break }
        }
        pthread_mutex_lock(mutex)
        sleepers.add(1, ordering: .sequentiallyConsistent)
        var now = generation.load(ordering: .sequentiallyConsistent)
        while now == seen {
            pthread_cond_wait(wake, mutex)
            now = generation.load(ordering: .sequentiallyConsistent)
        }
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
        return now
    }
}

/// What a new worker thread needs; passed through pthread_create's context pointer.
private final class WorkerStart {
    let state: PoolState
    let part: Int
    init(state: PoolState, part: Int) { self.state = state; self.part = part }
}

private func spawnWorker(_ state: PoolState, index: Int) -> pthread_t {
    let context = Unmanaged.passRetained(WorkerStart(state: state, part: index)).toOpaque()
    #if canImport(Darwin)
    var thread: pthread_t?
    let rc = pthread_create(&thread, nil, { context in
        let start = Unmanaged<WorkerStart>.fromOpaque(context).takeRetainedValue()
        start.state.workerLoop(start.part)
        return nil
    }, context)
    precondition(rc == 0 && thread != nil, "pthread_create failed: \(rc)")
    return thread!
    #else
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { context in
        let start = Unmanaged<WorkerStart>.fromOpaque(context!).takeRetainedValue()
        start.state.workerLoop(start.part)
        return nil
    }, context)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
    #endif
}
