//! The grain of `weighted_sum` meters (sql/0019): per customer, series and UTC hour, and again
//! per UTC day, what the span's samples contribute (`domain::weighted::span_state`), so that a
//! read takes whole days and hours from here and only the rest from the samples.
//!
//! Coverage: each weighted meter has a record (`weighted_grain`) of the UTC days whose rows are
//! written, `[since, until)`, for the series keys (the meter's `group_by`) they were written
//! with. The maintenance ([`Store::compact_weighted`]) writes only days the day grain has sealed
//! (`store::days`): forwards as days are sealed, then backwards through the days sealed before
//! the meter had a record. A meter whose `group_by` changes gets a new record and starts again.
//!
//! Late events: an event of a sealed day re-opens its customer's day (`rollup_days_reopened`),
//! whose weighted rows readers then take from the samples, like its day-grain rows. When the
//! day grain writes a re-opened day again (`Store::compact_days`), the rows of every weighted
//! meter covering that day are written again too, at a greater version, before its marks go.
//! Readers keep each span's row of the greatest version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use clickhouse::Row;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::queries::{self, CustomerDay};
use super::sql::Sql;
use super::usage_sql::parse_value;
use super::weighted_sql::values_of;
use super::{Store, StoreError};
use crate::domain::weighted::{SpanState, span_state};

const DAY_S: u32 = 86_400;
const HOUR_MS: i64 = 3_600_000;

/// A weighted meter the maintenance keeps the grain of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedMeter {
    pub tenant: String,
    pub meter: String,
    /// The meter's `group_by`: its samples form one series per combination of their values.
    pub series_keys: Vec<String>,
}

/// A sample's whole group: its group keys and their values (a read projects them on its own
/// `group_by`).
pub type FullGroup = (Vec<String>, Vec<String>);

/// One customer's series' state over one UTC hour or day.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSpan {
    pub customer: String,
    pub series: Vec<String>,
    pub state: SpanState<FullGroup>,
}

#[derive(Row, Serialize, Deserialize)]
struct SpanRow {
    tenant: String,
    meter: String,
    customer: String,
    series_keys: Vec<String>,
    series: Vec<String>,
    bucket: u32,
    span_s: u32,
    part_keys: Vec<Vec<String>>,
    part_values: Vec<Vec<String>>,
    part_value_ms: Vec<String>,
    part_samples: Vec<u64>,
    first_ms: i64,
    last_ms: i64,
    last_value: String,
    last_keys: Vec<String>,
    last_values: Vec<String>,
    version: u64,
}

#[derive(Row, Deserialize)]
struct DaySample {
    customer: String,
    series: Vec<String>,
    group_keys: Vec<String>,
    group_values: Vec<String>,
    ts_ms: i64,
    value: String,
}

/// A meter's record as read: the newest version's.
#[derive(Debug, Clone, Row, Deserialize)]
pub(super) struct Coverage {
    tenant: String,
    meter: String,
    series_keys: Vec<String>,
    since: u32,
    until: u32,
    newest: u64,
}

#[derive(Debug, Row, Serialize)]
struct CoverageRow {
    tenant: String,
    meter: String,
    series_keys: Vec<String>,
    since: u32,
    until: u32,
    version: u64,
}

/// Every meter's record, or one tenant's meter's.
pub fn coverage_statement(meter: Option<(&str, &str)>) -> Sql {
    let mut sql = Sql::new(
        "SELECT tenant, meter, argMax(series_keys, version) AS series_keys, \
         toUInt32(argMax(since, version)) AS since, toUInt32(argMax(until, version)) AS until, \
         max(version) AS newest FROM weighted_grain",
    );
    if let Some((tenant, meter)) = meter {
        sql.push(" WHERE tenant = ")
            .arg(tenant)
            .push(" AND meter = ")
            .arg(meter);
    }
    sql.push(" GROUP BY tenant, meter");
    sql
}

/// `series_keys` equal to `keys` (an empty array literal has no type in ClickHouse 18.16).
fn keys_are(keys: &[String]) -> Sql {
    if keys.is_empty() {
        return Sql::new("empty(series_keys)");
    }
    let mut sql = Sql::new("series_keys = ");
    sql.arg(keys);
    sql
}

