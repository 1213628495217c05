//! Flowglad: `GET /flowglad/api/v1/customers/{externalId}/billing`. The tenant's catalog is
//! the pricing model, a plan is a product, its prices are prices, meters are usage meters;
//! prices count in the currency's minor unit (`unitPrice` 4900 is 49.00 USD). meterhouse keeps
//! no invoices, payment methods or purchases, so those are empty lists. Times are epoch
//! milliseconds; for catalog items `createdAt` and `updatedAt` are the last change.

use crate::http::ApiPath as Path;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{millis, number};
use crate::auth::{Principal, Role};
use crate::billing::money::in_minor_units;
use crate::billing::period::{Anchor, Interval, Status};
use crate::catalog::TenantCatalog;
use crate::domain::meter::Aggregation;
use crate::domain::plan::{Price, PriceType, Timing, UsageModel};
use crate::domain::{Customer, Meter, Plan, Subscription};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::readable_customer;
use crate::readmodel::account::{self, Current};
use crate::readmodel::report::ResolvedSubscription;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(billing))
}

/// What every record of one tenant's answer repeats.
struct Ctx<'c> {
    tenant: &'c str,
    catalog: &'c TenantCatalog,
    /// The plans the caller may see: under a customer key only those of its own
    /// subscriptions (every phase), so the pricing model does not show other deals.
    visible_plans: Option<Vec<&'c str>>,
}

