//! Decoding and validating ingest bodies (no ClickHouse needed): events/s on one core.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meterhouse::catalog::Catalog;
use meterhouse::ingest::parse::{Context, decode};
use serde_json::json;

fn body(n: usize, now_ms: i64) -> String {
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": format!("evt-{i}"), "customer": format!("cust_{}", i % 1000), "type": "llm_call",
                   "timestamp": now_ms - i as i64,
                   "properties": {"tokens": 100 + i, "model": "gpt-x", "region": "eu", "usage": {"input_tokens": 40}}})
        })
        .collect();
    serde_json::to_string(&events).unwrap()
}

fn decode_bodies(c: &mut Criterion) {
    let catalog = Catalog::from_json(
        r#"{"tenants": [{"id": "t", "meters": [
            {"slug": "calls", "name": "Calls", "event_type": "llm_call", "aggregation": "count"},
            {"slug": "tokens", "name": "Tokens", "event_type": "llm_call", "aggregation": "sum", "value_property": "tokens", "group_by": ["model"]},
            {"slug": "eu", "name": "EU", "event_type": "llm_call", "aggregation": "sum", "value_property": "usage.input_tokens", "filters": {"region": ["eu"]}}]}]}"#,
    )
    .unwrap();
    let tenant = catalog.tenant("t");
    let name: std::sync::Arc<str> = "t".into();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let body = body(1000, now_ms);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 events, 3 meters", |b| {
        b.iter(|| {
            let ctx = Context {
                tenant: &name,
                catalog: &tenant,
                now_ms,
            };
            decode(body.as_bytes(), false, &ctx).unwrap()
        })
    });
    let no_meters = Default::default();
    group.bench_function("1000 events, no meters", |b| {
        b.iter(|| {
            let ctx = Context {
                tenant: &name,
                catalog: &no_meters,
                now_ms,
            };
            decode(body.as_bytes(), false, &ctx).unwrap()
        })
    });
    // The duplicate-key check alone, over the same events' properties: what share of a
    // decode it is (decode runs it once per event).
    let properties: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&body)
        .unwrap()
        .iter()
        .map(|e| e["properties"].to_string())
        .collect();
    group.bench_function("1000 events, duplicate-key check only", |b| {
        b.iter(|| {
            properties
                .iter()
                .filter(|p| meterhouse::ingest::samples::first_duplicate_key(p).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, decode_bodies);
criterion_main!(benches);
