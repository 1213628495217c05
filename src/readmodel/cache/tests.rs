use super::*;

fn answer(value: i64) -> Arc<Vec<MeterGroupUsage>> {
    Arc::new(vec![MeterGroupUsage {
        meter: "m".into(),
        keys: vec![],
        values: vec![],
        value: Decimal::from(value),
        count: 1,
    }])
}

fn question() -> AnswerKey {
    AnswerKey::new((0, 10), &[("m", Aggregation::Sum)])
}

fn value(cache: &UsageCache, customer: &str) -> Option<Decimal> {
    cache
        .lookup("t", customer, &question())
        .ok()
        .map(|a| a[0].value)
}

#[test]
fn an_answer_is_kept_until_its_customer_changes() {
    let cache = UsageCache::new(10);
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    cache.store(ticket, "t", "c", question(), answer(5));
    assert_eq!(value(&cache, "c"), Some(Decimal::from(5)));
    cache.invalidate([("t", "other")]);
    assert_eq!(value(&cache, "c"), Some(Decimal::from(5)));
    cache.invalidate([("t", "c")]);
    assert_eq!(value(&cache, "c"), None);
    // Another tenant's customer of the same name is another customer.
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    cache.store(ticket, "t", "c", question(), answer(6));
    cache.invalidate([("u", "c")]);
    assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
}

#[test]
fn a_read_that_raced_a_change_keeps_nothing() {
    let cache = UsageCache::new(10);
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    cache.invalidate([("t", "c")]);
    cache.store(ticket, "t", "c", question(), answer(5));
    assert_eq!(value(&cache, "c"), None);
    // A change to someone else does not void it.
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    cache.invalidate([("t", "d")]);
    cache.store(ticket, "t", "c", question(), answer(7));
    assert_eq!(value(&cache, "c"), Some(Decimal::from(7)));
    // Nor does a clear before the ticket; one after it does.
    cache.clear();
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    let late = cache.lookup("t", "e", &question()).unwrap_err();
    cache.clear();
    cache.store(ticket, "t", "c", question(), answer(8));
    cache.store(late, "t", "e", question(), answer(8));
    assert_eq!(value(&cache, "c"), None);
    assert_eq!(value(&cache, "e"), None);
}

#[test]
fn loading_skips_held_answers_stops_at_its_room_and_keeps_nothing_that_raced() {
    let cache = UsageCache::new(8);
    let ticket = cache.lookup("t", "held", &question()).unwrap_err();
    cache.store(ticket, "t", "held", question(), answer(1));
    let customers: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
    let mut asked: Vec<&str> = vec!["held"];
    asked.extend(customers.iter().map(String::as_str));
    let tickets = cache.reserve("t", asked.iter().map(|&c| (c, question())));
    // Room for 7 of 8 customers (what eviction keeps), one of them already held.
    let names: Vec<&str> = tickets.iter().map(|(c, _, _)| *c).collect();
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5"]);
    // A batch of c1 begins while the load reads: its answer is not kept.
    cache.begin_write(1, [("t", "c1")]);
    for (customer, question, ticket) in tickets {
        let kept = cache.store(ticket, "t", customer, question, answer(2));
        assert_eq!(kept, customer != "c1", "{customer}");
    }
    cache.abandon(1, [("t", "c1")]);
    assert_eq!(value(&cache, "c0"), Some(Decimal::from(2)));
    assert_eq!(value(&cache, "c1"), None);
    assert_eq!(value(&cache, "held"), Some(Decimal::from(1)));
    // Held answers are not asked for again.
    let again = cache.reserve("t", ["held", "c0"].map(|c| (c, question())));
    assert!(again.is_empty());
    // Two questions of one customer: the second waits for another load.
    let other = AnswerKey::new((0, 20), &[("m", Aggregation::Sum)]);
    let twice = cache.reserve("t", [("c2", other.clone()), ("c2", question())]);
    assert_eq!(twice.len(), 1);
    assert_eq!(twice[0].1, other);
}

#[test]
fn the_least_recently_used_customers_go_first() {
    let cache = UsageCache::new(8);
    for i in 0..8 {
        let c = format!("c{i}");
        let ticket = cache.lookup("t", &c, &question()).unwrap_err();
        cache.store(ticket, "t", &c, question(), answer(i));
    }
    // c0 is read again, so c1 is now the oldest.
    assert!(value(&cache, "c0").is_some());
    let _ = cache.lookup("t", "c8", &question());
    assert_eq!(cache.customers(), 7);
    assert!(value(&cache, "c0").is_some());
    assert!(value(&cache, "c1").is_none());
    assert!(value(&cache, "c7").is_some());
}

