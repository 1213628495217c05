use super::*;
use chrono_tz::Europe::Paris;
use chrono_tz::UTC;
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cadence(interval: Interval, count: u32, anchor: Anchor, tz: Tz, origin: &str) -> Cadence {
    Cadence {
        interval,
        count,
        anchor,
        tz,
        origin: t(origin),
    }
}

fn boundaries(c: &Cadence, n: i64) -> Vec<String> {
    (0..n)
        .map(|k| c.boundary(k).unwrap().to_rfc3339())
        .collect()
}

fn timeline(start: &str, interval: Interval, anchor: Anchor, tz: Tz) -> Timeline {
    Timeline {
        start: t(start),
        anchor,
        tz,
        trial_end: None,
        end: None,
        phases: vec![PhaseSpan {
            from: t(start),
            to: None,
            interval,
            count: 1,
        }],
    }
}

#[test]
fn anniversary_months_clamp_to_month_ends_and_come_back() {
    let c = cadence(
        Interval::Month,
        1,
        Anchor::Anniversary,
        UTC,
        "2026-01-31T10:00:00Z",
    );
    assert_eq!(
        boundaries(&c, 5),
        [
            "2026-01-31T10:00:00+00:00",
            "2026-02-28T10:00:00+00:00",
            "2026-03-31T10:00:00+00:00",
            "2026-04-30T10:00:00+00:00",
            "2026-05-31T10:00:00+00:00"
        ]
    );
    let leap = cadence(
        Interval::Month,
        1,
        Anchor::Anniversary,
        UTC,
        "2028-01-31T00:00:00Z",
    );
    assert_eq!(leap.boundary(1).unwrap(), t("2028-02-29T00:00:00Z"));
    let yearly = cadence(
        Interval::Year,
        1,
        Anchor::Anniversary,
        UTC,
        "2028-02-29T00:00:00Z",
    );
    assert_eq!(yearly.boundary(1).unwrap(), t("2029-02-28T00:00:00Z"));
    assert_eq!(yearly.boundary(4).unwrap(), t("2032-02-29T00:00:00Z"));
}

#[test]
fn anniversary_keeps_local_time_across_dst() {
    // 14:00 in Paris: 13:00Z in winter, 12:00Z in summer.
    let c = cadence(
        Interval::Month,
        1,
        Anchor::Anniversary,
        Paris,
        "2026-03-10T13:00:00Z",
    );
    assert_eq!(c.boundary(1).unwrap(), t("2026-04-10T12:00:00Z"));
    let daily = cadence(
        Interval::Day,
        1,
        Anchor::Anniversary,
        Paris,
        "2026-03-28T08:00:00Z",
    );
    assert_eq!(daily.boundary(2).unwrap(), t("2026-03-30T07:00:00Z"));
}

