use super::*;

const HOUR_MS: i64 = 3_600_000;

#[test]
fn a_combined_read_binds_each_meter_and_bound_in_its_place() {
    let parts = [
        Part::Samples(HOUR_MS - 5, HOUR_MS),
        Part::Hours(HOUR_MS, 2 * HOUR_MS),
        Part::Samples(2 * HOUR_MS, 2 * HOUR_MS + 7),
    ];
    let meters = [
        ("calls", Aggregation::Count),
        ("tokens", Aggregation::Sum),
        ("users", Aggregation::UniqueCount),
    ];
    let sql = combined_statement("t", "c", &parts, &meters);
    assert_eq!(
        sql.render(),
        "SELECT customer, meter, group_keys, group_values, multiIf(\
         meter IN ('tokens'), toString(sumMergeIf(sum_value, meter IN ('tokens'))), \
         meter IN ('users'), toString(uniqExactMergeIf(distinct_values, meter IN ('users'))), \
         toString(countMerge(samples))) AS value, countMerge(samples) AS events FROM (\
         SELECT customer, meter, group_keys, group_values, samples, sum_value, \
         arrayReduce('uniqExactState', emptyArrayString()) AS distinct_values \
         FROM usage_rollup_hour PREWHERE tenant = 't' AND customer = 'c' AND meter IN ('calls', 'tokens') \
         AND (bucket >= toDateTime(3600) AND bucket < toDateTime(7200)) \
         UNION ALL SELECT customer, meter, group_keys, group_values, samples, sum_value, distinct_values \
         FROM usage_rollup_hour PREWHERE tenant = 't' AND customer = 'c' AND meter IN ('users') \
         AND (bucket >= toDateTime(3600) AND bucket < toDateTime(7200)) \
         UNION ALL SELECT customer, meter, group_keys, group_values, countState() AS samples, \
         sumState(value) AS sum_value, uniqExactState(value_str) AS distinct_values \
         FROM usage_samples PREWHERE tenant = 't' AND customer = 'c' AND meter IN ('calls', 'tokens', 'users') \
         AND ((ts_ms >= 3599995 AND ts_ms < 3600000) OR (ts_ms >= 7200000 AND ts_ms < 7200007)) \
         GROUP BY customer, meter, group_keys, group_values) \
         GROUP BY customer, meter, group_keys, group_values"
    );
    let only_hours = combined_statement("t", "c", &parts[1..2], &meters[..1]);
    assert!(!only_hours.render().contains("usage_samples"));
    assert!(
        only_hours
            .render()
            .contains("toString(countMerge(samples)) AS value")
    );
}

#[test]
fn a_read_of_several_customers_binds_each_customers_bounds_in_order() {
    let mut windows = Windows::default();
    windows.push(
        "a",
        (HOUR_MS - 5, 3 * HOUR_MS + 5),
        Some((HOUR_MS, 3 * HOUR_MS)),
    );
    windows.push("b", (10, 20), None);
    assert_eq!(windows.hours(), Some((HOUR_MS, 3 * HOUR_MS)));
    assert_eq!(windows.span(), (10, 3 * HOUR_MS + 5));
    let sql = customers_statement("t", &windows, &[("calls", Aggregation::Count)]);
    assert_eq!(
        sql.render(),
        "SELECT customer, meter, group_keys, group_values, toString(countMerge(samples)) AS value, \
         countMerge(samples) AS events FROM (\
         SELECT customer, meter, group_keys, group_values, samples FROM usage_rollup_hour \
         PREWHERE tenant = 't' AND meter IN ('calls') AND customer IN ('a', 'b') \
         AND bucket >= toDateTime(3600) AND bucket < toDateTime(10800) \
         AND toUInt32(bucket) >= transform(customer, ['a','b'], CAST([3600,0] AS Array(UInt32)), toUInt32(0)) \
         AND toUInt32(bucket) < transform(customer, ['a','b'], CAST([10800,0] AS Array(UInt32)), toUInt32(0)) \
         UNION ALL SELECT customer, meter, group_keys, group_values, countState() AS samples FROM usage_samples \
         PREWHERE tenant = 't' AND meter IN ('calls') AND customer IN ('a', 'b') AND ts_ms >= 10 AND ts_ms < 10800005 \
         AND ts_ms >= transform(customer, ['a','b'], CAST([3599995,10] AS Array(Int64)), toInt64(0)) \
         AND ts_ms < transform(customer, ['a','b'], CAST([10800005,20] AS Array(Int64)), toInt64(0)) \
         AND NOT (ts_ms >= transform(customer, ['a','b'], CAST([3600000,0] AS Array(Int64)), toInt64(0)) \
         AND ts_ms < transform(customer, ['a','b'], CAST([10800000,0] AS Array(Int64)), toInt64(0))) \
         GROUP BY customer, meter, group_keys, group_values) GROUP BY customer, meter, group_keys, group_values"
    );
    let mut no_hours = Windows::default();
    no_hours.push("b", (10, 20), None);
    let sql = customers_statement("t", &no_hours, &[("calls", Aggregation::Count)]);
    assert!(!sql.render().contains("usage_rollup_hour"));
}

