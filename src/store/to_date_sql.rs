//! Period-to-date states (sql/0022): one customer's usage of a set of meters from the start of
//! a window (a billing period's, to the millisecond) to the day grain's horizon, one row per
//! meter and group. A current period then reads one state per meter and group for everything
//! before today, instead of a state per day, per hour of its first day and its first partial
//! hour's samples. What decides when they are written and read is the read model's
//! (`readmodel::to_date`); this module states and runs them.
//!
//! - **Complete or absent.** The states of a set of meters are written by one insert with a
//!   row of meter [`COMPLETE`], squashed into one block whatever its size
//!   ([`Store::build_to_date`]): one part, committed at once, and fetched by a replica at once.
//!   A read takes them with that row, and a read that gets no such row reads the window
//!   otherwise.
//! - **Never stale.** A day of the window re-opened by a late event or a repaired hour is
//!   written again into the day grain with a greater version (the round's start, after the
//!   event). States are read only if written at or after every day grain row of the
//!   customer's days they cover (`built_ms`, the server's clock when the insert began, in whole
//!   seconds, against the grain's `version`), so states older than a day written again are not
//!   read; while a day is re-opened, the read model does not read them at all. A state can be
//!   stale only if written before the late event that re-opened its day, and a day is written
//!   again only from marks five minutes old (`store::repair::RACE_WINDOW_S`), so the clocks
//!   of the nodes that write states and days may differ by up to that.
//! - **Late hours.** States may reach past the day grain's horizon, to an hour that ended over
//!   an hour ago (the read model decides). An event of such an hour arriving later leaves a mark
//!   (`rollup_hours_late`, sql/0023, made by a view on the events), and so does the settling
//!   of an in-doubt batch (whose hours are repaired); states are read only if written five
//!   minutes or more after every mark of the customer's hours they cover, so that a marked
//!   insert under way while they were written cannot have been missed by them. They are
//!   written only once their last hour ended an hour and five minutes ago by ClickHouse's
//!   clock (an unmarked insert is then done), and not from a replica behind its shard.
//! - **Gone by partition.** States are partitioned by their horizon's hour, late hours' marks by
//!   their day: maintenance keeps the states of the day grain's horizon, the one before it and
//!   the last hours ([`keeps_to_date`]), and the marks of today and the three days before
//!   ([`Store::drop_partitions`]).

use clickhouse::Client;

use super::combined_sql::{Meters, combined, part_selects, states_of};
use super::days::DAY_S;
use super::repair::RACE_WINDOW_S;
use super::sql::Sql;
use super::usage_sql::Part;
use super::{Store, StoreError};

/// The meter of the row that says a set of states is complete (no meter's slug is empty).
pub const COMPLETE: &str = "";

const DAY_MS: i64 = DAY_S as i64 * 1_000;

/// One customer's usage of a set of meters over `[start_ms, until_ms)`: from a window's start
/// to the day grain's horizon (the start of a UTC day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToDate<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub start_ms: i64,
    pub until_ms: i64,
}

/// What names a set of meters in the table: each slug with its aggregation, in order.
pub fn meters_key(meters: &Meters<'_>) -> String {
    let named: Vec<String> = meters.iter().map(|(s, a)| format!("{s}:{a:?}")).collect();
    named.join(",")
}

/// The table's state columns: each with a state that holds nothing (for a column the set of
/// meters does not use) and an aggregate over no row (the complete row's).
const COLUMNS: [(&str, &str, &str); 5] = [
    (
        "sum_value",
        "arrayReduce('sumState', CAST([] AS Array(Decimal(38, 12))))",
        "sumState(toDecimal128(0, 12))",
    ),
    (
        "min_value",
        "arrayReduce('minState', CAST([] AS Array(Decimal(38, 12))))",
        "minState(toDecimal128(0, 12))",
    ),
    (
        "max_value",
        "arrayReduce('maxState', CAST([] AS Array(Decimal(38, 12))))",
        "maxState(toDecimal128(0, 12))",
    ),
    (
        "distinct_values",
        "arrayReduce('uniqExactState', emptyArrayString())",
        "uniqExactState('')",
    ),
    (
        "latest_value",
        "arrayReduce('argMaxState', CAST([] AS Array(Decimal(38, 12))), CAST([] AS Array(Int64)))",
        "argMaxState(toDecimal128(0, 12), toInt64(0))",
    ),
];