#[test]
fn calendar_days_are_23_or_25_hours_on_dst_changes() {
    let c = cadence(
        Interval::Day,
        1,
        Anchor::Calendar,
        Paris,
        "2026-03-01T12:00:00Z",
    );
    let (_, spring) = c.period_at(t("2026-03-29T12:00:00Z")).unwrap();
    assert_eq!(
        (spring.from, spring.to),
        (t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z"))
    );
    assert_eq!(spring.seconds(), 23 * 3600);
    let (_, autumn) = c.period_at(t("2026-10-25T12:00:00Z")).unwrap();
    assert_eq!(autumn.seconds(), 25 * 3600);
}

#[test]
fn calendar_months_start_with_a_partial_period_in_the_customer_timezone() {
    let c = cadence(
        Interval::Month,
        1,
        Anchor::Calendar,
        Paris,
        "2026-11-05T13:00:00Z",
    );
    assert_eq!(
        boundaries(&c, 3),
        [
            "2026-11-05T13:00:00+00:00",
            "2026-11-30T23:00:00+00:00",
            "2026-12-31T23:00:00+00:00"
        ]
    );
    let exact = cadence(
        Interval::Month,
        1,
        Anchor::Calendar,
        UTC,
        "2026-11-01T00:00:00Z",
    );
    assert_eq!(
        exact.boundary(1).unwrap(),
        t("2026-12-01T00:00:00Z"),
        "a start on a boundary is not partial"
    );
}

#[test]
fn calendar_weeks_quarters_and_years_align_to_their_boundaries() {
    let week = cadence(
        Interval::Week,
        1,
        Anchor::Calendar,
        UTC,
        "2026-11-19T10:00:00Z",
    ); // a Thursday
    assert_eq!(week.boundary(1).unwrap(), t("2026-11-23T00:00:00Z"));
    assert_eq!(week.boundary(1).unwrap().weekday(), chrono::Weekday::Mon);
    let quarter = cadence(
        Interval::Quarter,
        1,
        Anchor::Calendar,
        UTC,
        "2026-11-19T10:00:00Z",
    );
    assert_eq!(
        boundaries(&quarter, 3)[1..],
        ["2027-01-01T00:00:00+00:00", "2027-04-01T00:00:00+00:00"]
    );
    let year = cadence(
        Interval::Year,
        1,
        Anchor::Calendar,
        UTC,
        "2026-11-19T10:00:00Z",
    );
    assert_eq!(year.boundary(2).unwrap(), t("2028-01-01T00:00:00Z"));
    let bimonthly = cadence(
        Interval::Month,
        2,
        Anchor::Calendar,
        UTC,
        "2026-11-19T10:00:00Z",
    );
    assert_eq!(
        boundaries(&bimonthly, 3)[1..],
        ["2026-12-01T00:00:00+00:00", "2027-02-01T00:00:00+00:00"]
    );
}

#[test]
fn the_period_containing_an_instant_is_found_far_from_the_origin() {
    let c = cadence(
        Interval::Month,
        1,
        Anchor::Anniversary,
        UTC,
        "2020-01-31T00:00:00Z",
    );
    let (k, w) = c.period_at(t("2026-11-21T10:00:00Z")).unwrap();
    assert_eq!(k, 81);
    assert_eq!(
        (w.from, w.to),
        (t("2026-10-31T00:00:00Z"), t("2026-11-30T00:00:00Z"))
    );
    let (_, at_boundary) = c.period_at(t("2026-11-30T00:00:00Z")).unwrap();
    assert_eq!(
        at_boundary.from,
        t("2026-11-30T00:00:00Z"),
        "periods are half-open"
    );
}

#[test]
fn a_future_subscription_is_scheduled_with_its_first_invoice_at_start() {
    let tl = timeline(
        "2027-01-01T00:00:00Z",
        Interval::Month,
        Anchor::Anniversary,
        UTC,
    );
    let now = t("2026-11-21T00:00:00Z");
    assert_eq!(tl.status_at(now), Status::Scheduled);
    assert_eq!(tl.period_at(now).unwrap(), None);
    assert_eq!(
        tl.next_invoice_date(now).unwrap(),
        Some(t("2027-01-01T00:00:00Z"))
    );
}

#[test]
fn a_trial_is_its_own_period_and_billing_anchors_at_its_end() {
    let mut tl = timeline(
        "2026-11-05T13:00:00Z",
        Interval::Month,
        Anchor::Anniversary,
        UTC,
    );
    tl.trial_end = Some(t("2026-11-19T13:00:00Z"));
    let trial = tl.period_at(t("2026-11-10T00:00:00Z")).unwrap().unwrap();
    assert!(trial.trial);
    assert_eq!(tl.status_at(t("2026-11-10T00:00:00Z")), Status::Trialing);
    let first = tl.period_at(t("2026-11-21T00:00:00Z")).unwrap().unwrap();
    assert_eq!(
        (first.window.from, first.window.to, first.trial),
        (t("2026-11-19T13:00:00Z"), t("2026-12-19T13:00:00Z"), false)
    );
}

#[test]
fn cancellation_cuts_the_last_period_and_ends_the_timeline() {
    let mut tl = timeline(
        "2026-11-05T13:00:00Z",
        Interval::Month,
        Anchor::Anniversary,
        UTC,
    );
    tl.end = Some(t("2026-11-20T13:00:00Z"));
    let last = tl.period_at(t("2026-11-10T00:00:00Z")).unwrap().unwrap();
    assert_eq!(
        (last.window.from, last.window.to),
        (t("2026-11-05T13:00:00Z"), t("2026-11-20T13:00:00Z"))
    );
    assert_eq!(last.full.to, t("2026-12-05T13:00:00Z"));
    assert_eq!(tl.period_at(t("2026-11-21T00:00:00Z")).unwrap(), None);
    assert_eq!(tl.status_at(t("2026-11-21T00:00:00Z")), Status::Canceled);
    assert_eq!(
        tl.next_invoice_date(t("2026-11-21T00:00:00Z")).unwrap(),
        None
    );
}

#[test]
fn a_plan_change_splits_periods_by_phase() {
    let mut tl = timeline(
        "2026-09-01T00:00:00Z",
        Interval::Month,
        Anchor::Calendar,
        UTC,
    );
    tl.phases[0].to = Some(t("2026-10-15T00:00:00Z"));
    tl.phases.push(PhaseSpan {
        from: t("2026-10-15T00:00:00Z"),
        to: None,
        interval: Interval::Month,
        count: 1,
    });
    let periods = tl
        .periods_overlapping(t("2026-09-01T00:00:00Z"), t("2026-12-01T00:00:00Z"))
        .unwrap();
    let shape: Vec<_> = periods
        .iter()
        .map(|p| (p.window.from, p.window.to, p.phase))
        .collect();
    assert_eq!(
        shape,
        vec![
            (t("2026-09-01T00:00:00Z"), t("2026-10-01T00:00:00Z"), 0),
            (t("2026-10-01T00:00:00Z"), t("2026-10-15T00:00:00Z"), 0),
            (t("2026-10-15T00:00:00Z"), t("2026-11-01T00:00:00Z"), 1),
            (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"), 1),
        ]
    );
    assert_eq!(periods[1].full.to, t("2026-11-01T00:00:00Z"));
}

fn two_phases(start: &str, change: &str, second: Interval) -> Timeline {
    let mut tl = timeline(start, Interval::Month, Anchor::Anniversary, UTC);
    tl.phases[0].to = Some(t(change));
    tl.phases.push(PhaseSpan {
        from: t(change),
        to: None,
        interval: second,
        count: 1,
    });
    tl
}

#[test]
fn a_plan_change_inside_a_period_keeps_the_period() {
    let tl = two_phases(
        "2026-11-21T21:55:41Z",
        "2026-12-01T21:55:41.950Z",
        Interval::Month,
    );
    for at in ["2026-11-25T00:00:00Z", "2026-12-05T00:00:00Z"] {
        let current = tl.period_at(t(at)).unwrap().unwrap();
        assert_eq!(
            (current.window.from, current.window.to),
            (t("2026-11-21T21:55:41Z"), t("2026-12-21T21:55:41Z")),
            "at {at}"
        );
    }
    let current = tl.period_at(t("2026-12-05T00:00:00Z")).unwrap().unwrap();
    assert_eq!(current.phase, 1, "the phase in force at the instant");
    assert_eq!(
        tl.next_invoice_date(t("2026-12-05T00:00:00Z")).unwrap(),
        Some(t("2026-12-21T21:55:41Z")),
        "the invoice falls at the period's end, not at the change"
    );
    // Rated in two pieces, each prorated over the whole period.
    let pieces = tl
        .periods_overlapping(current.window.from, current.window.to)
        .unwrap();
    let shape: Vec<_> = pieces
        .iter()
        .map(|p| (p.window.from, p.window.to, p.phase, p.full))
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                t("2026-11-21T21:55:41Z"),
                t("2026-12-01T21:55:41.950Z"),
                0,
                current.window
            ),
            (
                t("2026-12-01T21:55:41.950Z"),
                t("2026-12-21T21:55:41Z"),
                1,
                current.window
            ),
        ]
    );
}

