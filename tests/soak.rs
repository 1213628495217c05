//! The soak harness, short: a steady ingest rate with concurrent usage reads. No request
//! fails and every acknowledged event is stored (the harness checks the store); every alert
//! threshold the events cross sends its webhook once. The long run
//! (`meterhouse soak`, 10 minutes) is in BENCHMARKS.md.

#[path = "../benches/harness/soak.rs"]
mod soak;

use soak::{SoakArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_has_no_errors_and_loses_nothing() {
    let report = run(SoakArgs {
        duration_s: 12,
        rate: 4_000,
        batch: 200,
        clients: 4,
        readers: 2,
        dedup_max_ids: None,
        clickhouse_url: None,
        alerts: 300,
    })
    .await
    .expect("soak");
    println!("{report:#?}");
    assert_eq!(report.ingest_errors, 0, "{report:?}");
    assert_eq!(report.read_errors, 0, "{report:?}");
    assert!(report.reads > 0, "{report:?}");
    assert_eq!(report.acknowledged, 12 * 4_000);
    assert_eq!(report.stored, report.acknowledged);
    // Every threshold crossed sent its webhook, once.
    assert_eq!(report.alerts_crossed, 300, "{report:?}");
    assert_eq!(report.webhooks_missing, 0, "{report:?}");
    assert_eq!(report.webhook_duplicates, 0, "{report:?}");
}
