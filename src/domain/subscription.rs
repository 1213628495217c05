//! Subscriptions (docs/api.md "Subscriptions"): a customer on a plan from a start date, with plan
//! phases (changes), a trial from the first plan, and an end once canceled.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::customer::Customer;
use super::plan::{KEY_RULE, Plan, is_key};
use crate::billing::period::{Anchor, PeriodError, PhaseSpan, Timeline};

/// What a client sends to create or replace a subscription.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    pub external_id: String,
    pub customer: String,
    pub plan: String,
    /// Default: now.
    #[serde(default)]
    pub start_date: Option<DateTime<Utc>>,
    #[serde(default = "anniversary")]
    pub billing_anchor: Anchor,
}

fn anniversary() -> Anchor {
    Anchor::Anniversary
}

/// A plan from `from` on (until the next phase, if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub plan: String,
    pub from: DateTime<Utc>,
}

/// A subscription as stored: the input plus its phases and end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub external_id: String,
    pub customer: String,
    /// The plan of the first phase; see `phases` for changes.
    pub plan: String,
    pub start_date: DateTime<Utc>,
    pub billing_anchor: Anchor,
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
}

impl SubscriptionInput {
    pub fn validate(&self) -> Result<(), String> {
        if !is_key(&self.external_id) {
            return Err(format!("external_id: {KEY_RULE}"));
        }
        Ok(())
    }

    pub fn into_subscription(self, now: DateTime<Utc>) -> Subscription {
        let start_date = self.start_date.unwrap_or(now);
        Subscription {
            phases: vec![Phase {
                plan: self.plan.clone(),
                from: start_date,
            }],
            external_id: self.external_id,
            customer: self.customer,
            plan: self.plan,
            start_date,
            billing_anchor: self.billing_anchor,
            ends_at: None,
        }
    }
}

impl Subscription {
    /// The plan code in force at `t` (the first plan before the start).
    pub fn plan_at(&self, t: DateTime<Utc>) -> &str {
        self.phases
            .iter()
            .rev()
            .find(|p| p.from <= t)
            .or(self.phases.first())
            .map_or(self.plan.as_str(), |p| p.plan.as_str())
    }

    /// The billing timeline, given the customer and a way to find plans by code.
    pub fn timeline<'p>(
        &self,
        customer: &Customer,
        plan: impl Fn(&str) -> Option<&'p Plan>,
    ) -> Result<Timeline, String> {
        let mut phases = Vec::with_capacity(self.phases.len());
        for (i, phase) in self.phases.iter().enumerate() {
            let p = plan(&phase.plan)
                .ok_or_else(|| format!("plan '{}' of phase {i} no longer exists", phase.plan))?;
            let to = self.phases.get(i + 1).map(|next| next.from);
            phases.push(PhaseSpan {
                from: phase.from,
                to,
                interval: p.interval,
                count: p.interval_count,
            });
        }
        let first =
            plan(&self.plan).ok_or_else(|| format!("plan '{}' no longer exists", self.plan))?;
        let trial_end = (first.trial_days > 0)
            .then(|| self.start_date + TimeDelta::days(i64::from(first.trial_days)));
        Ok(Timeline {
            start: self.start_date,
            anchor: self.billing_anchor,
            tz: customer.tz(),
            trial_end,
            end: self.ends_at,
            phases,
        })
    }

    /// Ends the subscription at `at` (no earlier than its start).
    pub fn cancel(&mut self, at: DateTime<Utc>) {
        self.ends_at = Some(at.max(self.start_date));
        let end = self.ends_at;
        self.phases
            .retain(|p| Some(p.from) < end || p.from == self.start_date);
    }

    /// Moves to `plan` from `at`: phases from `at` on are replaced by the new one.
    pub fn change_plan(&mut self, plan: &str, at: DateTime<Utc>) {
        let at = at.max(self.start_date);
        self.phases.retain(|p| p.from < at);
        self.phases.push(Phase {
            plan: plan.to_owned(),
            from: at,
        });
        if self.phases.len() == 1 {
            self.plan = plan.to_owned();
        }
    }
}

/// When a cancellation or plan change given as `period_end`, `now` or a timestamp takes effect.
pub fn effective_at(
    spec: &str,
    now: DateTime<Utc>,
    timeline: &Timeline,
) -> Result<DateTime<Utc>, String> {
    match spec {
        "now" => Ok(now),
        "period_end" => match timeline.period_at(now.max(timeline.start)) {
            Ok(Some(period)) => Ok(period.window.to),
            Ok(None) => Ok(timeline.end.unwrap_or(timeline.start)),
            Err(PeriodError::OutOfRange) | Err(PeriodError::TooManyPeriods(_)) => {
                Err("at: the current period is out of range".into())
            }
        },
        other => DateTime::parse_from_rfc3339(other)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| "at: 'period_end', 'now' or an RFC 3339 timestamp".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sub() -> Subscription {
        SubscriptionInput {
            external_id: "sub_1".into(),
            customer: "c".into(),
            plan: "pro".into(),
            start_date: Some(t("2026-11-05T13:00:00Z")),
            billing_anchor: Anchor::Anniversary,
        }
        .into_subscription(t("2026-11-21T00:00:00Z"))
    }

    #[test]
    fn a_plan_change_keeps_past_phases_and_replaces_later_ones() {
        let mut s = sub();
        s.change_plan("scale", t("2026-12-05T13:00:00Z"));
        s.change_plan("max", t("2026-11-25T00:00:00Z"));
        let phases: Vec<_> = s.phases.iter().map(|p| (p.plan.as_str(), p.from)).collect();
        assert_eq!(
            phases,
            vec![
                ("pro", t("2026-11-05T13:00:00Z")),
                ("max", t("2026-11-25T00:00:00Z"))
            ]
        );
        assert_eq!(s.plan_at(t("2026-11-20T00:00:00Z")), "pro");
        assert_eq!(s.plan_at(t("2026-11-26T00:00:00Z")), "max");
    }

    #[test]
    fn cancelling_drops_phases_that_would_start_after_the_end() {
        let mut s = sub();
        s.change_plan("scale", t("2026-12-05T13:00:00Z"));
        s.cancel(t("2026-11-30T00:00:00Z"));
        assert_eq!(s.phases.len(), 1);
        assert_eq!(s.ends_at, Some(t("2026-11-30T00:00:00Z")));
        s.cancel(t("2020-01-01T00:00:00Z"));
        assert_eq!(s.ends_at, Some(s.start_date), "never before the start");
    }
}