#[test]
fn a_change_to_another_cadence_ends_the_period_at_the_change() {
    let tl = two_phases(
        "2026-11-21T00:00:00Z",
        "2026-12-01T00:00:00Z",
        Interval::Year,
    );
    let before = tl.period_at(t("2026-11-25T00:00:00Z")).unwrap().unwrap();
    assert_eq!(
        (before.window.from, before.window.to),
        (t("2026-11-21T00:00:00Z"), t("2026-12-01T00:00:00Z"))
    );
    let after = tl.period_at(t("2026-12-05T00:00:00Z")).unwrap().unwrap();
    assert_eq!(
        (after.window.from, after.window.to),
        (t("2026-12-01T00:00:00Z"), t("2027-11-21T00:00:00Z"))
    );
}

#[test]
fn a_partial_first_calendar_period_prorates_over_its_calendar_interval() {
    let ny = chrono_tz::America::New_York;
    // Started 2026-10-10 00:00 in New York: October's share is 22 of its 31 days.
    let tl = timeline(
        "2026-10-10T04:00:00Z",
        Interval::Month,
        Anchor::Calendar,
        ny,
    );
    let first = tl.period_at(t("2026-10-20T00:00:00Z")).unwrap().unwrap();
    assert_eq!(
        (first.window.from, first.window.to),
        (t("2026-10-10T04:00:00Z"), t("2026-11-01T04:00:00Z"))
    );
    assert_eq!(
        (first.full.from, first.full.to),
        (t("2026-10-01T04:00:00Z"), t("2026-11-01T04:00:00Z"))
    );
    assert_eq!(first.window.millis() * 31, first.full.millis() * 22);
    // The next one is whole, including November's 25-hour day.
    let second = tl.period_at(t("2026-11-20T00:00:00Z")).unwrap().unwrap();
    assert_eq!(second.full, second.window);
    assert_eq!(second.window.seconds(), (30 * 24 + 1) * 3600);
    // Started exactly on a boundary: whole.
    let whole = timeline(
        "2026-10-01T04:00:00Z",
        Interval::Month,
        Anchor::Calendar,
        ny,
    );
    let first = whole.period_at(t("2026-10-20T00:00:00Z")).unwrap().unwrap();
    assert_eq!(first.full, first.window);
    // Every two months, started mid-March: the first interval is February and March.
    let mut bimonthly = timeline(
        "2027-03-10T05:00:00Z",
        Interval::Month,
        Anchor::Calendar,
        ny,
    );
    bimonthly.phases[0].count = 2;
    let first = bimonthly
        .period_at(t("2027-03-20T00:00:00Z"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.full.from, first.full.to),
        (t("2027-02-01T05:00:00Z"), t("2027-04-01T04:00:00Z"))
    );
}