/// Writes the states of `meters` over `to_date`, read from `parts` (which must tile it), with
/// the row that says they are complete. Every row carries when the insert began.
pub fn build_statement(to_date: &ToDate<'_>, parts: &[Part], meters: &Meters<'_>) -> Sql {
    let used = states_of(meters);
    let mut selects = part_selects(to_date.tenant, to_date.customer, parts, meters, None);
    let mut complete = Sql::new("SELECT ");
    complete
        .arg(to_date.customer)
        .push(" AS customer, ")
        .arg(COMPLETE)
        .push(" AS meter, emptyArrayString() AS group_keys, emptyArrayString() AS group_values, countState() AS samples");
    for (column, _, none) in COLUMNS {
        if used.iter().any(|s| s.column == column) {
            complete.push(&format!(", {none} AS {column}"));
        }
    }
    complete.push(" FROM system.one WHERE 0");
    selects.push(complete);
    let mut sql = Sql::new(
        "INSERT INTO usage_rollup_to_date (tenant, customer, meters, start_ms, until, meter, \
         group_keys, group_values, samples, sum_value, min_value, max_value, distinct_values, \
         latest_value, built_ms) SELECT ",
    );
    sql.arg(to_date.tenant)
        .push(", customer, ")
        .arg(meters_key(meters).as_str())
        .push(", ")
        .arg(to_date.start_ms)
        .push(", toDateTime(")
        .arg(to_date.until_ms / 1000)
        .push("), meter, group_keys, group_values, countMergeState(samples)");
    for (column, empty, _) in COLUMNS {
        match used.iter().find(|s| s.column == column) {
            Some(states) => sql.push(&format!(", {}State({column})", states.merge)),
            None => sql.push(&format!(", {empty}")),
        };
    }
    sql.push(", toUInt64(now()) * 1000 FROM (")
        .join(selects, " UNION ALL ")
        .push(") GROUP BY customer, meter, group_keys, group_values");
    sql
}

/// The inner SELECT of a combined read that takes `to_date`'s states of `meters`, the complete
/// row among them; nothing if they were written before some day grain row of the customer's
/// days they cover (of any meter: a day written again holds at least the row of the meter whose
/// late event re-opened it).
fn to_date_select(to_date: &ToDate<'_>, meters: &Meters<'_>) -> Sql {
    let columns: String = states_of(meters)
        .iter()
        .map(|s| format!(", {}", s.column))
        .collect();
    let first_day = to_date.start_ms.div_euclid(DAY_MS) * DAY_MS;
    let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, samples");
    sql.push(&columns)
        .push(" FROM usage_rollup_to_date FINAL PREWHERE tenant = ")
        .arg(to_date.tenant)
        .push(" AND customer = ")
        .arg(to_date.customer)
        .push(" AND meters = ")
        .arg(meters_key(meters).as_str())
        .push(" AND start_ms = ")
        .arg(to_date.start_ms)
        .push(" AND until = toDateTime(")
        .arg(to_date.until_ms / 1000)
        .push(") WHERE built_ms >= (SELECT max(version) FROM usage_rollup_day WHERE tenant = ")
        .arg(to_date.tenant)
        .push(" AND customer = ")
        .arg(to_date.customer)
        .push(" AND bucket >= toDateTime(")
        .arg(first_day / 1000)
        .push(") AND bucket < toDateTime(")
        .arg(to_date.until_ms / 1000)
        .push(")) AND built_ms >= (SELECT toUInt64(max(at)) * 1000 + ")
        .arg(u64::from(RACE_WINDOW_S) * 1000);
    late_marks_of(&mut sql, to_date);
    sql.push(")");
    sql
}