impl Ctx<'_> {
    fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.catalog.plans.values().filter(|plan| {
            self.visible_plans
                .as_ref()
                .is_none_or(|visible| visible.contains(&plan.code.as_str()))
        })
    }

    /// `id`, `createdAt`, `updatedAt`, `livemode`, `organizationId`, `pricingModelId`.
    fn record(&self, id: &str, changed: Option<DateTime<Utc>>) -> serde_json::Map<String, Value> {
        let at = changed.map(millis);
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(id));
        m.insert("createdAt".into(), json!(at));
        m.insert("updatedAt".into(), json!(at));
        m.insert("livemode".into(), json!(true));
        m.insert("organizationId".into(), json!(self.tenant));
        m.insert("pricingModelId".into(), json!(self.tenant));
        m
    }

    fn price(&self, plan: &Plan, price: &Price) -> Value {
        let mut m = self.record(&price.code, self.catalog.changed_at::<Plan>(&plan.code));
        let (unit, interval_count) = interval(plan);
        let minor = |d: rust_decimal::Decimal| number(in_minor_units(d, &plan.currency));
        m.insert("name".into(), json!(price.code));
        m.insert("slug".into(), json!(price.code));
        m.insert("currency".into(), json!(plan.currency));
        m.insert("intervalUnit".into(), json!(unit));
        m.insert("intervalCount".into(), json!(interval_count));
        m.insert(
            "isDefault".into(),
            json!(plan.prices.first() == Some(price)),
        );
        m.insert("active".into(), json!(true));
        match price.kind {
            PriceType::Flat => {
                m.insert("type".into(), json!("subscription"));
                m.insert("unitPrice".into(), minor(price.amount.unwrap_or_default()));
                m.insert("productId".into(), json!(plan.code));
                m.insert("usageMeterId".into(), Value::Null);
                m.insert("usageEventsPerUnit".into(), Value::Null);
                m.insert("trialPeriodDays".into(), json!(plan.trial_days));
            }
            PriceType::Usage => {
                // A package price charges its amount per package of units; the rest per unit
                // past the included ones (the first tier's unit amount for tiered prices).
                let (unit_price, per) = match price.model {
                    Some(UsageModel::Package) => (price.package_amount, price.package_size),
                    _ => (price.overage_unit_amount(), None),
                };
                m.insert("type".into(), json!("usage"));
                m.insert("unitPrice".into(), minor(unit_price.unwrap_or_default()));
                m.insert("productId".into(), Value::Null);
                m.insert("usageMeterId".into(), json!(price.meter));
                m.insert(
                    "usageEventsPerUnit".into(),
                    number(per.unwrap_or(rust_decimal::Decimal::ONE).normalize()),
                );
                m.insert("trialPeriodDays".into(), Value::Null);
            }
        }
        Value::Object(m)
    }

    fn product(&self, plan: &Plan) -> Value {
        let mut m = self.record(&plan.code, self.catalog.changed_at::<Plan>(&plan.code));
        let prices: Vec<Value> = plan.prices.iter().map(|p| self.price(plan, p)).collect();
        m.insert("name".into(), json!(plan.name));
        m.insert("slug".into(), json!(plan.code));
        m.insert("description".into(), Value::Null);
        m.insert("imageURL".into(), Value::Null);
        m.insert("active".into(), json!(true));
        m.insert("default".into(), json!(false));
        m.insert("singularQuantityLabel".into(), Value::Null);
        m.insert("pluralQuantityLabel".into(), Value::Null);
        m.insert(
            "defaultPrice".into(),
            prices.first().cloned().unwrap_or(Value::Null),
        );
        m.insert("prices".into(), json!(prices));
        m.insert("features".into(), json!([]));
        Value::Object(m)
    }

    fn usage_meter(&self, meter: &Meter) -> Value {
        let mut m = self.record(&meter.slug, self.catalog.changed_at::<Meter>(&meter.slug));
        let prices: Vec<Value> = self
            .plans()
            .flat_map(|plan| {
                plan.usage_prices()
                    .filter(|p| p.meter.as_deref() == Some(meter.slug.as_str()))
                    .map(move |p| self.price(plan, p))
            })
            .collect();
        m.insert("name".into(), json!(meter.name));
        m.insert("slug".into(), json!(meter.slug));
        m.insert(
            "aggregationType".into(),
            json!(aggregation_type(meter.aggregation)),
        );
        m.insert("prices".into(), json!(prices));
        Value::Object(m)
    }

    fn pricing_model(&self) -> Value {
        let mut m = self.record(self.tenant, self.catalog.last_changed_at());
        let products: Vec<Value> = self.plans().map(|p| self.product(p)).collect();
        // Under a customer key, only the meters its plans price.
        let meters: Vec<Value> = self
            .catalog
            .meters
            .values()
            .filter(|m| {
                self.visible_plans.is_none()
                    || self.plans().any(|p| {
                        p.usage_prices()
                            .any(|price| price.meter.as_deref() == Some(m.slug.as_str()))
                    })
            })
            .map(|m| self.usage_meter(m))
            .collect();
        m.insert("name".into(), json!(self.tenant));
        m.insert("isDefault".into(), json!(true));
        m.insert("products".into(), json!(products));
        m.insert("usageMeters".into(), json!(meters));
        Value::Object(m)
    }

    fn customer(&self, customer: &Customer) -> Value {
        let mut m = self.record(
            &customer.external_id,
            self.catalog.changed_at::<Customer>(&customer.external_id),
        );
        m.insert("externalId".into(), json!(customer.external_id));
        m.insert("name".into(), json!(customer.name));
        m.insert("email".into(), json!(customer.email));
        m.insert("archived".into(), json!(false));
        for key in [
            "domain",
            "iconURL",
            "logoURL",
            "invoiceNumberBase",
            "userId",
            "billingAddress",
        ] {
            m.insert(key.into(), Value::Null);
        }
        Value::Object(m)
    }

    /// A subscription that has started, with its current period's usage when it has one.
    fn subscription(
        &self,
        subscription: &Subscription,
        current: Option<&Current<'_>>,
        now: DateTime<Utc>,
    ) -> Option<Value> {
        let resolved = ResolvedSubscription::new(self.tenant, self.catalog, subscription).ok()?;
        let timeline = &resolved.timeline;
        let status = match timeline.status_at(now) {
            Status::Scheduled => return None,
            Status::Trialing => "trialing",
            Status::Canceled => "canceled",
            Status::Active if subscription.ends_at.is_some() => "cancellation_scheduled",
            Status::Active => "active",
        };
        let plan_code = subscription.plan_at(now.min(timeline.end.unwrap_or(now)));
        let plan = self.catalog.get::<Plan>(plan_code)?;
        let (unit, count) = interval(plan);
        let period = timeline.period_at(now).ok().flatten();
        let id = &subscription.external_id;
        let mut m = self.record(id, self.catalog.changed_at::<Subscription>(id));
        let added = subscription
            .phases
            .iter()
            .rev()
            .find(|p| p.plan == plan.code && p.from <= now)
            .map_or(subscription.start_date, |p| p.from);
        let items: Vec<Value> = plan
            .prices
            .iter()
            .map(|price| {
                let mut item = self.record(&format!("{id}.{}", price.code), None);
                item.insert("createdAt".into(), json!(millis(added)));
                item.insert("updatedAt".into(), json!(millis(added)));
                let price_json = self.price(plan, price);
                item.insert("subscriptionId".into(), json!(id));
                item.insert("name".into(), json!(price.code));
                item.insert("addedDate".into(), json!(millis(added)));
                item.insert("priceId".into(), json!(price.code));
                item.insert("unitPrice".into(), price_json["unitPrice"].clone());
                item.insert("quantity".into(), json!(1));
                item.insert("type".into(), json!("static"));
                item.insert("externalId".into(), Value::Null);
                item.insert("manuallyCreated".into(), json!(false));
                item.insert("expiredAt".into(), Value::Null);
                item.insert("metadata".into(), Value::Null);
                item.insert("price".into(), price_json);
                Value::Object(item)
            })
            .collect();
        // One balance per meter of the plan in force; after a plan change inside the period,
        // what was used counts every phase's usage of the meter.
        let lines = current.map(|c| c.usage.as_slice()).unwrap_or_default();
        let in_force = current.map(|c| c.plan.code.as_str());
        let balances: Vec<Value> = lines
            .iter()
            .filter(|line| Some(line.plan.as_str()) == in_force)
            .filter_map(|line| {
                let used: rust_decimal::Decimal = lines
                    .iter()
                    .filter(|l| l.meter == line.meter)
                    .map(|l| l.used_units)
                    .sum();
                let meter = self.catalog.get::<Meter>(&line.meter)?;
                let mut b = self.record(&meter.slug, self.catalog.changed_at::<Meter>(&meter.slug));
                b.insert("name".into(), json!(meter.name));
                b.insert("slug".into(), json!(meter.slug));
                b.insert(
                    "aggregationType".into(),
                    json!(aggregation_type(meter.aggregation)),
                );
                // Flowglad's balance is what is left of the grant, negative once usage is past
                // it (unlike `remaining_units`, which stops at 0).
                b.insert(
                    "availableBalance".into(),
                    number((line.included_units - used).normalize()),
                );
                b.insert("subscriptionId".into(), json!(id));
                Some(Value::Object(b))
            })
            .collect();
        let ends = subscription.ends_at;
        m.insert("customerId".into(), json!(subscription.customer));
        m.insert("status".into(), json!(status));
        m.insert("current".into(), json!(current.is_some()));
        m.insert("name".into(), json!(plan.name));
        m.insert("startDate".into(), json!(millis(subscription.start_date)));
        m.insert("interval".into(), json!(unit));
        m.insert("intervalCount".into(), json!(count));
        m.insert("renews".into(), json!(true));
        m.insert(
            "priceId".into(),
            json!(plan.prices.first().map(|p| &p.code)),
        );
        m.insert(
            "currentBillingPeriodStart".into(),
            json!(period.map(|p| millis(p.window.from))),
        );
        m.insert(
            "currentBillingPeriodEnd".into(),
            json!(period.map(|p| millis(p.window.to))),
        );
        m.insert("trialEnd".into(), json!(timeline.trial_end.map(millis)));
        m.insert(
            "billingCycleAnchorDate".into(),
            json!(match subscription.billing_anchor {
                Anchor::Anniversary => Some(millis(
                    timeline.trial_end.unwrap_or(subscription.start_date)
                )),
                Anchor::Calendar => None,
            }),
        );
        m.insert(
            "canceledAt".into(),
            json!(ends.filter(|&e| e <= now).map(millis)),
        );
        m.insert(
            "cancelScheduledAt".into(),
            json!(ends.filter(|&e| e > now).map(millis)),
        );
        m.insert(
            "runBillingAtPeriodStart".into(),
            json!(
                plan.prices
                    .iter()
                    .any(|p| p.kind == PriceType::Flat && p.timing != Some(Timing::Arrears))
            ),
        );
        m.insert("isFreePlan".into(), json!(plan.prices.is_empty()));
        for key in [
            "cancellationReason",
            "replacedBySubscriptionId",
            "defaultPaymentMethodId",
            "backupPaymentMethodId",
            "doNotCharge",
            "metadata",
        ] {
            m.insert(key.into(), Value::Null);
        }
        m.insert("subscriptionItems".into(), json!(items));
        m.insert(
            "experimental".into(),
            json!({"featureItems": [], "usageMeterBalances": balances}),
        );
        Some(Value::Object(m))
    }
}