/// The samples of `meter` in `[from_s, from_s + span_s)`, of `customers` (or all), in the
/// order of a series' values.
pub fn day_samples_statement(
    meter: &WeightedMeter,
    from_s: u32,
    span_s: u32,
    customers: &[&str],
) -> Sql {
    let mut sql = Sql::new("SELECT customer, ");
    sql.append(values_of(&meter.series_keys))
        .push(
            " AS series, group_keys, group_values, ts_ms, toString(value) AS value \
             FROM usage_samples PREWHERE tenant = ",
        )
        .arg(&meter.tenant)
        .push(" AND meter = ")
        .arg(&meter.meter)
        .push(" AND ")
        .append(queries::times("ts", from_s, from_s + span_s))
        .push(" AND ts_ms >= ")
        .arg(i64::from(from_s) * 1000)
        .push(" AND ts_ms < ")
        .arg(i64::from(from_s + span_s) * 1000);
    if !customers.is_empty() {
        sql.push(" AND customer IN (")
            .list(customers.iter().copied())
            .push(")");
    }
    sql.push(" ORDER BY customer, series, ts_ms, event_id");
    sql
}

/// The greatest version of the rows of `meter` of `customers` (or all) in the UTC day `day_s`.
fn newest_version(meter: &WeightedMeter, day_s: u32, customers: &[&str]) -> Sql {
    let mut sql = Sql::new("SELECT max(version) FROM usage_weighted_hour PREWHERE tenant = ");
    sql.arg(&meter.tenant);
    if !customers.is_empty() {
        sql.push(" AND customer IN (")
            .list(customers.iter().copied())
            .push(")");
    }
    sql.push(" AND meter = ")
        .arg(&meter.meter)
        .push(" AND ")
        .append(queries::times("bucket", day_s, day_s + DAY_S));
    sql
}

/// Time ranges, epoch ms, `[from, to)`.
pub type Ranges<'a> = &'a [(i64, i64)];

/// The spans of one customer's (or every customer's) series of a weighted meter: whole UTC
/// days in `days`, whole hours in `hours` (epoch ms ranges), ordered by customer, series and
/// time, the newest version first.
pub fn spans_statement(
    (tenant, customer, meter): (&str, Option<&str>, &str),
    series_keys: &[String],
    (days, hours): (Ranges<'_>, Ranges<'_>),
) -> Sql {
    let mut sql = Sql::new(
        "SELECT tenant, meter, customer, series_keys, series, toUInt32(bucket) AS bucket, \
         span_s, part_keys, part_values, part_value_ms, part_samples, first_ms, last_ms, \
         last_value, last_keys, last_values, version FROM usage_weighted_hour PREWHERE tenant = ",
    );
    sql.arg(tenant);
    if let Some(customer) = customer {
        sql.push(" AND customer = ").arg(customer);
    }
    let spans = [(DAY_S, days), (3_600, hours)]
        .into_iter()
        .filter(|(_, ranges)| !ranges.is_empty())
        .map(|(span_s, ranges)| {
            let mut spans = Sql::new("span_s = ");
            let seconds = |ms: i64| u32::try_from(ms.div_euclid(1000)).unwrap_or(u32::MAX);
            spans.arg(span_s).push(" AND (").join(
                ranges
                    .iter()
                    .map(|&(from, to)| queries::times("bucket", seconds(from), seconds(to))),
                " OR ",
            );
            spans.push(")");
            spans
        });
    sql.push(" AND meter = ")
        .arg(meter)
        .push(" AND ")
        .append(keys_are(series_keys))
        .push(" AND (")
        .join(spans, " OR ")
        .push(") ORDER BY customer, series, bucket, span_s, version DESC");
    sql
}

