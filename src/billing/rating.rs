//! Rating: a quantity and a price model in, a charge with its breakdown out. Pure and exact:
//! `rust_decimal` throughout, checked arithmetic, no rounding (totals are rounded once, by the
//! caller, with `money::round_to_currency`).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One tier of a graduated or volume price. `up_to` is inclusive; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(deserialize_with = "crate::billing::decimal::option")]
    pub up_to: Option<Decimal>,
    #[serde(deserialize_with = "crate::billing::decimal::required")]
    pub unit_amount: Decimal,
    #[serde(default, deserialize_with = "crate::billing::decimal::required")]
    pub flat_amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    Up,
    Down,
}

/// How a billable quantity becomes an amount.
#[derive(Debug, Clone, Copy)]
pub enum Model<'a> {
    PerUnit {
        unit_amount: Decimal,
    },
    /// Units are sold in packages of `size`; a started package is charged (`Up`) or not (`Down`).
    Package {
        size: Decimal,
        amount: Decimal,
        rounding: Rounding,
    },
    /// Each tier prices the units that fall in it, plus its flat amount once if any do.
    Graduated(&'a [Tier]),
    /// The tier that holds the total prices all units, plus its flat amount.
    Volume(&'a [Tier]),
    /// `rate` percent of the billable quantity (a payment volume, say), plus `fixed_amount` for
    /// each event past the first `free_events`.
    Percentage {
        rate: Decimal,
        fixed_amount: Decimal,
        free_events: u64,
    },
    /// Each event priced at its own unit amount (`dynamic`): the measured amounts of the
    /// window (or group), less the share of its first included units.
    Dynamic(DynamicAmounts),
}

/// What a `dynamic` price measured over a window (or one group of it). A price's terms carry
/// zeros; the report fills them in per group before rating.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DynamicAmounts {
    /// Σ value × unit amount over the window's samples.
    pub priced: Decimal,
    /// What the first included units cost at their events' unit amounts
    /// ([`included_share`]).
    pub included: Decimal,
}

/// One sample of a `dynamic` price, in the order events are counted against included units
/// (timestamp, then event id).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PricedSample {
    pub value: Decimal,
    pub unit_amount: Decimal,
}

/// What the first `included` units of `samples` (in order) cost at their own unit amounts: an
/// event that crosses the limit contributes its units below it only. The included units are
/// free: a dynamic charge is the window's priced amount less this.
pub fn included_share(
    samples: impl IntoIterator<Item = PricedSample>,
    included: Decimal,
) -> Result<Decimal, RatingError> {
    let mut left = included.max(Decimal::ZERO);
    let mut share = Decimal::ZERO;
    for sample in samples {
        if left <= Decimal::ZERO {
            break;
        }
        let free = sample.value.max(Decimal::ZERO).min(left);
        share = add(share, mul(free, sample.unit_amount)?)?;
        left -= free;
    }
    Ok(share)
}

/// The part of a charge that one tier contributed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TierLine {
    pub from: Decimal,
    pub up_to: Option<Decimal>,
    pub quantity: Decimal,
    pub amount: Decimal,
}

/// A charge at full precision, with how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    pub quantity: Decimal,
    pub included_units: Decimal,
    pub billable_quantity: Decimal,
    pub amount: Decimal,
    pub tiers: Vec<TierLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("the amount overflows 28 significant digits")]
    Overflow,
    #[error("a package price needs a package_size above zero")]
    ZeroPackage,
    #[error("a tiered price needs at least one tier")]
    NoTiers,
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    a.checked_mul(b).ok_or(RatingError::Overflow)
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    a.checked_add(b).ok_or(RatingError::Overflow)
}

/// Rates `quantity` after taking `included` free units off it (never below zero).
pub fn rate(
    model: &Model<'_>,
    quantity: Decimal,
    events: u64,
    included: Decimal,
) -> Result<Charge, RatingError> {
    let billable = (quantity - included.max(Decimal::ZERO)).max(Decimal::ZERO);
    let (amount, tiers) = match *model {
        Model::Percentage {
            rate,
            fixed_amount,
            free_events,
        } => {
            let share = mul(billable, rate)?
                .checked_div(Decimal::ONE_HUNDRED)
                .ok_or(RatingError::Overflow)?;
            let charged_events = Decimal::from(events.saturating_sub(free_events));
            (add(share, mul(charged_events, fixed_amount)?)?, Vec::new())
        }
        Model::PerUnit { unit_amount } => (mul(billable, unit_amount)?, Vec::new()),
        Model::Dynamic(amounts) => (
            amounts
                .priced
                .checked_sub(amounts.included)
                .ok_or(RatingError::Overflow)?,
            Vec::new(),
        ),
        Model::Package {
            size,
            amount,
            rounding,
        } => (package(billable, size, amount, rounding)?, Vec::new()),
        Model::Graduated(tiers) => graduated(billable, tiers)?,
        Model::Volume(tiers) => volume(billable, tiers)?,
    };
    Ok(Charge {
        quantity,
        included_units: included,
        billable_quantity: billable,
        amount,
        tiers,
    })
}