/// ` FROM` the marks of late events in the hours `to_date` covers.
fn late_marks_of(sql: &mut Sql, to_date: &ToDate<'_>) {
    let first_day = to_date.start_ms.div_euclid(DAY_MS) * DAY_MS;
    sql.push(" FROM rollup_hours_late WHERE tenant = ")
        .arg(to_date.tenant)
        .push(" AND customer = ")
        .arg(to_date.customer)
        .push(" AND hour >= toDateTime(")
        .arg(first_day / 1000)
        .push(") AND hour < toDateTime(")
        .arg(to_date.until_ms / 1000)
        .push(")");
}

/// The newest mark of a late event in the hours `to_date` covers, and the server's clock, in
/// epoch seconds: states written less than five minutes after such a mark are not read.
pub fn late_mark_statement(to_date: &ToDate<'_>) -> Sql {
    let mut sql = Sql::new("SELECT toUInt32(max(at)), toUInt32(now())");
    late_marks_of(&mut sql, to_date);
    sql
}

/// The combined read of `meters` of one customer: `to_date`'s states, then `rest` (the parts
/// of the window after them), in one statement. Its rows hold one of meter [`COMPLETE`] only
/// if the states were read.
pub fn to_date_statement(to_date: &ToDate<'_>, rest: &[Part], meters: &Meters<'_>) -> Sql {
    let mut selects = part_selects(to_date.tenant, to_date.customer, rest, meters, None);
    selects.push(to_date_select(to_date, meters));
    combined(meters, selects)
}

/// Whether the hour rollup holds a row of `meters` of one customer in the hour starting at
/// `hour_ms`.
pub fn hour_rows_statement(tenant: &str, customer: &str, meters: &Meters<'_>, hour_ms: i64) -> Sql {
    let mut sql = Sql::new("SELECT count() > 0 FROM usage_rollup_hour WHERE tenant = ");
    sql.arg(tenant)
        .push(" AND customer = ")
        .arg(customer)
        .push(" AND meter IN (")
        .list(meters.iter().map(|(slug, _)| *slug))
        .push(") AND bucket = toDateTime(")
        .arg(hour_ms / 1000)
        .push(")");
    sql
}

/// The partitions (numbers) `table` holds.
pub fn partitions_statement(table: &str) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT partition FROM system.parts WHERE database = currentDatabase() AND table = ",
    );
    sql.arg(table).push(" AND active");
    sql
}

/// Drops the partition `partition` of `table`: `usage_rollup_to_date` (partitioned by its
/// horizon's hour number) or `rollup_hours_late` (by its hour's day number).
pub fn drop_partition(table: &'static str, partition: u32) -> Sql {
    let mut sql = Sql::new(&format!("ALTER TABLE {table} DROP PARTITION "));
    sql.arg(partition);
    sql
}

/// Whether maintenance keeps the states of the horizon of hour number `partition`, the day
/// grain's horizon being `sealed_s` and the server's clock `now_s` (epoch seconds): those of the
/// day grain's horizon and the one before it (a process that has not looked again reads at it),
/// and of the last hours (a process reads at the hour horizon of its clock).
pub fn keeps_to_date(partition: u32, sealed_s: u32, now_s: u32) -> bool {
    let until = u64::from(partition) * 3_600;
    let (sealed, now) = (u64::from(sealed_s), u64::from(now_s));
    until == sealed || until + u64::from(DAY_S) == sealed || until + 3 * 3_600 >= now
}

impl Store {
    /// Writes period-to-date states ([`build_statement`]) as one block, whatever its size (the
    /// insert squashes a SELECT's blocks up to these bounds), within a minute.
    pub async fn build_to_date(&self, statement: &Sql) -> Result<(), StoreError> {
        statement
            .query(self.client())
            .with_setting("min_insert_block_size_rows", "1000000000000")
            .with_setting("min_insert_block_size_bytes", "1000000000000000")
            .with_setting("max_execution_time", "60")
            .execute()
            .await?;
        Ok(())
    }