impl SpanRow {
    fn into_span(self) -> Result<WeightedSpan, StoreError> {
        let start_ms = i64::from(self.bucket) * 1000;
        let parts = self
            .part_keys
            .into_iter()
            .zip(self.part_values)
            .zip(self.part_value_ms.iter().zip(self.part_samples))
            .map(|(group, (value_ms, samples))| Ok((group, parse_value(value_ms)?, samples)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(WeightedSpan {
            customer: self.customer,
            series: self.series,
            state: SpanState {
                start_ms,
                end_ms: start_ms + i64::from(self.span_s) * 1000,
                parts,
                first_ms: self.first_ms,
                last_ms: self.last_ms,
                last_value: parse_value(&self.last_value)?,
                last_group: (self.last_keys, self.last_values),
            },
        })
    }
}

/// Ranges (epoch ms, whole UTC hours) of `(from_ms, to_ms)` inside the days `[since_s,
/// until_s)` but the `reopened` ones (epoch ms, sorted).
pub fn covered_hours(
    (from_ms, to_ms): (i64, i64),
    (since_s, until_s): (u32, u32),
    reopened: &[i64],
) -> Vec<(i64, i64)> {
    let start =
        (from_ms.div_euclid(HOUR_MS) + i64::from(from_ms.rem_euclid(HOUR_MS) > 0)) * HOUR_MS;
    let start = start.max(i64::from(since_s) * 1000);
    let end = (to_ms.div_euclid(HOUR_MS) * HOUR_MS).min(i64::from(until_s) * 1000);
    let day_ms = i64::from(DAY_S) * 1000;
    let mut ranges = Vec::new();
    let mut at = start;
    for &day in reopened.iter().filter(|&&d| d + day_ms > start && d < end) {
        if day > at {
            ranges.push((at, day));
        }
        at = at.max(day + day_ms);
    }
    if at < end {
        ranges.push((at, end));
    }
    ranges
}

/// The records this process last read, per tenant and meter (`None`: it had none then).
#[derive(Default)]
pub(super) struct KnownRecords(Mutex<HashMap<(String, String), Option<Coverage>>>);

impl KnownRecords {
    fn get(&self, tenant: &str, meter: &str) -> Option<Option<Coverage>> {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&(tenant.to_owned(), meter.to_owned())).cloned()
    }

    /// Keeps `record`: unless a newer one is kept already (another read's, read later), or
    /// whatever is kept when `confirmed` (the record a confirmation just read is the newest).
    fn set(&self, (tenant, meter): (&str, &str), record: Option<Coverage>, confirmed: bool) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newest = |r: &Option<Coverage>| r.as_ref().map_or(0, |r| r.newest);
        let key = (tenant.to_owned(), meter.to_owned());
        if confirmed
            || known
                .get(&key)
                .is_none_or(|kept| newest(kept) <= newest(&record))
        {
            known.insert(key, record);
        }
    }
}

/// The whole hours a read takes from the grain, and the version of the meter's record they
/// were chosen by: the read confirms it ([`Store::weighted_grain_holds`]) beside its own
/// statements, or starts again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrainHours {
    pub ranges: Vec<(i64, i64)>,
    confirm: Option<u64>,
}

impl Store {
    /// What a read of `[from_ms, to_ms)` of a weighted meter may take from the grain: whole
    /// hours (epoch ms ranges) of days covered for `series_keys`, sealed and not re-opened for
    /// the customer (any customer's, for a read of all). The meter's record is the one last
    /// read when this process has one, else read now; either way the read confirms it
    /// ([`Store::weighted_grain_holds`]).
    pub async fn weighted_grain_hours(
        &self,
        (tenant, customer, meter): (&str, Option<&str>, &str),
        series_keys: &[String],
        (from_ms, to_ms): (i64, i64),
    ) -> Result<GrainHours, StoreError> {
        let (record, parts) = match self.days.weighted.get(tenant, meter) {
            Some(record) => {
                let parts = self.day_parts(tenant, customer, (from_ms, to_ms)).await?;
                (record, parts)
            }
            None => {
                // The record and the day grain's state at once: one round trip, not two.
                let statement = coverage_statement(Some((tenant, meter)));
                let (records, parts) = tokio::try_join!(
                    self.read_rows::<Coverage>(&statement),
                    self.day_parts(tenant, customer, (from_ms, to_ms)),
                )?;
                let record = records.into_iter().next();
                self.days
                    .weighted
                    .set((tenant, meter), record.clone(), false);
                (record, parts)
            }
        };
        let confirm = Some(record.as_ref().map_or(0, |r| r.newest));
        let Some(record) = record.filter(|r| r.series_keys == series_keys) else {
            let ranges = Vec::new();
            return Ok(GrainHours { ranges, confirm });
        };
        let until_s = record
            .until
            .min(u32::try_from(parts.sealed_until_ms / 1000).unwrap_or(u32::MAX));
        let ranges = covered_hours((from_ms, to_ms), (record.since, until_s), &parts.reopened);
        Ok(GrainHours { ranges, confirm })
    }

