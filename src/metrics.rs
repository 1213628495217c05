//! Process metrics in Prometheus text format; plain atomics, no registry.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Cumulative histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BOUNDS: &[f64] = &[
    1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0,
];

/// Every metric the service exports. Shared behind an `Arc`.
pub struct Metrics {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rejected: AtomicU64,
    pub requests_unavailable: AtomicU64,
    pub requests_rate_limited: AtomicU64,
    pub batches_inserted: AtomicU64,
    pub batches_failed: AtomicU64,
    pub queue_events: AtomicU64,
    /// Milliseconds since the last successful poll of other writers' changes (0 without a
    /// cache).
    pub usage_changes_poll_age_ms: AtomicU64,
    /// Usage reads answered from memory, and from ClickHouse (copied from the store's cache).
    pub usage_cache_hits: AtomicU64,
    pub usage_cache_misses: AtomicU64,
    pub usage_cache_loaded: AtomicU64,
    /// Dashboard pages whose refresh request waits for their figures to change.
    pub dashboard_live_waiting: AtomicU64,
    pub batch_events: Histogram,
    pub insert_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            events_accepted: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            requests_unavailable: AtomicU64::new(0),
            requests_rate_limited: AtomicU64::new(0),
            batches_inserted: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            queue_events: AtomicU64::new(0),
            usage_changes_poll_age_ms: AtomicU64::new(0),
            usage_cache_hits: AtomicU64::new(0),
            usage_cache_misses: AtomicU64::new(0),
            usage_cache_loaded: AtomicU64::new(0),
            dashboard_live_waiting: AtomicU64::new(0),
            batch_events: Histogram::new(SIZE_BOUNDS),
            insert_seconds: Histogram::new(LATENCY_BOUNDS),
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "meterhouse_events_accepted_total",
                "Events acknowledged as durable.",
                &self.events_accepted,
            ),
            (
                "meterhouse_events_duplicate_total",
                "Events dropped as repeats of an accepted id.",
                &self.events_duplicate,
            ),
            (
                "meterhouse_events_rejected_total",
                "Events in requests refused as invalid.",
                &self.events_rejected,
            ),
            (
                "meterhouse_requests_unavailable_total",
                "Ingest requests answered 503.",
                &self.requests_unavailable,
            ),
            (
                "meterhouse_requests_rate_limited_total",
                "Requests answered 429.",
                &self.requests_rate_limited,
            ),
            (
                "meterhouse_batches_inserted_total",
                "Batches committed to ClickHouse.",
                &self.batches_inserted,
            ),
            (
                "meterhouse_batches_failed_total",
                "Batches whose insert failed.",
                &self.batches_failed,
            ),
            (
                "meterhouse_usage_cache_hits_total",
                "Usage reads answered from memory.",
                &self.usage_cache_hits,
            ),
            (
                "meterhouse_usage_cache_misses_total",
                "Usage reads that went to ClickHouse.",
                &self.usage_cache_misses,
            ),
            (
                "meterhouse_usage_cache_loaded_total",
                "Current-period usage answers loaded into memory in bulk, before their first read.",
                &self.usage_cache_loaded,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let name = "meterhouse_queue_events";
        let _ = writeln!(
            out,
            "# HELP {name} Events waiting for an insert.\n# TYPE {name} gauge\n{name} {}",
            self.queue_events.load(Relaxed)
        );
        let name = "meterhouse_dashboard_live_waiting";
        let _ = writeln!(
            out,
            "# HELP {name} Dashboard pages waiting for their current-period figures to change.\n\
             # TYPE {name} gauge\n{name} {}",
            self.dashboard_live_waiting.load(Relaxed)
        );
        let name = "meterhouse_usage_changes_poll_age_seconds";
        let age = self.usage_changes_poll_age_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP {name} Time since other writers' changes were last polled; past the staleness \
             bound usage is read from ClickHouse, not memory.\n# TYPE {name} gauge\n{name} {age}"
        );
        self.batch_events.render(
            &mut out,
            "meterhouse_batch_events",
            "Events per inserted batch.",
        );
        self.insert_seconds.render(
            &mut out,
            "meterhouse_insert_duration_seconds",
            "Time to insert one batch.",
        );
        out
    }
}