fn package(
    billable: Decimal,
    size: Decimal,
    amount: Decimal,
    rounding: Rounding,
) -> Result<Decimal, RatingError> {
    if size <= Decimal::ZERO {
        return Err(RatingError::ZeroPackage);
    }
    let packages = billable.checked_div(size).ok_or(RatingError::Overflow)?;
    let packages = match rounding {
        Rounding::Up => packages.ceil(),
        Rounding::Down => packages.floor(),
    };
    mul(packages, amount)
}

fn graduated(billable: Decimal, tiers: &[Tier]) -> Result<(Decimal, Vec<TierLine>), RatingError> {
    if tiers.is_empty() {
        return Err(RatingError::NoTiers);
    }
    let mut lines = Vec::with_capacity(tiers.len());
    let mut total = Decimal::ZERO;
    let mut from = Decimal::ZERO;
    let mut remaining = billable;
    for tier in tiers {
        let in_tier = match tier.up_to {
            Some(up_to) => remaining.min((up_to - from).max(Decimal::ZERO)),
            None => remaining,
        };
        let amount = if in_tier > Decimal::ZERO {
            add(mul(in_tier, tier.unit_amount)?, tier.flat_amount)?
        } else {
            Decimal::ZERO
        };
        total = add(total, amount)?;
        lines.push(TierLine {
            from,
            up_to: tier.up_to,
            quantity: in_tier,
            amount,
        });
        remaining -= in_tier;
        match tier.up_to {
            Some(up_to) => from = up_to,
            None => break,
        }
    }
    Ok((total, lines))
}

fn volume(billable: Decimal, tiers: &[Tier]) -> Result<(Decimal, Vec<TierLine>), RatingError> {
    let mut from = Decimal::ZERO;
    for (i, tier) in tiers.iter().enumerate() {
        let holds = tier.up_to.is_none_or(|up_to| billable <= up_to) || i + 1 == tiers.len();
        if holds {
            let amount = if billable > Decimal::ZERO {
                add(mul(billable, tier.unit_amount)?, tier.flat_amount)?
            } else {
                Decimal::ZERO
            };
            return Ok((
                amount,
                vec![TierLine {
                    from,
                    up_to: tier.up_to,
                    quantity: billable,
                    amount,
                }],
            ));
        }
        from = tier.up_to.unwrap_or(from);
    }
    Err(RatingError::NoTiers)
}

/// A price's charge over several groups: each group rated on its own (with its own included
/// units), their sum clamped to `[minimum, maximum]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupedCharge<G> {
    /// The sum of the groups, clamped.
    pub amount: Decimal,
    /// The sum before clamping.
    pub groups_amount: Decimal,
    pub groups: Vec<(G, Charge)>,
}

pub fn rate_groups<G>(
    model: &Model<'_>,
    included: Decimal,
    groups: impl IntoIterator<Item = (G, Decimal, u64)>,
    minimum: Option<Decimal>,
    maximum: Option<Decimal>,
) -> Result<GroupedCharge<G>, RatingError> {
    let groups = groups
        .into_iter()
        .map(|(group, quantity, events)| (group, *model, quantity, events));
    rate_each_group(included, groups, minimum, maximum)
}

/// [`rate_groups`] where each group brings its own model (a `dynamic` price's measured
/// amounts).
pub fn rate_each_group<'a, G>(
    included: Decimal,
    groups: impl IntoIterator<Item = (G, Model<'a>, Decimal, u64)>,
    minimum: Option<Decimal>,
    maximum: Option<Decimal>,
) -> Result<GroupedCharge<G>, RatingError> {
    let mut rated = Vec::new();
    let mut sum = Decimal::ZERO;
    for (group, model, quantity, events) in groups {
        let charge = rate(&model, quantity, events, included)?;
        sum = add(sum, charge.amount)?;
        rated.push((group, charge));
    }
    Ok(GroupedCharge {
        amount: clamp(sum, minimum, maximum),
        groups_amount: sum,
        groups: rated,
    })
}

/// `amount` raised to `minimum` and capped at `maximum`, where given.
pub fn clamp(amount: Decimal, minimum: Option<Decimal>, maximum: Option<Decimal>) -> Decimal {
    let raised = minimum.map_or(amount, |m| amount.max(m));
    maximum.map_or(raised, |m| raised.min(m))
}

/// A flat fee for a period of which the subscription is active `active` out of `period` (both
/// in one unit of time); the full fee unless `prorate`.
pub fn flat_fee(
    amount: Decimal,
    prorate: bool,
    active: i64,
    period: i64,
) -> Result<Decimal, RatingError> {
    if !prorate || period <= 0 || active >= period {
        return Ok(amount);
    }
    // Multiply first: 30 x 10 / 30 is exactly 10, 30 x (10 / 30) is not.
    mul(amount, Decimal::from(active.max(0)))?
        .checked_div(Decimal::from(period))
        .ok_or(RatingError::Overflow)
}

#[cfg(test)]
mod tests;