    /// Whether the meter's record `hours` were chosen by is still its newest; if not, the
    /// newest (just read) is kept in its place, and the read starts again with it.
    pub async fn weighted_grain_holds(
        &self,
        (tenant, meter): (&str, &str),
        hours: &GrainHours,
    ) -> Result<bool, StoreError> {
        let Some(version) = hours.confirm else {
            return Ok(true);
        };
        let statement = coverage_statement(Some((tenant, meter)));
        let record = self
            .read_rows::<Coverage>(&statement)
            .await?
            .into_iter()
            .next();
        if record.as_ref().map_or(0, |r| r.newest) == version {
            return Ok(true);
        }
        self.days.weighted.set((tenant, meter), record, true);
        Ok(false)
    }

    /// Runs [`spans_statement`] within the request's read budget: one row per customer's
    /// series and span, the newest version.
    pub async fn weighted_spans(&self, statement: &Sql) -> Result<Vec<WeightedSpan>, StoreError> {
        let rows: Vec<SpanRow> = self.read_rows(statement).await?;
        let mut spans: Vec<WeightedSpan> = Vec::with_capacity(rows.len());
        for row in rows {
            // Rows of a span come newest first: the first is kept.
            let start_ms = i64::from(row.bucket) * 1000;
            let end_ms = start_ms + i64::from(row.span_s) * 1000;
            let seen = spans.last().is_some_and(|h| {
                (h.state.start_ms, h.state.end_ms) == (start_ms, end_ms)
                    && h.customer == row.customer
                    && h.series == row.series
            });
            if !seen {
                spans.push(row.into_span()?);
            }
        }
        Ok(spans)
    }

    /// One round of the weighted grain's maintenance: a record for each meter of `meters`
    /// without one for its series keys, then up to `max_days` days written: forwards to the
    /// day grain's horizon for every meter first, then backwards to the day grain's start, a
    /// day of each meter in turn. A day that cannot be written stops that meter's walk (its
    /// days past it are read from the samples) and is logged; the others go on. Returns the
    /// days written.
    pub async fn compact_weighted(
        &self,
        meters: &[WeightedMeter],
        max_days: u32,
    ) -> Result<u32, StoreError> {
        let sealed: u32 = self
            .client()
            .query(queries::DAYS_SEALED_UNTIL)
            .fetch_one()
            .await?;
        if sealed == 0 || meters.is_empty() {
            return Ok(0);
        }
        let client = self.maintenance_client().await?;
        // Days before the day grain's start are read from the samples (they hold nothing but
        // events that came later, as backfills).
        let floor: u32 = client.query(queries::DAYS_SEALED_FROM).fetch_one().await?;
        let t0 = self.server_now().await?;
        let version = u64::from(t0) * 1000;
        let records: Vec<Coverage> = coverage_statement(None).query(&client).fetch_all().await?;
        let mut walks = Vec::with_capacity(meters.len());
        for meter in meters {
            let same_meter = records
                .iter()
                .find(|r| r.tenant == meter.tenant && r.meter == meter.meter);
            let mut walk = Walk {
                meter,
                since: sealed,
                until: sealed,
                version: (u64::from(t0) * 1_000_000).max(same_meter.map_or(0, |r| r.newest + 1)),
                stuck: false,
            };
            match same_meter.filter(|r| r.series_keys == meter.series_keys) {
                Some(r) => (walk.since, walk.until) = (r.since, r.until),
                None => walk.record(&client).await?,
            }
            walks.push(walk);
        }
        let mut written = 0;
        for walk in &mut walks {
            while !walk.stuck && walk.until < sealed && written < max_days {
                if self.walk_to(&client, walk, walk.until, version).await {
                    walk.until += DAY_S;
                    written += 1;
                    walk.record(&client).await?;
                }
            }
        }
        let mut moved = true;
        while moved && written < max_days {
            moved = false;
            for walk in walks.iter_mut().filter(|w| !w.stuck && w.since > floor) {
                if written == max_days {
                    break;
                }
                if self
                    .walk_to(&client, walk, walk.since - DAY_S, version)
                    .await
                {
                    walk.since -= DAY_S;
                    written += 1;
                    moved = true;
                    walk.record(&client).await?;
                }
            }
        }
        if written > 0 {
            tracing::info!(days = written, "weighted grain maintained");
        }
        Ok(written)
    }

