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
/// A dispatch costs well under a microsecond when workers are awake: after each job they poll a
/// generation counter for a while (a token's next matrix product usually follows within
/// microseconds) and only then sleep on a condition variable. Chunks are claimed, not assigned,
/// so the caller never waits for a worker that is still waking up: it runs the chunks itself.
/// One thread at a time may call `parallelFor`.
///
/// `@unchecked Sendable`: all state shared with the workers is atomic or guarded by its mutex.
public final class ComputePool: @unchecked Sendable {
    private let state: PoolState
    private let workers: [pthread_t]

    /// Threads that run a `parallelFor`, the caller's included.
    public var threadCount: Int { state.threads }

    /// Chunks per thread a `parallelFor` is cut into at most. Measured on mini decode (2 threads,
    /// one chunk per thread): each thread spent ~4% of the time waiting for the other at the end
    /// of a matrix product.
    public static let chunksPerThread = 4

    /// The CPUs its threads are pinned to (empty: none): see `init`.
    public let cpus: [Int]
    /// The thread last pinned to `cpus[0]`, as a number.
    private let pinnedCaller = Atomic<UInt>(0)

    /// Starts `threads - 1` worker threads (`threads` >= 1; 1 means everything runs inline).
    ///
    /// - Parameter cpus: empty, or where the threads run: the thread calling `parallelFor` on
    ///   `cpus[0]` (pinned at its first call), worker `i` on `cpus[i % cpus.count]`. Pinned
    ///   threads cannot be moved off a busy core, so between chunks they yield to any thread
    ///   waiting for theirs (a neighbouring process's request thread).
    public init(threads: Int, cpus: [Int] = []) {
        precondition(threads >= 1, "a pool needs at least the calling thread")
        let state = PoolState(threads: threads, yieldsBetweenChunks: !cpus.isEmpty)
        self.state = state
        self.cpus = cpus
        workers = (1..<threads).map { i in
            spawnWorker(state, cpu: cpus.isEmpty ? nil : cpus[i % cpus.count])
        }
    }

    /// Runs `body(i)` for every `i` in `0..<count`, split into up to `chunksPerThread` contiguous
    /// chunks per thread that the threads claim as they come free (so a thread slowed by a
    /// neighbour does less), and returns when all have finished. Not reentrant: `body` must not call `parallelFor`.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if !cpus.isEmpty { pinCaller() }
        if count <= 0 { return }
        if state.threads == 1 || count == 1 {
            for i in 0..<count { body(i) }
            return
        }
        precondition(!state.busy.exchange(true, ordering: .acquiring), "parallelFor is not reentrant")
        // Sound: a worker reaches `body` only through this pointer, only after claiming a chunk of
        // this call, and we return only once every chunk has finished (workers drop their copy
        // of `body` first), so the closure never outlives the call; withoutActuallyEscaping
        // checks exactly that on the way out.
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { pointer in
                state.dispatch(UnsafeRawPointer(pointer), count: count)
            }
        }
        state.busy.store(false, ordering: .releasing)
    }

    /// Sends polling workers to sleep now rather than after their spin: for a caller about to
    /// block on something slow (the network), whose spinning workers would take cores from
    /// the processes it waits for. The next `parallelFor` wakes them as usual.
    public func idle() {
        state.parked.store(true, ordering: .relaxed)
    }

    /// Pins the calling thread to `cpus[0]` unless it was the last one pinned.
    private func pinCaller() {
        #if canImport(Darwin)
        let me = UInt(bitPattern: pthread_self())
        #else
        let me = UInt(pthread_self())
        #endif
        if pinnedCaller.load(ordering: .relaxed) == me { return }
        CPUAffinity.pinCurrentThread(to: cpus[0])
        pinnedCaller.store(me, ordering: .relaxed)
    }

    deinit {
        state.stop()
        for thread in workers { pthread_join(thread, nil) }
    }
}

/// The state the caller and the workers share; workers hold it, not the pool, so the pool's
/// `deinit` runs when its owner lets go.
private final class PoolState: @unchecked Sendable {
    /// Threads, and chunks per job.
    let threads: Int
    /// Whether a thread yields its core after each chunk (pinned pools).
    let yieldsBetweenChunks: Bool
    /// Bumped once per job (and once to stop): idle workers wait for it to move.
    let generation = Atomic<Int>(0)
    /// The current job's chunk count (high 32 bits) and next unclaimed chunk (low 32 bits):
    /// one word, so a late claim against the previous job reads that job's count with its own
    /// index and stands down, even after the next job has been set up.
    let next = Atomic<Int>(0)
    /// Chunks of the current job that have finished.
    let done = Atomic<Int>(0)
    /// Workers asleep (or about to be) on `wake`: the caller signals only if this is nonzero.
    let sleepers = Atomic<Int>(0)
    let stopping = Atomic<Bool>(false)
    /// Set by `idle()`: workers stop polling and sleep; cleared by the next dispatch.
    let parked = Atomic<Bool>(false)
    let busy = Atomic<Bool>(false)
    /// The job: address of the caller's `(Int) -> Void` and its count, published by `next`.
    let body = Atomic<UInt>(0)
    let count = Atomic<Int>(0)
    /// The dispatching thread's forced kernel level (-1: none), applied by whoever runs a chunk.
    let isa = Atomic<Int>(-1)
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    let wake: UnsafeMutablePointer<pthread_cond_t>

