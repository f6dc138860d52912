import Foundation
import ShoalCluster
import ShoalModel
import ShoalServe
import ShoalTestSupport
import Testing

/// A worker with a replica dies while sequences run: the step that met it is retried on the
/// replica, so no request is lost and each still gives the tokens it gives alone.
@Suite(.serialized) struct WorkerLossTests {
    @Test(.timeLimit(.minutes(2))) func replicaTakesOverMidGeneration() async throws {
        let folder = try FixtureFolder.path("models/tiny-f32/hf")
        let prompts = try ServeFixtures.prompts("tiny-f32")
        // Experts 4-7 are held twice, by workers 1 and 2.
        let cluster = try LocalCluster(folder: folder, specs: ["0-3", "4-7", "4-7"])
        let addresses = cluster.addresses
        let requests = prompts.map {
            GenerationRequest(prompt: $0, parameters: GenerationParameters(maxTokens: 60, ignoreEOS: true))
        }
        let (alone, scheduler) = try await offPool {
            let local = try Engine(folder: folder, threads: 1)
            let alone = try requests.map { try local.generator.generate(prompt: $0.prompt, parameters: $0.parameters).ids }
            var options = RemoteExperts.Options()
            options.wireDType = .f32
            options.timeout = .seconds(5)
            let engine = try Engine(folder: folder, threads: 1) { checkpoint, _ in
                try RemoteExperts(checkpoint: checkpoint, workers: addresses, options: options)
            }
            let remote = engine.model.experts as! RemoteExperts
            let coverage = remote.coverage
            let scheduler = Scheduler(engine: engine, isReady: { coverage.isComplete })
            scheduler.start()
            return (alone, scheduler)
        }
        let runs = try requests.map { request in
            let run = EventLog()
            _ = try scheduler.submit(request, onEvent: run.add)
            return run
        }
        let started = try await offPool { runs[0].waitForTokens(5, within: 30) }
        #expect(started)
        await cluster.servers[1].shutdown(grace: .zero)  // mid-generation
        let ended = try await offPool { runs.map { $0.summary(within: 60) != nil } }
        try await offPool { scheduler.shutdown(grace: .zero) }
        await cluster.stop()
        for i in runs.indices {
            #expect(ended[i], "request \(i) failed or hung")
            #expect(runs[i].ids == alone[i], "request \(i)")
        }
    }
}
