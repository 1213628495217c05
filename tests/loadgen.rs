//! The ingest load harness, small: every phase runs on a real ClickHouse, the service
//! acknowledges every event it was sent (the harness fails otherwise), and each phase reports
//! its CPU per event. The full-size figures are in BENCHMARKS.md.

use meterhouse::loadgen::{LoadgenArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_load_run_reports_every_phase() {
    let report = run(LoadgenArgs {
        events: 4_000,
        batch: 200,
        clients: 4,
        direct_batch: 1_000,
        rounds: 1,
        batch_max_events: 1_000,
        clickhouse_url: None,
    })
    .await
    .expect("loadgen");
    println!("{report:#?}");
    assert_eq!(report.events, 4_000);
    for rate in [
        report.direct_events_per_s,
        report.direct_required_events_per_s,
        report.service_events_per_s,
    ] {
        assert!(rate.is_finite() && rate > 0.0, "{report:?}");
    }
    assert!(report.ack_p50_ms > 0.0 && report.ack_p50_ms <= report.ack_p99_ms);
    // procfs is there on every box this runs on: the service phase cost this process CPU.
    assert!(report.service_cpu.harness_us > 0.0, "{report:?}");
    assert!(report.service_cpu.total_us >= report.service_cpu.harness_us);
    assert!(report.service_cpu_bound_events_per_s.is_finite());
}