    /// Runs a [`hour_rows_statement`], within the request's read budget.
    pub async fn hour_has_rows(&self, statement: &Sql) -> Result<bool, StoreError> {
        let any: u8 = statement
            .query(self.reader())
            .fetch_one()
            .await
            .map_err(StoreError::from_read)?;
        Ok(any == 1)
    }

    /// Whether states of `to_date` may be written now: by ClickHouse's clock, their last hour
    /// ended over an hour and five minutes ago (every event of it arriving since is marked,
    /// and an insert begun before is done), no late event of the hours they cover was marked
    /// in the last five minutes ([`late_mark_statement`]), and this node is not behind its
    /// shard's replicas.
    pub async fn may_write_to_date(&self, to_date: &ToDate<'_>) -> Result<bool, StoreError> {
        let (late, now): (u32, u32) = late_mark_statement(to_date)
            .query(self.client())
            .fetch_one()
            .await?;
        let until = u32::try_from(to_date.until_ms / 1000).unwrap_or(u32::MAX);
        let settled = now >= until.saturating_add(3_600 + RACE_WINDOW_S)
            && (late == 0 || now >= late + RACE_WINDOW_S);
        Ok(settled && !self.behind(self.client()).await?)
    }

    /// Drops the partitions of `table` (see [`drop_partition`]) that `keep` does not keep,
    /// through `client`; an error is logged, and the next round tries again.
    pub(super) async fn drop_partitions(
        &self,
        client: &Client,
        table: &'static str,
        keep: impl Fn(u32) -> bool,
    ) {
        let dropped = async {
            let partitions: Vec<String> = partitions_statement(table)
                .query(client)
                .fetch_all()
                .await?;
            let old: Vec<u32> = partitions
                .iter()
                .filter_map(|p| p.parse::<u32>().ok())
                .filter(|&p| !keep(p))
                .collect();
            for &partition in &old {
                drop_partition(table, partition)
                    .query(client)
                    .execute()
                    .await?;
            }
            Ok::<_, StoreError>(old.len())
        };
        match dropped.await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(table, dropped, "partitions past dropped"),
            Err(e) => tracing::warn!(table, error = %e, "partitions past not dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Aggregation;

    #[test]
    fn a_set_of_meters_is_named_by_its_slugs_and_aggregations_in_order() {
        let meters = [
            ("calls", Aggregation::Count),
            ("users", Aggregation::UniqueCount),
        ];
        assert_eq!(meters_key(&meters), "calls:Count,users:UniqueCount");
    }

    #[test]
    fn the_build_fills_every_column_and_writes_the_complete_row() {
        let meters = [("calls", Aggregation::Count), ("gb", Aggregation::Sum)];
        let to_date = ToDate {
            tenant: "t",
            customer: "c",
            start_ms: 1_000,
            until_ms: 2 * DAY_MS,
        };
        let sql = build_statement(&to_date, &[Part::Samples(1_000, 2 * DAY_MS)], &meters).render();
        assert!(sql.contains("sumMergeState(sum_value)"), "{sql}");
        assert!(
            sql.contains("arrayReduce('uniqExactState', emptyArrayString())"),
            "{sql}"
        );
        assert!(sql.contains("'' AS meter"), "{sql}");
        assert!(
            sql.contains("sumState(toDecimal128(0, 12)) AS sum_value"),
            "{sql}"
        );
        assert!(!sql.contains("uniqExactState('')"), "{sql}");
    }

    #[test]
    fn maintenance_keeps_the_day_horizons_states_and_the_last_hours() {
        let day = DAY_S / 3_600;
        let sealed = 100 * DAY_S;
        let now = sealed + 20 * 3_600 + 1_800;
        let kept: Vec<u32> = (98 * day..102 * day)
            .filter(|&p| keeps_to_date(p, sealed, now))
            .collect();
        assert_eq!(
            kept,
            [
                99 * day,
                100 * day,
                100 * day + 18,
                100 * day + 19,
                100 * day + 20
            ]
            .into_iter()
            .chain(100 * day + 21..102 * day)
            .collect::<Vec<_>>()
        );
    }
}