    /// Writes the day `day_s` of a walk's meter; `false` (the walk stuck) when it cannot be.
    async fn walk_to(
        &self,
        client: &clickhouse::Client,
        walk: &mut Walk<'_>,
        day_s: u32,
        version: u64,
    ) -> bool {
        let written = self
            .write_day(client, walk.meter, day_s, &[], version)
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, tenant = %walk.meter.tenant, meter = %walk.meter.meter,
                day_s, "a weighted meter's day cannot be written; its older days are read from samples");
            walk.stuck = true;
            return false;
        }
        true
    }

    /// Writes again, at `version` or later, the weighted rows of the customers' days `days`
    /// for every meter whose record covers them (the day grain is writing those days again).
    /// A meter whose day cannot be written no longer covers it, nor the days before it.
    pub(super) async fn reseal_weighted(
        &self,
        client: &clickhouse::Client,
        days: &[CustomerDay],
        version: u64,
    ) -> Result<(), StoreError> {
        let records: Vec<Coverage> = coverage_statement(None).query(client).fetch_all().await?;
        if records.is_empty() {
            return Ok(());
        }
        let mut by_day: BTreeMap<(&str, u32), Vec<&str>> = BTreeMap::new();
        for (tenant, customer, day) in days {
            by_day.entry((tenant, *day)).or_default().push(customer);
        }
        for ((tenant, day), customers) in by_day {
            for r in records
                .iter()
                .filter(|r| r.tenant == tenant && r.since <= day && day < r.until)
            {
                let meter = WeightedMeter {
                    tenant: r.tenant.clone(),
                    meter: r.meter.clone(),
                    series_keys: r.series_keys.clone(),
                };
                let Err(e) = self
                    .write_day(client, &meter, day, &customers, version)
                    .await
                else {
                    continue;
                };
                tracing::warn!(error = %e, tenant, meter = %r.meter, day_s = day,
                    "a weighted meter's re-opened day cannot be written; it and the days before it are read from samples");
                let mut walk = Walk {
                    meter: &meter,
                    since: day + DAY_S,
                    until: r.until,
                    version: r.newest + 1,
                    stuck: true,
                };
                walk.record(client).await?;
            }
        }
        Ok(())
    }

    /// Writes the rows of the UTC day `day_s` of `meter` (of `customers`, or all) from its
    /// samples, at `version` or, should rows of that day have one as great, past theirs.
    async fn write_day(
        &self,
        client: &clickhouse::Client,
        meter: &WeightedMeter,
        day_s: u32,
        customers: &[&str],
        version: u64,
    ) -> Result<(), StoreError> {
        let newest: u64 = newest_version(meter, day_s, customers)
            .query(client)
            .fetch_one()
            .await?;
        let version = version.max(newest + 1);
        // Read through a client of its own: the maintenance client's statements share one
        // query id, and the insert below starts while this read still streams.
        let mut cursor = day_samples_statement(meter, day_s, DAY_S, customers)
            .query(self.client())
            .fetch::<DaySample>()?;
        let mut insert = client.insert::<SpanRow>("usage_weighted_hour").await?;
        // The series being gathered (customer, values) and its samples of the day.
        let mut series: Option<(String, Vec<String>)> = None;
        let mut samples: Vec<(i64, Decimal, FullGroup)> = Vec::new();
        let mut rows = 0;
        loop {
            let next = cursor.next().await?;
            let ended = |(customer, values): &mut (String, Vec<String>)| {
                next.as_ref()
                    .is_none_or(|n| *customer != n.customer || *values != n.series)
            };
            if let Some(done) = series.take_if(ended) {
                rows += write_series(&mut insert, (meter, done), &samples, day_s, version).await?;
                samples.clear();
            }
            let Some(sample) = next else { break };
            let group = (sample.group_keys, sample.group_values);
            samples.push((sample.ts_ms, parse_value(&sample.value)?, group));
            series.get_or_insert((sample.customer, sample.series));
        }
        insert.end().await?;
        tracing::debug!(meter = %meter.meter, day_s, rows, "weighted rows written");
        Ok(())
    }
}