/// Flowglad's interval unit and count; a quarter is three months.
fn interval(plan: &Plan) -> (&'static str, u32) {
    match plan.interval {
        Interval::Day => ("day", plan.interval_count),
        Interval::Week => ("week", plan.interval_count),
        Interval::Month => ("month", plan.interval_count),
        Interval::Quarter => ("month", plan.interval_count * 3),
        Interval::Year => ("year", plan.interval_count),
    }
}

/// Flowglad's two aggregation types where they match; meterhouse's own name otherwise.
fn aggregation_type(aggregation: Aggregation) -> &'static str {
    match aggregation {
        Aggregation::Sum => "sum",
        Aggregation::UniqueCount => "count_distinct_properties",
        Aggregation::Count => "count",
        Aggregation::Max => "max",
        Aggregation::Min => "min",
        Aggregation::Latest => "latest",
        Aggregation::WeightedSum => "weighted_sum",
    }
}

/// A customer's billing: the customer, its subscriptions (current ones with usage meter
/// balances: included units left), and the pricing model.
#[utoipa::path(get, path = "/flowglad/api/v1/customers/{externalId}/billing", tag = "compat",
    params(("externalId" = String, Path, description = "the customer's external id")),
    responses((status = 200, description = "{customer, subscriptions, currentSubscriptions, currentSubscription, catalog, pricingModel, invoices: [], paymentMethods: [], purchases: [], billingPortalUrl: null}"),
              (status = 404, description = "customer_not_found")))]