#[test]
fn anniversaries_on_the_29th_30th_and_31st_clamp_and_come_back() {
    for (start, expected) in [
        (
            "2027-01-29T09:00:00Z",
            [
                "2027-02-28T09:00:00Z",
                "2027-03-29T09:00:00Z",
                "2027-04-29T09:00:00Z",
            ],
        ),
        (
            "2027-01-30T09:00:00Z",
            [
                "2027-02-28T09:00:00Z",
                "2027-03-30T09:00:00Z",
                "2027-04-30T09:00:00Z",
            ],
        ),
        (
            "2027-01-31T09:00:00Z",
            [
                "2027-02-28T09:00:00Z",
                "2027-03-31T09:00:00Z",
                "2027-04-30T09:00:00Z",
            ],
        ),
        (
            "2028-01-31T09:00:00Z",
            [
                "2028-02-29T09:00:00Z",
                "2028-03-31T09:00:00Z",
                "2028-04-30T09:00:00Z",
            ],
        ),
    ] {
        let tl = timeline(start, Interval::Month, Anchor::Anniversary, UTC);
        let ends: Vec<_> = tl
            .periods_overlapping(t(start), t(expected[2]))
            .unwrap()
            .iter()
            .map(|p| p.window.to)
            .collect();
        let expected: Vec<_> = expected.iter().map(|e| t(e)).collect();
        assert_eq!(ends, expected, "from {start}");
    }
}

#[test]
fn too_many_periods_is_an_error() {
    let tl = timeline("2020-01-01T00:00:00Z", Interval::Day, Anchor::Calendar, UTC);
    let err = tl
        .periods_overlapping(t("2020-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"))
        .unwrap_err();
    assert_eq!(err, PeriodError::TooManyPeriods(MAX_PERIODS));
}

fn interval() -> impl Strategy<Value = Interval> {
    prop_oneof![
        Just(Interval::Day),
        Just(Interval::Week),
        Just(Interval::Month),
        Just(Interval::Quarter),
        Just(Interval::Year)
    ]
}

fn zone() -> impl Strategy<Value = Tz> {
    prop_oneof![
        Just(UTC),
        Just(Paris),
        Just(chrono_tz::America::New_York),
        Just(chrono_tz::Australia::Lord_Howe),
        Just(chrono_tz::Asia::Kolkata)
    ]
}

proptest! {
    #[test]
    fn the_period_at_an_instant_contains_it_and_periods_tile(
        interval in interval(), count in 1u32..4, calendar in any::<bool>(), tz in zone(),
        origin in 1_700_000_000i64..1_900_000_000, offset in 0i64..100_000_000,
    ) {
        let anchor = if calendar { Anchor::Calendar } else { Anchor::Anniversary };
        let c = Cadence { interval, count, anchor, tz, origin: DateTime::from_timestamp(origin, 0).unwrap() };
        let at = c.origin + TimeDelta::seconds(offset);
        let (k, window) = c.period_at(at).unwrap();
        prop_assert!(window.contains(at));
        prop_assert_eq!(c.boundary(k + 1).unwrap(), window.to);
        let (_, next) = c.period_at(window.to).unwrap();
        prop_assert_eq!(next.from, window.to, "periods tile without gaps");
        prop_assert!(window.seconds() > 0);
    }
}