/// Writes the rows of one customer's series' day from its `samples` (in time order): one per
/// hour with samples, and one for the day; returns how many.
async fn write_series(
    insert: &mut clickhouse::insert::Insert<SpanRow>,
    (meter, (customer, series)): (&WeightedMeter, (String, Vec<String>)),
    samples: &[(i64, Decimal, FullGroup)],
    day_s: u32,
    version: u64,
) -> Result<u64, StoreError> {
    let day = i64::from(day_s) * 1000;
    let hours = samples.chunk_by(|a, b| a.0.div_euclid(HOUR_MS) == b.0.div_euclid(HOUR_MS));
    let spans = hours
        .map(|hour| {
            let start = hour[0].0.div_euclid(HOUR_MS) * HOUR_MS;
            (hour, (start, start + HOUR_MS))
        })
        .chain([(samples, (day, day + i64::from(DAY_S) * 1000))]);
    let mut rows = 0;
    for (inside, span) in spans {
        let state = span_state(inside, span)
            .map_err(|e| StoreError::Rejected(format!("weighted span: {e}")))?;
        if let Some(state) = state {
            let row = span_row(meter, (customer.clone(), series.clone()), state, version);
            insert.write(&row).await?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// A meter's coverage as one round moves it, and the version its next record takes.
struct Walk<'a> {
    meter: &'a WeightedMeter,
    since: u32,
    until: u32,
    version: u64,
    stuck: bool,
}

impl Walk<'_> {
    /// Records the walk's coverage (newer than the meter's records before).
    async fn record(&mut self, client: &clickhouse::Client) -> Result<(), StoreError> {
        let row = CoverageRow {
            tenant: self.meter.tenant.clone(),
            meter: self.meter.meter.clone(),
            series_keys: self.meter.series_keys.clone(),
            since: self.since,
            until: self.until,
            version: self.version,
        };
        self.version += 1;
        write_coverage(client, row).await
    }
}

async fn write_coverage(
    client: &clickhouse::Client,
    record: CoverageRow,
) -> Result<(), StoreError> {
    let mut insert = client.insert::<CoverageRow>("weighted_grain").await?;
    insert.write(&record).await?;
    insert.end().await?;
    Ok(())
}

/// The row of one customer's series' span (an hour or a day).
fn span_row(
    meter: &WeightedMeter,
    (customer, series): (String, Vec<String>),
    state: SpanState<FullGroup>,
    version: u64,
) -> SpanRow {
    let mut row = SpanRow {
        tenant: meter.tenant.clone(),
        meter: meter.meter.clone(),
        customer,
        series_keys: meter.series_keys.clone(),
        series,
        bucket: u32::try_from(state.start_ms / 1000).unwrap_or(0),
        span_s: u32::try_from((state.end_ms - state.start_ms) / 1000).unwrap_or(0),
        part_keys: Vec::with_capacity(state.parts.len()),
        part_values: Vec::with_capacity(state.parts.len()),
        part_value_ms: Vec::with_capacity(state.parts.len()),
        part_samples: Vec::with_capacity(state.parts.len()),
        first_ms: state.first_ms,
        last_ms: state.last_ms,
        last_value: state.last_value.to_string(),
        last_keys: state.last_group.0,
        last_values: state.last_group.1,
        version,
    };
    for ((keys, values), value_ms, samples) in state.parts {
        row.part_keys.push(keys);
        row.part_values.push(values);
        row.part_value_ms.push(value_ms.to_string());
        row.part_samples.push(samples);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn covered_hours_are_whole_hours_of_covered_days_but_the_reopened() {
        // Days 0 to 3 covered, day 1 re-opened; a window from 00:30 of day 0 to 12:15 of day 3.
        let window = (HOUR_MS / 2, 3 * DAY_MS + 12 * HOUR_MS + HOUR_MS / 4);
        assert_eq!(
            covered_hours(window, (0, 4 * DAY_S), &[DAY_MS]),
            vec![(HOUR_MS, DAY_MS), (2 * DAY_MS, 3 * DAY_MS + 12 * HOUR_MS)]
        );
        // Coverage ends with day 2: the window's last day is read from samples.
        assert_eq!(
            covered_hours(window, (0, 3 * DAY_S), &[]),
            vec![(HOUR_MS, 3 * DAY_MS)]
        );
        assert!(covered_hours((HOUR_MS / 2, HOUR_MS), (0, DAY_S), &[]).is_empty());
        assert!(covered_hours(window, (0, DAY_S), &[0]).is_empty());
    }

    #[test]
    fn the_hours_of_a_meter_without_series_keys_are_read_by_an_empty_array() {
        let days = [(0, 86_400_000)];
        let hours = [(86_400_000, 90_000_000)];
        let sql = spans_statement(("t", Some("c"), "m"), &[], (&days, &hours)).render();
        assert!(
            sql.contains(
                "AND empty(series_keys) AND (span_s = 86400 AND (bucket >= toDateTime(0) AND \
                 bucket < toDateTime(86400)) OR span_s = 3600 AND (bucket >= toDateTime(86400) \
                 AND bucket < toDateTime(90000)))"
            ),
            "{sql}"
        );
    }
}