    /// How long an idle worker polls before sleeping: longer than the gap between a token's
    /// matrix products, short enough not to burn a core between requests.
    static let spin = Duration.microseconds(200)

    init(threads: Int, yieldsBetweenChunks: Bool) {
        self.threads = threads
        self.yieldsBetweenChunks = yieldsBetweenChunks
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
        // Every chunk of the previous job has finished, so a worker still looking at `next`
        // claims nothing until this store opens the new job to it.
        body.store(UInt(bitPattern: Int(bitPattern: job)), ordering: .relaxed)
        self.count.store(count, ordering: .relaxed)
        let chunks = min(count, threads * ComputePool.chunksPerThread)
        isa.store(Int(shoal_kernels_thread_isa()), ordering: .relaxed)
        done.store(0, ordering: .relaxed)
        parked.store(false, ordering: .relaxed)
        next.store(chunks << 32, ordering: .releasing)
        // Sequentially consistent with the worker's `sleepers` increment: either it sees the new
        // generation before sleeping, or we see it asleep and signal.
        generation.add(1, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 { broadcast() }
        runChunks()
        var polls = 0
        while done.load(ordering: .acquiring) < chunks {
            polls += 1
            // Yielding now and then lets a descheduled worker run when threads outnumber cores.
            if polls & 63 == 0 { sched_yield() } else { shoal_spin_pause() }
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

    /// Claims and runs chunks of the current job until none are left.
    func runChunks() {
        while true {
            let claim = next.wrappingAdd(1, ordering: .acquiring).oldValue
            let chunk = claim & 0xFFFF_FFFF, chunks = claim >> 32
            if chunk >= chunks { return }
            runChunk(chunk, of: chunks)
            done.add(1, ordering: .releasing)
            if yieldsBetweenChunks { sched_yield() }
        }
    }

    /// Chunk `part` of `chunks` contiguous chunks of `0..<count`. Not inlined, so the copy of
    /// `body` is released here, before the caller can see the chunk counted as done.
    @inline(never)
    private func runChunk(_ part: Int, of chunks: Int) {
        let level = Int32(isa.load(ordering: .relaxed))
        if shoal_kernels_thread_isa() != level { _ = shoal_kernels_set_thread_isa(level) }
        let count = self.count.load(ordering: .relaxed)
        let start = count * part / chunks, end = count * (part + 1) / chunks
        if start == end { return }
        let bits = Int(bitPattern: body.load(ordering: .relaxed))
        let body = UnsafeRawPointer(bitPattern: bits)!.assumingMemoryBound(to: ((Int) -> Void).self).pointee
        for i in start..<end { body(i) }
    }

    func workerLoop() {
        var seen = 0
        while true {
            seen = waitForGeneration(after: seen)
            if stopping.load(ordering: .acquiring) { return }
            runChunks()
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
            if clock.now >= deadline || parked.load(ordering: .relaxed) { break }
            sched_yield()
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

/// What a worker thread starts with: the pool's state and the CPU to pin itself to.
private final class WorkerStart {
    let state: PoolState
    let cpu: Int?
    init(state: PoolState, cpu: Int?) { self.state = state; self.cpu = cpu }

    func run() {
        if let cpu { CPUAffinity.pinCurrentThread(to: cpu) }
        state.workerLoop()
    }
}

private func spawnWorker(_ state: PoolState, cpu: Int?) -> pthread_t {
    // The worker's retain of its start, released when its loop ends.
    let context = Unmanaged.passRetained(WorkerStart(state: state, cpu: cpu)).toOpaque()
    #if canImport(Darwin)
    var thread: pthread_t?
    let rc = pthread_create(&thread, nil, { context in
        Unmanaged<WorkerStart>.fromOpaque(context).takeRetainedValue().run()
        return nil
    }, context)
    precondition(rc == 0 && thread != nil, "pthread_create failed: \(rc)")
    return thread!
    #else
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { context in
        Unmanaged<WorkerStart>.fromOpaque(context!).takeRetainedValue().run()
        return nil
    }, context)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
    #endif
}
