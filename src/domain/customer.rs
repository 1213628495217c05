//! Customers (docs/api.md "Customers"): keyed by the tenant's own external id.

use serde::{Deserialize, Serialize};

use super::plan::{KEY_RULE, is_key};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub external_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: String,
    /// IANA timezone; calendar billing periods align to it.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

fn utc() -> String {
    "UTC".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Customer {
    pub fn validate(&self) -> Result<(), String> {
        if !is_key(&self.external_id) {
            return Err(format!("external_id: {KEY_RULE}"));
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!(
                "timezone: '{}' is not an IANA timezone such as Europe/Paris",
                self.timezone
            ));
        }
        if !self.metadata.is_object() {
            return Err("metadata: must be an object".into());
        }
        Ok(())
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}