async fn billing(
    State(state): State<AppState>,
    principal: Principal,
    Path(external_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = readable_customer(&state, &principal, &external_id)?;
    let now = Utc::now();
    let current = account::current_subscriptions(
        &state.usage,
        &principal.tenant,
        &catalog,
        &external_id,
        now,
    )
    .await?;
    let mut subscriptions: Vec<&Subscription> = catalog
        .subscriptions
        .values()
        .filter(|s| s.customer == external_id)
        .collect();
    let ctx = Ctx {
        tenant: &principal.tenant,
        catalog: &catalog,
        visible_plans: (principal.role == Role::Customer).then(|| {
            subscriptions
                .iter()
                .flat_map(|s| s.phases.iter().map(|p| p.plan.as_str()))
                .collect()
        }),
    };
    subscriptions.sort_by_key(|s| std::cmp::Reverse(s.start_date));
    let details: Vec<Value> = subscriptions
        .iter()
        .filter_map(|s| {
            let mine = current
                .iter()
                .find(|c| c.subscription.external_id == s.external_id);
            ctx.subscription(s, mine, now)
        })
        .collect();
    let current_details: Vec<Value> = details
        .iter()
        .filter(|d| d["current"] == json!(true))
        .cloned()
        .collect();
    let customer = catalog
        .get::<Customer>(&external_id)
        .map(|c| ctx.customer(c))
        .unwrap_or(Value::Null);
    let pricing_model = ctx.pricing_model();
    Ok(Json(json!({
        "customer": customer,
        "subscriptions": details,
        "currentSubscriptions": current_details,
        "currentSubscription": current_details.first(),
        "catalog": pricing_model,
        "pricingModel": pricing_model,
        "invoices": [],
        "paymentMethods": [],
        "purchases": [],
        "billingPortalUrl": null,
    })))
}
