//! The ingest load harness, small: every phase runs on a real ClickHouse, the service
//! acknowledges every event it was sent (the harness fails otherwise), and each phase reports
//! its CPU per event. The full-size figures are in BENCHMARKS.md.

#[path = "../benches/harness/loadgen.rs"]
mod loadgen;

use loadgen::{CpuTicks, LoadgenArgs, run};

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
        replicas: 2,
        redis_url: None,
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
    // Two replicas sharing their dedup through Redis took every event (the harness fails
    // otherwise) and used Redis for it.
    let shared = report.shared.expect("the replicas phase");
    assert!(shared.events_per_s > 0.0 && shared.ratio_to_one_process > 0.0);
    assert!(shared.redis_commands_per_event > 0.0, "{shared:?}");
    assert!(
        shared.redis_bytes_in_per_event > 16.0,
        "an id is 16 bytes at least: {shared:?}"
    );
}

#[test]
fn cpu_ticks_are_read_from_procfs_texts() {
    let stat = "cpu  100 5 40 800 20 3 2 0 0 0\ncpu0 50 2 20 400 10 1 1 0 0 0\n";
    let own = "4242 (load gen (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 70 30 0 0 20 0 9";
    let ticks = CpuTicks::parse(stat, own);
    assert_eq!(ticks.total, 970);
    assert_eq!(ticks.busy, 150);
    assert_eq!(ticks.own, 100);
    let empty = CpuTicks::parse("", "");
    assert_eq!((empty.total, empty.busy, empty.own), (0, 0, 0));
}

#[test]
fn cpu_per_event_splits_the_box_between_the_harness_and_the_rest() {
    let before = CpuTicks {
        busy: 100,
        total: 400,
        own: 20,
    };
    let after = CpuTicks {
        busy: 300,
        total: 600,
        own: 70,
    };
    // 200 ticks over 1 s on 2 cores: 100 ticks a second. 200 busy ticks are 2 s of CPU.
    let cpu = before.per_event(after, 1.0, 2, 1_000);
    assert_eq!(cpu.total_us, 2_000.0);
    assert_eq!(cpu.harness_us, 500.0);
    assert_eq!(cpu.clickhouse_us, 1_500.0);
    assert_eq!(before.per_event(before, 1.0, 2, 1_000).total_us, 0.0);
    assert_eq!(before.per_event(after, 1.0, 2, 0).total_us, 0.0);
}
