//! Usage alerts and the webhook endpoints they are sent to.
//!
//! An [`Alert`] watches one subscription, or every subscription of a plan: a price's quantity or
//! amount, or the subscription's total amount, over each billing period. It fires once per
//! subscription and period, the moment the value reaches its threshold. A [`WebhookEndpoint`]
//! receives what fires, signed with its secret.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::plan::{KEY_RULE, is_key};

/// What an alert compares with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// A price's quantity over the period.
    Quantity,
    /// A price's amount, or (no price) the subscription's total, over the period.
    Amount,
}

/// An alert as stored: the request, its metric resolved and the moment it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub code: String,
    /// The one subscription watched; or `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// Every subscription of this plan is watched (in the periods it is on the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// A usage price's code; none: the subscription's total amount.
    #[serde(default)]
    pub price: Option<String>,
    /// Default: `quantity` with a price, `amount` without.
    #[serde(default)]
    pub metric: Option<AlertMetric>,
    /// Fires when the value reaches it (a decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Decimal>,
    /// Or: fires when the price's quantity reaches this percent of its included units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_percent_of_included: Option<Decimal>,
    /// Set by the service.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

impl Alert {
    /// The metric, `quantity` with a price and `amount` without unless said.
    pub fn metric(&self) -> AlertMetric {
        self.metric.unwrap_or(if self.price.is_some() {
            AlertMetric::Quantity
        } else {
            AlertMetric::Amount
        })
    }

    /// Checks the document alone; the catalog checks what it refers to. Errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        if !is_key(&self.code) {
            return Err(format!("code: {KEY_RULE}"));
        }
        match (&self.subscription, &self.plan) {
            (Some(_), Some(_)) | (None, None) => {
                return Err("subscription: give either subscription or plan (exactly one)".into());
            }
            _ => {}
        }
        if self.price.as_deref().is_some_and(|p| !is_key(p)) {
            return Err(format!("price: {KEY_RULE}"));
        }
        let metric = self.metric();
        if metric == AlertMetric::Quantity && self.price.is_none() {
            return Err(
                "price: required for the quantity metric (quantities of different meters do not add up)"
                    .into(),
            );
        }
        match (self.threshold, self.threshold_percent_of_included) {
            (Some(_), Some(_)) | (None, None) => Err(
                "threshold: give either threshold or threshold_percent_of_included (exactly one)"
                    .into(),
            ),
            (Some(t), None) if t <= Decimal::ZERO => {
                Err("threshold: must be a positive decimal string, as \"1000\"".into())
            }
            (None, Some(p)) if p <= Decimal::ZERO => Err(
                "threshold_percent_of_included: must be a positive decimal string, as \"80\""
                    .into(),
            ),
            (None, Some(_)) if metric != AlertMetric::Quantity => Err(
                "threshold_percent_of_included: a percent of included units watches the quantity \
                 metric; use threshold for amounts"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The value this alert fires at, for a price including `included` units.
    pub fn threshold_for(&self, included: Decimal) -> Option<Decimal> {
        match (self.threshold, self.threshold_percent_of_included) {
            (Some(t), _) => Some(t),
            (None, Some(p)) if included > Decimal::ZERO => {
                Some(included * p / Decimal::ONE_HUNDRED)
            }
            _ => None,
        }
    }
}

/// The kinds of event a webhook endpoint may receive.
pub const EVENT_TYPES: &[&str] = &["alert.triggered"];

/// A receiver of webhooks, as stored (its secret included: deliveries are signed with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// Checks the document; errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|s| self.url.len() > s.len() && self.url[..s.len()].eq_ignore_ascii_case(s));
        if !scheme_ok || self.url.len() > 2048 || self.url.chars().any(char::is_whitespace) {
            return Err(
                "url: an http:// or https:// address of at most 2048 characters, without spaces"
                    .into(),
            );
        }
        if self.events.is_empty() {
            return Err(format!("events: at least one of {EVENT_TYPES:?}"));
        }
        if let Some(unknown) = self
            .events
            .iter()
            .find(|e| !EVENT_TYPES.contains(&e.as_str()))
        {
            return Err(format!(
                "events: unknown event type '{unknown}'; known: {EVENT_TYPES:?}"
            ));
        }
        Ok(())
    }

    /// Whether deliveries of `event_type` go to it.
    pub fn receives(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(json: serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<Alert>(json)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn an_alert_names_the_field_at_fault() {
        let cases = [
            (
                serde_json::json!({"code": "a", "price": "calls", "threshold": "1"}),
                "subscription",
            ),
            (
                serde_json::json!({"code": "a", "subscription": "s", "plan": "p", "threshold": "1"}),
                "subscription",
            ),
            (
                serde_json::json!({"code": "a", "subscription": "s", "metric": "quantity", "threshold": "1"}),
                "price: required",
            ),
            (
                serde_json::json!({"code": "a", "subscription": "s", "price": "c"}),
                "threshold",
            ),
            (
                serde_json::json!({"code": "a", "subscription": "s", "price": "c", "threshold": "0"}),
                "threshold: must be positive",
            ),
            (
                serde_json::json!({"code": "a", "subscription": "s", "metric": "amount", "threshold_percent_of_included": "80"}),
                "threshold_percent_of_included",
            ),
            (
                serde_json::json!({"code": "a b", "subscription": "s", "threshold": "1", "metric": "amount"}),
                "code",
            ),
        ];
        for (json, field) in cases {
            let err = alert(json.clone()).expect_err(&json.to_string());
            let field = field.split(':').next().unwrap();
            assert!(err.starts_with(field), "{json}: {err}");
        }
        assert!(alert(serde_json::json!({"code": "a", "plan": "p", "threshold": "10"})).is_ok());
        assert!(
            alert(serde_json::json!({"code": "a", "subscription": "s", "price": "c", "threshold_percent_of_included": "80"}))
                .is_ok()
        );
    }

    #[test]
    fn the_metric_defaults_to_quantity_with_a_price_and_amount_without() {
        let with: Alert = serde_json::from_value(
            serde_json::json!({"code": "a", "plan": "p", "price": "c", "threshold": "1"}),
        )
        .unwrap();
        assert_eq!(with.metric(), AlertMetric::Quantity);
        let without: Alert =
            serde_json::from_value(serde_json::json!({"code": "a", "plan": "p", "threshold": "1"}))
                .unwrap();
        assert_eq!(without.metric(), AlertMetric::Amount);
    }

    #[test]
    fn a_percent_threshold_is_that_share_of_the_included_units() {
        let a: Alert = serde_json::from_value(serde_json::json!(
            {"code": "a", "plan": "p", "price": "c", "threshold_percent_of_included": "80"}))
        .unwrap();
        assert_eq!(
            a.threshold_for(Decimal::from(1000)),
            Some(Decimal::from(800))
        );
        assert_eq!(a.threshold_for(Decimal::ZERO), None);
    }

    #[test]
    fn an_endpoint_takes_http_addresses_and_known_events_only() {
        let mut e = WebhookEndpoint {
            id: "we_1".into(),
            url: "https://example.com/hooks".into(),
            events: vec!["alert.triggered".into()],
            secret: "s".into(),
            created_at: Utc::now(),
        };
        assert!(e.validate().is_ok());
        e.url = "ftp://example.com".into();
        assert!(e.validate().unwrap_err().starts_with("url"));
        e.url = "http://127.0.0.1:9/x".into();
        e.events = vec!["invoice.paid".into()];
        assert!(e.validate().unwrap_err().starts_with("events"));
    }
}
