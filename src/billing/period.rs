//! Billing windows. A [`Cadence`] says how periods repeat (interval × count, anniversary or
//! calendar, in the customer's timezone); a [`Timeline`] adds what a subscription adds: its
//! start, trial, plan phases and cancellation. All windows are half-open `[from, to)` in UTC.

use chrono::{
    DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Interval {
    /// Months per interval for month-based intervals; `None` for day-based ones.
    fn months(self) -> Option<u32> {
        match self {
            Self::Month => Some(1),
            Self::Quarter => Some(3),
            Self::Year => Some(12),
            Self::Day | Self::Week => None,
        }
    }

    fn days(self) -> u64 {
        match self {
            Self::Week => 7,
            _ => 1,
        }
    }

    /// A rough length, only to start the search for a period.
    fn approx_seconds(self) -> i64 {
        match self {
            Self::Day => 86_400,
            Self::Week => 604_800,
            Self::Month => 2_629_746,
            Self::Quarter => 7_889_238,
            Self::Year => 31_556_952,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// Periods start on the origin's day and time (clamped to month ends).
    Anniversary,
    /// Periods align to the interval's calendar boundaries; the first is partial.
    Calendar,
}

/// A half-open window `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }

    pub fn seconds(&self) -> i64 {
        (self.to - self.from).num_seconds()
    }

    pub fn millis(&self) -> i64 {
        (self.to - self.from).num_milliseconds()
    }

    /// The part of `self` inside `other`, if any.
    pub fn intersect(&self, other: &Window) -> Option<Window> {
        let (from, to) = (self.from.max(other.from), self.to.min(other.to));
        (from < to).then_some(Window { from, to })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("the date falls outside the supported calendar")]
    OutOfRange,
    #[error("the window spans more than {0} billing periods")]
    TooManyPeriods(usize),
}

/// How billing periods repeat from an origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub interval: Interval,
    /// Intervals per period, at least 1.
    pub count: u32,
    pub anchor: Anchor,
    pub tz: Tz,
    pub origin: DateTime<Utc>,
}

/// The UTC instant of a local time; a time skipped by a DST change moves forward to the first
/// valid instant after the gap, an ambiguous one takes its first occurrence.
fn to_utc(tz: Tz, local: NaiveDateTime) -> Result<DateTime<Utc>, PeriodError> {
    for shift_minutes in [0, 30, 60, 90, 120] {
        let candidate = local + TimeDelta::minutes(shift_minutes);
        if let Some(t) = tz.from_local_datetime(&candidate).earliest() {
            return Ok(t.with_timezone(&Utc));
        }
    }
    Err(PeriodError::OutOfRange)
}

impl Cadence {
    fn step(&self) -> u32 {
        self.count.max(1)
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    /// The `k`-th period boundary; `boundary(0)` is the origin.
    pub fn boundary(&self, k: i64) -> Result<DateTime<Utc>, PeriodError> {
        if k == 0 {
            return Ok(self.origin);
        }
        match self.anchor {
            Anchor::Anniversary => {
                self.shifted(self.local(self.origin), k * i64::from(self.step()))
            }
            Anchor::Calendar => {
                let (first, exact) = self.natural_index(self.local(self.origin))?;
                let first = if exact {
                    first + i64::from(self.step())
                } else {
                    first + 1
                };
                self.natural(first + (k - 1) * i64::from(self.step()))
            }
        }
    }

    /// `local` moved by `intervals` whole intervals; month ends clamp, computed from the
    /// origin each time so that Jan 31 → Feb 28 → Mar 31.
    fn shifted(&self, local: NaiveDateTime, intervals: i64) -> Result<DateTime<Utc>, PeriodError> {
        let date = match self.interval.months() {
            Some(months) => {
                let total = u32::try_from(intervals * i64::from(months))
                    .map_err(|_| PeriodError::OutOfRange)?;
                local.date().checked_add_months(Months::new(total))
            }
            None => {
                let days = u64::try_from(intervals).map_err(|_| PeriodError::OutOfRange)?
                    * self.interval.days();
                local.date().checked_add_days(Days::new(days))
            }
        }
        .ok_or(PeriodError::OutOfRange)?;
        to_utc(self.tz, date.and_time(local.time()))
    }

    /// The calendar boundary at or before `local`, as an index, and whether it is exactly `local`.
    fn natural_index(&self, local: NaiveDateTime) -> Result<(i64, bool), PeriodError> {
        let date = local.date();
        let month_index = i64::from(date.year()) * 12 + i64::from(date.month0());
        let index = match self.interval {
            Interval::Day => i64::from(date.num_days_from_ce()),
            Interval::Week => i64::from(date.num_days_from_ce() - 1).div_euclid(7),
            Interval::Month => month_index,
            Interval::Quarter => month_index.div_euclid(3),
            Interval::Year => i64::from(date.year()),
        };
        Ok((index, self.natural(index)? == to_utc(self.tz, local)?))
    }

    /// The UTC instant of calendar boundary `index` (local midnight of its first day).
    fn natural(&self, index: i64) -> Result<DateTime<Utc>, PeriodError> {
        let month_start = |months: i64| {
            let year = i32::try_from(months.div_euclid(12)).ok()?;
            NaiveDate::from_ymd_opt(year, u32::try_from(months.rem_euclid(12)).ok()? + 1, 1)
        };
        let days_from_ce =
            |days: i64| NaiveDate::from_num_days_from_ce_opt(i32::try_from(days).ok()?);
        let date = match self.interval {
            Interval::Day => days_from_ce(index),
            // 0001-01-01 is a Monday: weeks start on Mondays.
            Interval::Week => days_from_ce(index * 7 + 1),
            Interval::Month => month_start(index),
            Interval::Quarter => month_start(index * 3),
            Interval::Year => month_start(index * 12),
        }
        .ok_or(PeriodError::OutOfRange)?;
        to_utc(
            self.tz,
            date.and_hms_opt(0, 0, 0).ok_or(PeriodError::OutOfRange)?,
        )
    }

    /// The full interval that period `k` (whose window is `window`) is a part of, which flat
    /// fees prorate over: the window itself, except for a calendar-anchored first period that
    /// starts between boundaries, which is part of the calendar interval it starts in (in the
    /// customer's timezone: October for a subscription started on October 10th).
    pub fn nominal(&self, k: i64, window: Window) -> Result<Window, PeriodError> {
        if k != 0 || self.anchor != Anchor::Calendar {
            return Ok(window);
        }
        let (index, exact) = self.natural_index(self.local(self.origin))?;
        if exact {
            return Ok(window);
        }
        Ok(Window {
            from: self.natural(index + 1 - i64::from(self.step()))?,
            to: window.to,
        })
    }

    /// The period containing `t`, for `t` at or after the origin.
    pub fn period_at(&self, t: DateTime<Utc>) -> Result<(i64, Window), PeriodError> {
        debug_assert!(t >= self.origin);
        let approx = self.interval.approx_seconds() * i64::from(self.step());
        let mut k = ((t - self.origin).num_seconds() / approx).max(0);
        while k > 0 && self.boundary(k)? > t {
            k -= 1;
        }
        while self.boundary(k + 1)? <= t {
            k += 1;
        }
        Ok((
            k,
            Window {
                from: self.boundary(k)?,
                to: self.boundary(k + 1)?,
            },
        ))
    }
}

/// One plan phase of a subscription: from `from` until `to` (or for good).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpan {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
    pub interval: Interval,
    pub count: u32,
}

/// Everything that shapes a subscription's billing periods.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub start: DateTime<Utc>,
    pub anchor: Anchor,
    pub tz: Tz,
    pub trial_end: Option<DateTime<Utc>>,
    /// When the subscription ends (cancellation), if it does.
    pub end: Option<DateTime<Utc>>,
    /// In order, contiguous, the first starting at `start`.
    pub phases: Vec<PhaseSpan>,
}