#[test]
fn a_read_whose_customer_was_evicted_and_changed_keeps_nothing() {
    let cache = UsageCache::new(8);
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    // Eight other customers read: c, the least recently used, is evicted.
    for i in 0..8 {
        let _ = cache.lookup("t", &format!("other{i}"), &question());
    }
    cache.invalidate([("t", "c")]);
    // Another read of c makes a new slot before the first read's answer arrives.
    let fresh = cache.lookup("t", "c", &question()).unwrap_err();
    cache.store(ticket, "t", "c", question(), answer(5));
    assert_eq!(value(&cache, "c"), None, "the answer may miss the change");
    cache.store(fresh, "t", "c", question(), answer(6));
    assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
}

fn row(meter: &str, group: &[&str], value: i64, count: u64) -> MeterGroupUsage {
    MeterGroupUsage {
        meter: meter.into(),
        keys: group.iter().map(|_| "model".to_owned()).collect(),
        values: group.iter().map(|&g| g.to_owned()).collect(),
        value: Decimal::from(value),
        count,
    }
}

/// A sample of customer c of tenant t.
fn sample<'a>(
    meter: &'a str,
    ts_ms: i64,
    keys: &'a [String],
    values: &'a [String],
    value: i64,
) -> Sample<'a> {
    Sample {
        tenant: "t",
        customer: "c",
        meter,
        ts_ms,
        keys,
        values,
        value: Decimal::from(value),
    }
}

fn keep(cache: &UsageCache, question: &AnswerKey, rows: Vec<MeterGroupUsage>) {
    let ticket = cache.lookup("t", "c", question).unwrap_err();
    cache.store(ticket, "t", "c", question.clone(), Arc::new(rows));
}

fn sorted(cache: &UsageCache, question: &AnswerKey) -> Option<Vec<MeterGroupUsage>> {
    let mut rows = cache.lookup("t", "c", question).ok()?.to_vec();
    rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
    Some(rows)
}

#[test]
fn own_batches_are_added_to_kept_answers() {
    let cache = UsageCache::new(10);
    let question = AnswerKey::new(
        (0, 100),
        &[
            ("calls", Aggregation::Count),
            ("tokens", Aggregation::Sum),
            ("low", Aggregation::Min),
            ("high", Aggregation::Max),
        ],
    );
    keep(
        &cache,
        &question,
        vec![
            row("calls", &[], 4, 4),
            row("tokens", &["a"], 10, 2),
            row("low", &[], 3, 1),
            row("high", &[], 3, 1),
        ],
    );
    let (none, model) = (vec![], vec!["model".to_owned()]);
    let (a, b) = (vec!["a".to_owned()], vec!["b".to_owned()]);
    cache.begin_write(7, [("t", "c")]);
    cache.fold(
        7,
        [
            sample("calls", 5, &none, &none, 1),
            sample("tokens", 6, &model, &a, 5),
            sample("tokens", 7, &model, &b, 8),
            sample("low", 8, &none, &none, 2),
            sample("low", 9, &none, &none, 9),
            sample("high", 10, &none, &none, 9),
            // Outside the window, and a meter the question does not read.
            sample("tokens", 100, &model, &a, 1000),
            sample("other", 11, &none, &none, 1000),
        ],
    );
    assert_eq!(
        sorted(&cache, &question),
        Some(vec![
            row("calls", &[], 5, 5),
            row("high", &[], 9, 2),
            row("low", &[], 2, 3),
            row("tokens", &["a"], 15, 3),
            row("tokens", &["b"], 8, 1),
        ])
    );
    assert_eq!(cache.own_batches(), vec![7]);
}

#[test]
fn an_answer_a_sample_cannot_update_exactly_is_dropped() {
    let cache = UsageCache::new(10);
    let none: Vec<String> = vec![];
    for aggregation in [Aggregation::UniqueCount, Aggregation::Latest] {
        let question = AnswerKey::new((0, 100), &[("m", aggregation)]);
        // A first sample of the meter is exact: one distinct value, the latest value.
        keep(&cache, &question, vec![]);
        cache.begin_write(1, [("t", "c")]);
        cache.fold(1, [sample("m", 5, &none, &none, 42)]);
        let expected = if aggregation == Aggregation::Latest {
            42
        } else {
            1
        };
        assert_eq!(
            sorted(&cache, &question),
            Some(vec![row("m", &[], expected, 1)])
        );
        // A second needs the state ClickHouse keeps.
        cache.begin_write(2, [("t", "c")]);
        cache.fold(2, [sample("m", 6, &none, &none, 43)]);
        assert_eq!(sorted(&cache, &question), None, "{aggregation:?}");
    }
}

