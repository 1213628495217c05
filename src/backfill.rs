//! `meterhouse backfill`: samples (and so rollups) for a meter created after its events
//! arrived. Events of the meter's type in the window are read back from `events`, those that
//! already have a sample of this meter are skipped, and the rest go through `events_replay`,
//! whose views write `usage_samples` and the rollups as ingest would have. Running it twice
//! adds nothing the second time.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::catalog::{Catalog, MeterEntry};
use crate::ingest::samples::{self, Props};
use crate::store::rows::EventRow;
use crate::store::{Store, StoreError, queries};

/// What a backfill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Events of the meter's type in the window.
    pub events: u64,
    /// Events that already had a sample of this meter.
    pub already_sampled: u64,
    /// Samples written now.
    pub samples_written: u64,
    /// Events that did not match the meter (filters, missing or unusable value).
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no meter '{0}' in tenant '{1}'")]
    NoMeter(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<clickhouse::error::Error> for BackfillError {
    fn from(err: clickhouse::error::Error) -> Self {
        Self::Store(err.into())
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct StoredEvent {
    id: String,
    customer: String,
    ts_ms: i64,
    properties: String,
}

/// Rows per insert into the replay table.
const CHUNK: usize = 50_000;

/// Writes the missing samples of `meter` for events in `[from, to)`.
pub async fn run(
    store: &Store,
    catalog: &Catalog,
    tenant: &str,
    meter: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Outcome, BackfillError> {
    let snapshot = catalog.tenant(tenant);
    let missing = || BackfillError::NoMeter(meter.to_owned(), tenant.to_owned());
    let event_type = snapshot
        .get::<crate::domain::Meter>(meter)
        .ok_or_else(missing)?
        .event_type
        .clone();
    let entry = snapshot
        .meters_for(&event_type)
        .iter()
        .find(|e| e.meter.slug == meter)
        .cloned()
        .ok_or_else(missing)?;
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let mut outcome = Outcome::default();
    // In cluster mode each shard replays its own customers' events.
    for shard in store.shards() {
        let on_shard = replay(&shard, tenant, &entry, (from_ms, to_ms)).await?;
        outcome.events += on_shard.events;
        outcome.already_sampled += on_shard.already_sampled;
        outcome.samples_written += on_shard.samples_written;
        outcome.skipped += on_shard.skipped;
    }
    tracing::info!(
        tenant,
        meter,
        events = outcome.events,
        samples_written = outcome.samples_written,
        "backfill done"
    );
    Ok(outcome)
}

/// The backfill of one shard (or the one server).
async fn replay(
    store: &Store,
    tenant: &str,
    entry: &MeterEntry,
    (from_ms, to_ms): (i64, i64),
) -> Result<Outcome, BackfillError> {
    let (meter, event_type) = (entry.slug.as_ref(), &entry.meter.event_type);
    let sampled: HashSet<String> = queries::sampled_event_ids(tenant, meter, from_ms, to_ms)
        .query(store.client())
        .fetch_all::<String>()
        .await?
        .into_iter()
        .collect();
    let mut cursor = queries::events_of_type(tenant, event_type, from_ms, to_ms)
        .query(store.client())
        .fetch::<StoredEvent>()?;
    let tenant_name: std::sync::Arc<str> = tenant.into();
    let batch_id: u64 = rand::random();
    let now_ms = Utc::now().timestamp_millis();
    let mut outcome = Outcome::default();
    let mut rows = Vec::with_capacity(CHUNK);
    while let Some(event) = cursor.next().await? {
        outcome.events += 1;
        if sampled.contains(&event.id) {
            outcome.already_sampled += 1;
            continue;
        }
        match replay_row(&tenant_name, entry, event, now_ms, batch_id) {
            Some(row) => rows.push(row),
            None => outcome.skipped += 1,
        }
        if rows.len() == CHUNK {
            outcome.samples_written += write(store, &mut rows).await?;
        }
    }
    outcome.samples_written += write(store, &mut rows).await?;
    Ok(outcome)
}

/// The event as a replay row carrying only this meter's sample (and its priced samples, for
/// dynamic prices); `None` if it yields none.
fn replay_row(
    tenant: &std::sync::Arc<str>,
    entry: &MeterEntry,
    event: StoredEvent,
    now_ms: i64,
    batch_id: u64,
) -> Option<EventRow> {
    let properties = Props::parse(&event.properties).ok()?;
    let mut meter = entry.meter.clone();
    meter.group_by = entry.group_keys.to_vec();
    let sample = samples::extract(&meter, &properties).ok()??;
    let priced = samples::priced(entry, &sample, &properties).ok()?;
    let mut row = EventRow {
        tenant: tenant.clone(),
        id: event.id,
        customer: event.customer,
        event_type: entry.meter.event_type.clone(),
        ts_ms: event.ts_ms,
        ts: (event.ts_ms / 1000) as u32,
        properties: String::new(),
        ingested_ms: 0,
        ingested_at: 0,
        batch_id: 0,
        sample_meter: vec![entry.slug.clone()],
        sample_value: vec![sample.value],
        sample_value_str: vec![sample.value_str],
        sample_group_keys: vec![entry.group_keys.clone()],
        sample_group_values: vec![sample.group_values.clone()],
    };
    for by in priced {
        row.sample_meter.push(by.meter);
        row.sample_value.push(by.amount);
        row.sample_value_str.push(by.unit_amount);
        row.sample_group_keys.push(entry.group_keys.clone());
        row.sample_group_values.push(sample.group_values.clone());
    }
    row.stamp(now_ms, batch_id);
    Some(row)
}

async fn write(store: &Store, rows: &mut Vec<EventRow>) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut insert = store.client().insert::<EventRow>("events_replay").await?;
    for row in rows.iter() {
        insert.write(row).await?;
    }
    insert.end().await?;
    let written = rows.len() as u64;
    rows.clear();
    Ok(written)
}