/// The rollup branches of `sql` (between `SELECT` and the next `UNION ALL`) that read the
/// column of distinct values itself, with the meters each takes.
fn branches_reading_sets(sql: &str) -> Vec<String> {
    sql.split("UNION ALL")
        .filter_map(|b| {
            let (columns, from) = b.rsplit_once("FROM usage_rollup")?;
            let columns = columns
                .rsplit_once("SELECT customer")
                .map_or(columns, |c| c.1);
            if !columns.contains(", distinct_values") {
                return None;
            }
            let meters = from.split("meter IN (").nth(1).unwrap_or_default();
            Some(meters[..meters.find(')').unwrap_or(0)].to_owned())
        })
        .collect()
}

#[test]
fn distinct_counts_rows_are_read_apart_from_the_other_meters_rows() {
    // Each branch of a rollup read decodes its columns for every row of the granules it
    // touches: the count and sum meters' rows must not read the sets of distinct values,
    // which may be another customer's (the rows beside them in key order).
    let parts = [
        Part::Samples(HOUR_MS - 5, HOUR_MS),
        Part::Hours(HOUR_MS, 24 * HOUR_MS),
        Part::Days(24 * HOUR_MS, 72 * HOUR_MS),
    ];
    let meters = [
        ("calls", Aggregation::Count),
        ("users", Aggregation::UniqueCount),
        ("tokens", Aggregation::Sum),
        ("seats", Aggregation::UniqueCount),
        ("last", Aggregation::Latest),
    ];
    let one = combined_statement("t", "c", &parts, &meters).render();
    assert_eq!(
        branches_reading_sets(&one),
        vec!["'users', 'seats'".to_owned(), "'users', 'seats'".to_owned()],
        "{one}"
    );
    assert_eq!(
        one.matches("emptyArrayString()) AS distinct_values")
            .count(),
        2
    );
    assert!(one.contains("meter IN ('calls', 'tokens', 'last')"));
    let mut windows = Windows::default();
    windows.push("a", (0, 3 * HOUR_MS), Some((0, 3 * HOUR_MS)));
    windows.push("b", (0, 3 * HOUR_MS), Some((0, 3 * HOUR_MS)));
    let many = customers_statement("t", &windows, &meters).render();
    assert_eq!(
        branches_reading_sets(&many),
        vec!["'users', 'seats'".to_owned()],
        "{many}"
    );
    // One kind or the other alone: one branch per table, as before.
    let sets_only = combined_statement("t", "c", &parts, &meters[1..2]).render();
    assert_eq!(branches_reading_sets(&sets_only).len(), 2);
    assert!(!sets_only.contains("arrayReduce"));
    let no_sets = combined_statement("t", "c", &parts, &meters[2..3]).render();
    assert!(branches_reading_sets(&no_sets).is_empty());
    assert!(!no_sets.contains("distinct_values"));
}