#[test]
fn answers_read_while_a_batch_was_inserted_are_not_kept() {
    let cache = UsageCache::new(10);
    let none: Vec<String> = vec![];
    let q = question();
    // A read that began before the batch and ends during its insert may have seen it.
    let before = cache.lookup("t", "c", &q).unwrap_err();
    cache.begin_write(1, [("t", "c")]);
    cache.store(before, "t", "c", q.clone(), answer(5));
    assert_eq!(value(&cache, "c"), None);
    // One that began and ended during the insert is dropped when the batch is folded.
    let during = cache.lookup("t", "c", &q).unwrap_err();
    let late = cache.lookup("t", "c", &q).unwrap_err();
    cache.store(during, "t", "c", q.clone(), answer(5));
    cache.fold(1, [sample("m", 1, &none, &none, 1)]);
    assert_eq!(value(&cache, "c"), None);
    // One that began during the insert and ends after the fold is not kept either.
    cache.store(late, "t", "c", q.clone(), answer(5));
    assert_eq!(value(&cache, "c"), None);
    // A read after the fold is.
    let after = cache.lookup("t", "c", &q).unwrap_err();
    cache.store(after, "t", "c", q.clone(), answer(6));
    assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
    // A customer the batch did not touch keeps what it read during the insert.
    let other = cache.lookup("t", "d", &q).unwrap_err();
    cache.begin_write(2, [("t", "c")]);
    cache.store(other, "t", "d", q.clone(), answer(9));
    cache.fold(2, [sample("m", 1, &none, &none, 1)]);
    assert_eq!(value(&cache, "d"), Some(Decimal::from(9)));
    assert_eq!(value(&cache, "c"), Some(Decimal::from(7)));
    // A batch that failed drops its customers' answers, and its rows count as changes.
    cache.begin_write(3, [("t", "c")]);
    assert_eq!(cache.own_batches(), vec![1, 2, 3]);
    cache.abandon(3, [("t", "c")]);
    assert_eq!(value(&cache, "c"), None);
    assert_eq!(cache.own_batches(), vec![1, 2]);
}

#[test]
fn a_cache_of_no_customers_keeps_nothing() {
    let cache = UsageCache::new(0);
    let ticket = cache.lookup("t", "c", &question()).unwrap_err();
    cache.store(ticket, "t", "c", question(), answer(1));
    assert_eq!(value(&cache, "c"), None);
}

#[test]
fn a_batch_the_cache_does_not_remember_drops_its_customers_answers() {
    let cache = UsageCache::new(10);
    let none: Vec<String> = vec![];
    keep(&cache, &question(), vec![row("m", &[], 5, 1)]);
    // Never begun here (or forgotten): its samples cannot be known to be missing from the
    // answer, so the answer goes rather than be added to.
    cache.fold(99, [sample("m", 1, &none, &none, 1)]);
    assert_eq!(value(&cache, "c"), None);
}

#[test]
fn answers_are_used_only_while_the_changes_were_polled_within_the_bound() {
    let cache = UsageCache::new(10);
    assert!(!cache.fresh(), "never polled");
    cache.polled(Instant::now());
    assert!(cache.fresh());
    cache.polled(Instant::now() - STALENESS_BOUND - Duration::from_millis(1));
    assert!(!cache.fresh(), "the last poll is older than the bound");
}

#[test]
fn a_customer_keeps_a_bounded_number_of_answers() {
    let cache = UsageCache::new(10);
    for to in 1..=(ANSWERS_PER_CUSTOMER as i64 + 5) {
        let key = AnswerKey::new((0, to), &[("m", Aggregation::Sum)]);
        let ticket = cache.lookup("t", "c", &key).unwrap_err();
        assert!(cache.store(ticket, "t", "c", key, answer(to)));
    }
    let held = (1..=(ANSWERS_PER_CUSTOMER as i64 + 5))
        .filter(|&to| {
            let key = AnswerKey::new((0, to), &[("m", Aggregation::Sum)]);
            cache.lookup("t", "c", &key).is_ok()
        })
        .count();
    assert_eq!(held, ANSWERS_PER_CUSTOMER);
}