/// One billing period of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    #[serde(flatten)]
    pub window: Window,
    /// Index into `Timeline::phases`.
    pub phase: usize,
    pub trial: bool,
    /// The full period this one was cut from (by a phase change, a cancellation, or a calendar
    /// anchor's first period starting between boundaries); flat fees prorate by `window` over
    /// `full`, in elapsed time (a 25-hour day of a DST change counts 25 hours).
    #[serde(skip)]
    pub full: Window,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Trialing,
    Active,
    Canceled,
}

/// At most this many periods in one answer (a year of daily periods fits).
pub const MAX_PERIODS: usize = 1_000;

impl Timeline {
    pub fn status_at(&self, t: DateTime<Utc>) -> Status {
        if t < self.start {
            Status::Scheduled
        } else if self.end.is_some_and(|end| t >= end) {
            Status::Canceled
        } else if self.trial_end.is_some_and(|trial_end| t < trial_end) {
            Status::Trialing
        } else {
            Status::Active
        }
    }

    fn phase_at(&self, t: DateTime<Utc>) -> usize {
        self.phases.iter().rposition(|p| p.from <= t).unwrap_or(0)
    }

    /// The billing period containing `t`; `None` before the start or after the end.
    ///
    /// A plan change inside a period keeps the period: its window runs over every phase whose
    /// piece was cut from the same full period (same cadence), so the current period of a
    /// subscription that changed plan today still starts where it started. A change to a plan
    /// of another cadence ends the period at the change. `phase` is the phase in force at `t`.
    pub fn period_at(&self, t: DateTime<Utc>) -> Result<Option<Period>, PeriodError> {
        let Some(piece) = self.piece_at(t)? else {
            return Ok(None);
        };
        let mut window = piece.window;
        while let Some(before) = self.piece_ending_at(window.from)? {
            if before.full != piece.full || before.trial != piece.trial {
                break;
            }
            window.from = before.window.from;
        }
        while let Some(after) = self.piece_at(window.to)? {
            if after.full != piece.full
                || after.trial != piece.trial
                || after.window.to <= window.to
            {
                break;
            }
            window.to = after.window.to;
        }
        Ok(Some(Period { window, ..piece }))
    }

