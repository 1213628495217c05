use super::*;

const HOUR_MS: i64 = 3_600_000;

fn scope<'a>(filters: &'a [(String, Vec<String>)]) -> Scope<'a> {
    Scope {
        tenant: "t",
        meter: "tokens",
        customer: Some("c"),
        filters,
        as_of_ms: None,
    }
}

#[test]
fn a_per_meter_read_binds_each_value_in_its_place() {
    let parts = [
        Part::Samples(HOUR_MS - 5, HOUR_MS),
        Part::Hours(HOUR_MS, 3 * HOUR_MS),
    ];
    let filters = [("region".to_owned(), vec!["eu".to_owned()])];
    let sql = usage_statement(
        &parts,
        Aggregation::Sum,
        &["model".into()],
        &scope(&filters),
    );
    assert_eq!(
        sql.render(),
        "SELECT grp, toString(sumMerge(sum_value)) AS value, countMerge(samples) AS events FROM (\
         SELECT [group_values[indexOf(group_keys, 'model')]] AS grp, countState() AS samples, sumState(value) AS sum_value \
         FROM usage_samples PREWHERE tenant = 't' AND meter = 'tokens' AND customer = 'c' \
         AND has(['eu'], group_values[indexOf(group_keys, 'region')]) \
         AND ts_ms >= 3599995 AND ts_ms < 3600000 GROUP BY grp \
         UNION ALL SELECT [group_values[indexOf(group_keys, 'model')]] AS grp, samples, sum_value \
         FROM usage_rollup_hour PREWHERE tenant = 't' AND meter = 'tokens' AND customer = 'c' \
         AND has(['eu'], group_values[indexOf(group_keys, 'region')]) \
         AND bucket >= toDateTime(3600) AND bucket < toDateTime(10800)) GROUP BY grp ORDER BY grp"
    );
    let count = usage_statement(&parts[1..], Aggregation::Count, &[], &scope(&[]));
    assert!(count.render().starts_with(
        "SELECT grp, toString(countMerge(samples)) AS value, countMerge(samples) AS events \
         FROM (SELECT emptyArrayString() AS grp, samples FROM usage_rollup_hour"
    ));
}
