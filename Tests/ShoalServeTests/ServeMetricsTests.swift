import ShoalServe
import Testing

@Suite(.timeLimit(.minutes(1)))
struct ServeMetricsTests {
    /// The rendered text as a set of lines, for exact membership checks.
    private func lines(_ metrics: ServeMetrics) -> Set<String> {
        Set(metrics.render().split(separator: "\n").map(String.init))
    }

    @Test func requestsAndTokens() {
        let metrics = ServeMetrics(layers: 2, experts: 4, workers: [])
        metrics.requestFinished(outcome: .completed)
        metrics.requestFinished(outcome: .completed)
        metrics.requestFinished(outcome: .rejected)
        metrics.promptTokens(12)
        metrics.promptTokens(3)
        metrics.completionTokens(7)
        let text = lines(metrics)
        #expect(text.contains("# TYPE shoal_requests_total counter"))
        #expect(text.contains(#"shoal_requests_total{outcome="completed"} 2"#))
        #expect(text.contains(#"shoal_requests_total{outcome="rejected"} 1"#))
        #expect(text.contains(#"shoal_requests_total{outcome="cancelled"} 0"#))
        #expect(text.contains(#"shoal_requests_total{outcome="failed"} 0"#))
        #expect(text.contains("shoal_prompt_tokens_total 15"))
        #expect(text.contains("shoal_completion_tokens_total 7"))
    }

    @Test func gauges() {
        let metrics = ServeMetrics(layers: 1, experts: 1, workers: [])
        metrics.setQueueDepth(3)
        metrics.setRunning(5)
        metrics.setKVCache(usedTokens: 100, capacityTokens: 4096, bytesPerToken: 1024)
        metrics.setQueueDepth(2)
        let text = lines(metrics)
        #expect(text.contains("# TYPE shoal_queue_depth gauge"))
        #expect(text.contains("shoal_queue_depth 2.0"))
        #expect(text.contains("shoal_running_sequences 5.0"))
        #expect(text.contains("shoal_kv_cache_tokens_used 100.0"))
        #expect(text.contains("shoal_kv_cache_tokens_capacity 4096.0"))
        #expect(text.contains("shoal_kv_cache_bytes_used 102400.0"))
    }

    @Test func latencyHistograms() {
        let metrics = ServeMetrics(layers: 1, experts: 1, workers: [])
        metrics.timeToFirstToken(seconds: 0.2)
        metrics.timeToFirstToken(seconds: 3)
        metrics.interTokenLatency(seconds: 0.004)
        metrics.stepFinished(tokens: 8, seconds: 0.03)
        metrics.stepFinished(tokens: 1, seconds: 0.02)
        let text = lines(metrics)
        #expect(text.contains("# TYPE shoal_time_to_first_token_seconds histogram"))
        #expect(text.contains(#"shoal_time_to_first_token_seconds_bucket{le="0.1"} 0"#))
        #expect(text.contains(#"shoal_time_to_first_token_seconds_bucket{le="0.25"} 1"#))
        #expect(text.contains(#"shoal_time_to_first_token_seconds_bucket{le="5.0"} 2"#))
        #expect(text.contains(#"shoal_time_to_first_token_seconds_bucket{le="+Inf"} 2"#))
        #expect(text.contains("shoal_time_to_first_token_seconds_count 2"))
        #expect(text.contains("shoal_time_to_first_token_seconds_sum 3.2"))
        #expect(text.contains(#"shoal_inter_token_latency_seconds_bucket{le="0.0025"} 0"#))
        #expect(text.contains(#"shoal_inter_token_latency_seconds_bucket{le="0.005"} 1"#))
        #expect(text.contains("shoal_inter_token_latency_seconds_count 1"))
        #expect(text.contains(#"shoal_step_seconds_bucket{le="0.025"} 1"#))
        #expect(text.contains(#"shoal_step_seconds_bucket{le="0.05"} 2"#))
        #expect(text.contains("shoal_step_seconds_count 2"))
        #expect(text.contains("shoal_step_tokens_total 9"))
    }

    @Test func expertRouting() {
        let metrics = ServeMetrics(layers: 2, experts: 3, workers: [])
        metrics.routed(layer: 1, expert: 2, tokens: 5)
        metrics.routed(layer: 1, expert: 2, tokens: 1)
        metrics.routed(layer: 0, expert: 0, tokens: 4)
        let text = lines(metrics)
        #expect(text.contains(#"shoal_expert_tokens_total{layer="1",expert="2"} 6"#))
        #expect(text.contains(#"shoal_expert_tokens_total{layer="0",expert="0"} 4"#))
        #expect(text.contains(#"shoal_expert_tokens_total{layer="0",expert="1"} 0"#))
        let series = text.filter { $0.hasPrefix("shoal_expert_tokens_total{") }
        #expect(series.count == 6)
    }

    @Test func workerCallsKnownAndLate() {
        let metrics = ServeMetrics(layers: 1, experts: 1, workers: ["a:7070", "b:7070"])
        metrics.workerCall(worker: "a:7070", seconds: 0.002, failed: false, sentBytes: 100, receivedBytes: 90)
        metrics.workerCall(worker: "a:7070", seconds: 0.3, failed: true, sentBytes: 100, receivedBytes: 0)
        metrics.workerCall(worker: "c:7070", seconds: 0.01, failed: false, sentBytes: 7, receivedBytes: 8)
        metrics.workerCall(worker: "c:7070", seconds: 0.01, failed: false, sentBytes: 7, receivedBytes: 8)
        let text = lines(metrics)
        #expect(text.contains(#"shoal_worker_call_seconds_bucket{worker="a:7070",le="0.0025"} 1"#))
        #expect(text.contains(#"shoal_worker_call_seconds_bucket{worker="a:7070",le="0.5"} 2"#))
        #expect(text.contains(#"shoal_worker_call_seconds_count{worker="a:7070"} 2"#))
        #expect(text.contains(#"shoal_worker_call_errors_total{worker="a:7070"} 1"#))
        #expect(text.contains(#"shoal_worker_call_errors_total{worker="b:7070"} 0"#))
        #expect(text.contains(#"shoal_wire_bytes_sent_total{worker="a:7070"} 200"#))
        #expect(text.contains(#"shoal_wire_bytes_received_total{worker="a:7070"} 90"#))
        #expect(text.contains(#"shoal_worker_call_seconds_count{worker="c:7070"} 2"#))
        #expect(text.contains(#"shoal_wire_bytes_sent_total{worker="c:7070"} 14"#))
        #expect(text.contains(#"shoal_wire_bytes_received_total{worker="c:7070"} 16"#))
    }

    @Test func concurrentCallsAllCount() async {
        let metrics = ServeMetrics(layers: 1, experts: 1, workers: [])
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                group.addTask {
                    for _ in 0..<1000 {
                        metrics.completionTokens(1)
                        metrics.workerCall(
                            worker: "w\(index % 2)", seconds: 0.001, failed: false, sentBytes: 1, receivedBytes: 1)
                    }
                }
            }
        }
        let text = lines(metrics)
        #expect(text.contains("shoal_completion_tokens_total 8000"))
        #expect(text.contains(#"shoal_wire_bytes_sent_total{worker="w0"} 4000"#))
        #expect(text.contains(#"shoal_wire_bytes_sent_total{worker="w1"} 4000"#))
    }
}