    /// The piece (see [`Self::periods_overlapping`]) that ends at `t`, if one does.
    fn piece_ending_at(&self, t: DateTime<Utc>) -> Result<Option<Period>, PeriodError> {
        if t <= self.start {
            return Ok(None);
        }
        let piece = self.piece_at(t - TimeDelta::nanoseconds(1))?;
        Ok(piece.filter(|p| p.window.to == t))
    }

    /// The piece of a billing period containing `t`: the period cut by the phase in force at
    /// `t`, the start and the end.
    fn piece_at(&self, t: DateTime<Utc>) -> Result<Option<Period>, PeriodError> {
        if t < self.start || self.end.is_some_and(|end| t >= end) || self.phases.is_empty() {
            return Ok(None);
        }
        let phase = self.phase_at(t);
        let limit = Window {
            from: self.start,
            to: self.end.unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        if let Some(trial_end) = self.trial_end.filter(|&trial_end| t < trial_end) {
            let full = Window {
                from: self.start,
                to: trial_end,
            };
            let window = full.intersect(&limit).unwrap_or(full);
            return Ok(Some(Period {
                window,
                phase,
                trial: true,
                full,
            }));
        }
        let span = &self.phases[phase];
        let cadence = Cadence {
            interval: span.interval,
            count: span.count,
            anchor: self.anchor,
            tz: self.tz,
            origin: self.trial_end.unwrap_or(self.start),
        };
        let (k, period) = cadence.period_at(t)?;
        let full = cadence.nominal(k, period)?;
        let phase_window = Window {
            from: span.from,
            to: span.to.unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        let window = period
            .intersect(&phase_window)
            .and_then(|w| w.intersect(&limit))
            .ok_or(PeriodError::OutOfRange)?;
        Ok(Some(Period {
            window,
            phase,
            trial: false,
            full,
        }))
    }

    /// The pieces of billing periods overlapping `[from, to)`, in order, each whole (not cut to
    /// the window): a billing period is one piece, or one per phase when the plan changed
    /// inside it; each piece is rated with its phase's plan.
    pub fn periods_overlapping(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Period>, PeriodError> {
        let mut periods = Vec::new();
        let mut t = from.max(self.start);
        while t < to {
            let Some(period) = self.piece_at(t)? else {
                break;
            };
            if periods.len() == MAX_PERIODS {
                return Err(PeriodError::TooManyPeriods(MAX_PERIODS));
            }
            periods.push(period);
            t = period.window.to;
        }
        Ok(periods)
    }

    /// When the next invoice falls after `t`: the end of the period containing `t` (the start
    /// for a subscription not yet started); `None` once it has ended.
    pub fn next_invoice_date(
        &self,
        t: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, PeriodError> {
        if t < self.start {
            return Ok(Some(self.start));
        }
        Ok(self.period_at(t)?.map(|p| p.window.to))
    }
}

#[cfg(test)]
mod tests;
