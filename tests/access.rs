//! Access across every route: each documented route × each kind of key (tenant A's admin, read,
//! ingest and customer keys, tenant B's admin key, an unknown key, no key), checked against
//! the roles of docs/api.md; and per-key rate limits under load, within 10%, other keys unaffected.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestApp, spawn_app, spawn_with, test_config};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    Read,
    Ingest,
    /// Bound to customer `c1`, whose subscription is `sub_1`.
    Customer,
    /// Another tenant's admin.
    OtherTenant,
    Unknown,
    Anonymous,
}

impl Caller {
    fn key(self) -> Option<&'static str> {
        match self {
            Self::Admin => Some("admin_key_a"),
            Self::Read => Some("read_key_a"),
            Self::Ingest => Some("ingest_key_a"),
            Self::Customer => Some("cust_key_a"),
            Self::OtherTenant => Some("admin_key_b"),
            Self::Unknown => Some("no_such_key_123"),
            Self::Anonymous => None,
        }
    }
}

use Caller::*;

/// What a route is, for access: who may call it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Catalog and key writes: admin only.
    Write,
    /// Reads of the tenant's catalog as a whole: admin and read.
    Read,
    /// Reads about customer `c1` (or `sub_1`): admin, read, and c1's customer key.
    Customer,
    /// Sending events: admin and ingest.
    Ingest,
    /// The customer key's own subscription (Diga): customer keys only.
    OwnSubscription,
    /// Health, readiness, metrics and the OpenAPI document.
    Public,
}

struct Route {
    method: &'static str,
    /// As in the OpenAPI document.
    path: &'static str,
    /// With tenant A's names filled in.
    url: &'static str,
    access: Access,
    body: Option<fn() -> Value>,
}

fn route(method: &'static str, path: &'static str, url: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        url,
        access,
        body: None,
    }
}

fn with(mut r: Route, body: fn() -> Value) -> Route {
    r.body = Some(body);
    r
}

fn routes() -> Vec<Route> {
    use Access as A;
    let now = || chrono::Utc::now().timestamp_millis();
    let _ = now;
    vec![
        route("get", "/healthz", "/healthz", A::Public),
        route("get", "/readyz", "/readyz", A::Public),
        route("get", "/metrics", "/metrics", A::Public),
        route("get", "/openapi.json", "/openapi.json", A::Public),
        with(
            route("post", "/v1/events", "/v1/events", A::Ingest),
            || json!({"id": unique("e"), "customer": "c1", "type": "api_call"}),
        ),
        route("get", "/v1/meters", "/v1/meters", A::Read),
        with(
            route("post", "/v1/meters", "/v1/meters", A::Write),
            || json!({"slug": unique("m"), "name": "M", "event_type": "x", "aggregation": "count"}),
        ),
        route("get", "/v1/meters/{key}", "/v1/meters/tokens", A::Read),
        with(
            route("put", "/v1/meters/{key}", "/v1/meters/tokens", A::Write),
            || json!({"slug": "tokens", "name": "Tokens", "event_type": "llm_call", "aggregation": "sum", "value_property": "tokens"}),
        ),
        route(
            "get",
            "/v1/meters/{key}/query",
            "/v1/meters/tokens/query?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&customer=c1",
            A::Customer,
        ),
        with(
            route(
                "post",
                "/v1/dashboard/links",
                "/v1/dashboard/links",
                A::Customer,
            ),
            || json!({"customer": "c1", "ttl_s": 60}),
        ),
        route("get", "/v1/plans", "/v1/plans", A::Read),
        with(
            route("post", "/v1/plans", "/v1/plans", A::Write),
            || json!({"code": unique("p"), "name": "P", "currency": "USD", "interval": "month"}),
        ),
        route("get", "/v1/plans/{key}", "/v1/plans/pro", A::Read),
        with(
            route("put", "/v1/plans/{key}", "/v1/plans/pro", A::Write),
            plan,
        ),
        route("get", "/v1/customers", "/v1/customers", A::Read),
        with(
            route("post", "/v1/customers", "/v1/customers", A::Write),
            || json!({"external_id": unique("c"), "name": "C"}),
        ),
        route(
            "get",
            "/v1/customers/{key}",
            "/v1/customers/c1",
            A::Customer,
        ),
        with(
            route("put", "/v1/customers/{key}", "/v1/customers/c1", A::Write),
            || json!({"external_id": "c1", "name": "Acme"}),
        ),
        route(
            "get",
            "/v1/customers/{key}/usage",
            "/v1/customers/c1/usage",
            A::Customer,
        ),
        route(
            "get",
            "/v1/customers/{key}/billing_state",
            "/v1/customers/c1/billing_state",
            A::Customer,
        ),
        route("get", "/v1/subscriptions", "/v1/subscriptions", A::Read),
        with(
            route("post", "/v1/subscriptions", "/v1/subscriptions", A::Write),
            || json!({"external_id": unique("s"), "customer": "c1", "plan": "pro"}),
        ),
        route(
            "get",
            "/v1/subscriptions/{key}",
            "/v1/subscriptions/sub_1",
            A::Customer,
        ),
        with(
            route(
                "put",
                "/v1/subscriptions/{key}",
                "/v1/subscriptions/sub_1",
                A::Write,
            ),
            || json!({"external_id": "sub_1", "customer": "c1", "plan": "pro", "start_date": "2026-01-01T00:00:00Z"}),
        ),
        route(
            "get",
            "/v1/subscriptions/{key}/usage",
            "/v1/subscriptions/sub_1/usage",
            A::Customer,
        ),
        with(
            route(
                "post",
                "/v1/subscriptions/{key}/change_plan",
                "/v1/subscriptions/sub_1/change_plan",
                A::Write,
            ),
            || json!({"plan": "pro", "at": "period_end"}),
        ),
        with(
            route(
                "post",
                "/v1/subscriptions/{key}/cancel",
                "/v1/subscriptions/sub_1/cancel",
                A::Write,
            ),
            || json!({"at": "2099-01-01T00:00:00Z"}),
        ),
        with(
            route("post", "/v1/api-keys", "/v1/api-keys", A::Write),
            || json!({"role": "read", "name": "x"}),
        ),
        route("get", "/v1/api-keys", "/v1/api-keys", A::Write),
        with(
            route("post", "/v1/alerts", "/v1/alerts", A::Write),
            || json!({"code": unique("al"), "subscription": "sub_1", "metric": "amount", "threshold": "1000"}),
        ),
        route("get", "/v1/alerts", "/v1/alerts", A::Write),
        route("get", "/v1/alerts/{code}", "/v1/alerts/al_a", A::Write),
        route("delete", "/v1/alerts/{code}", "/v1/alerts/al_a", A::Write),
        with(
            route(
                "post",
                "/v1/webhook_endpoints",
                "/v1/webhook_endpoints",
                A::Write,
            ),
            || json!({"url": "http://127.0.0.1:9/hook"}),
        ),
        route(
            "get",
            "/v1/webhook_endpoints",
            "/v1/webhook_endpoints",
            A::Write,
        ),
        route(
            "get",
            "/v1/webhook_deliveries",
            "/v1/webhook_deliveries",
            A::Write,
        ),
        route(
            "get",
            "/lark/customer-access/{subject_id}/billing-state",
            "/lark/customer-access/c1/billing-state",
            A::Customer,
        ),
        route(
            "get",
            "/lago/api/v1/customers/{external_customer_id}/current_usage",
            "/lago/api/v1/customers/c1/current_usage?external_subscription_id=sub_1",
            A::Customer,
        ),
        with(
            route(
                "post",
                "/lago/api/v1/events",
                "/lago/api/v1/events",
                A::Ingest,
            ),
            || json!({"event": {"transaction_id": unique("l"), "external_customer_id": "c1", "code": "api_call"}}),
        ),
        with(
            route(
                "post",
                "/openmeter/api/v1/events",
                "/openmeter/api/v1/events",
                A::Ingest,
            ),
            || json!({"specversion": "1.0", "id": unique("o"), "source": "access", "type": "api_call", "subject": "c1"}),
        ),
        with(
            route(
                "post",
                "/lago/api/v1/events/batch",
                "/lago/api/v1/events/batch",
                A::Ingest,
            ),
            || json!({"events": [{"transaction_id": unique("l"), "external_customer_id": "c1", "code": "api_call"}]}),
        ),
        route(
            "get",
            "/flowglad/api/v1/customers/{externalId}/billing",
            "/flowglad/api/v1/customers/c1/billing",
            A::Customer,
        ),
        with(
            route(
                "post",
                "/flexprice/v1/subscriptions/usage",
                "/flexprice/v1/subscriptions/usage",
                A::Customer,
            ),
            || json!({"subscription_id": "sub_1"}),
        ),
        with(
            route(
                "post",
                "/flexprice/v1/events",
                "/flexprice/v1/events",
                A::Ingest,
            ),
            || json!({"event_name": "api_call", "external_customer_id": "c1"}),
        ),
        with(
            route(
                "post",
                "/flexprice/v1/events/bulk",
                "/flexprice/v1/events/bulk",
                A::Ingest,
            ),
            || json!({"events": [{"event_name": "api_call", "external_customer_id": "c1"}]}),
        ),
        route(
            "get",
            "/diga/v1/billing/subscription/",
            "/diga/v1/billing/subscription/",
            A::OwnSubscription,
        ),
    ]
}

fn plan() -> Value {
    json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
           "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"}]})
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether `caller` may use a route of `access` on tenant A's `c1`.
fn allowed(access: Access, caller: Caller) -> bool {
    match access {
        Access::Public => true,
        Access::Write => caller == Admin,
        Access::Read => matches!(caller, Admin | Read),
        Access::Customer => matches!(caller, Admin | Read | Customer),
        Access::Ingest => matches!(caller, Admin | Ingest),
        Access::OwnSubscription => caller == Customer,
    }
}

/// Whether the route's path or body names one of tenant A's own items.
fn names_tenant_a(r: &Route) -> bool {
    let body = r.body.map(|b| b().to_string()).unwrap_or_default();
    let path = r.url.split('?').next().unwrap_or_default();
    [
        "/c1",
        "sub_1",
        "/tokens",
        "/pro",
        "\"c1\"",
        "\"pro\"",
        "/v1/api-keys/",
        "/v1/alerts/",
        "/v1/webhook_endpoints/",
        "/v1/webhook_deliveries/",
    ]
    .iter()
    .any(|name| path.contains(name) || body.contains(name))
        || path.ends_with("/c1")
}

async fn call(app: &TestApp, r: &Route, caller: Caller) -> (u16, String) {
    let url = format!("{}{}", app.base, r.url);
    let mut request = match r.method {
        "get" => app.http.get(url),
        "post" => app.http.post(url),
        "put" => app.http.put(url),
        "delete" => app.http.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(body) = r.body {
        request = request.json(&body());
    }
    if let Some(key) = caller.key() {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn every_route_answers_each_kind_of_key_as_its_role_says() {
    let app = spawn_app("access_matrix").await;
    for (path, body) in [
        ("/v1/plans", plan()),
        (
            "/v1/customers",
            json!({"external_id": "c1", "name": "Acme"}),
        ),
        (
            "/v1/customers",
            json!({"external_id": "c2", "name": "Other"}),
        ),
        (
            "/v1/subscriptions",
            json!({"external_id": "sub_1", "customer": "c1", "plan": "pro", "start_date": "2026-01-01T00:00:00Z"}),
        ),
    ] {
        let (status, answer) = app
            .post_raw(path, "admin_key_a", "application/json", body.to_string())
            .await;
        assert!(status < 300, "{path}: {status} {answer}");
    }
    let mut routes = routes();
    // A stored key of A's, which only A's admin may revoke (last, so the others see it).
    let (status, key) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_a",
            "application/json",
            json!({"role": "read"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let url: &'static str =
        Box::leak(format!("/v1/api-keys/{}", key["id"].as_str().unwrap()).into_boxed_str());
    routes.push(route("delete", "/v1/api-keys/{id}", url, Access::Write));
    // An endpoint of A's and a delivery to it (the receiver refuses: it stays pending), for
    // the routes that name them.
    let endpoint = common::post_ok(
        &app,
        "/v1/webhook_endpoints",
        json!({"url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let endpoint: &'static str = Box::leak(
        format!("/v1/webhook_endpoints/{}", endpoint["id"].as_str().unwrap()).into_boxed_str(),
    );
    common::post_ok(
        &app,
        "/v1/alerts",
        json!({"code": "al_a", "subscription": "sub_1", "price": "calls", "threshold": "1"}),
    )
    .await;
    let (status, ack) = app
        .post_events("ingest_key_a", &common::events("fires", "c1", 1))
        .await;
    assert_eq!(status, 202, "{ack}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivery = loop {
        assert!(Instant::now() < deadline, "the alert did not fire");
        let (_, listed) = common::get_json(&app, "/v1/webhook_deliveries", "admin_key_a").await;
        if let Some(id) = listed["data"][0]["id"].as_str() {
            break format!("/v1/webhook_deliveries/{id}/retry");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    routes.extend([
        route("get", "/v1/webhook_endpoints/{id}", endpoint, Access::Write),
        with(
            route(
                "post",
                "/v1/webhook_deliveries/{id}/retry",
                Box::leak(delivery.into_boxed_str()),
                Access::Write,
            ),
            || json!({}),
        ),
        route(
            "delete",
            "/v1/webhook_endpoints/{id}",
            endpoint,
            Access::Write,
        ),
    ]);

    // The table covers every documented route, so a new route cannot skip this test.
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let covered: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        documented, covered,
        "routes documented but not in this table, or the reverse"
    );

    let mut failures = Vec::new();
    // Admin last: its writes change what the others would see.
    for caller in [
        Anonymous,
        Unknown,
        OtherTenant,
        Ingest,
        Read,
        Customer,
        Admin,
    ] {
        for r in &routes {
            let (status, body) = call(&app, r, caller).await;
            let expected_ok = allowed(r.access, caller);
            let fine = match caller {
                _ if r.access == Access::Public => status == 200,
                Anonymous | Unknown => status == 401,
                // Another tenant sees none of A's names: whatever names A's customer,
                // subscription, meter or plan is not found there; what names none works on B's
                // own data, and nothing of A shows in B's lists.
                OtherTenant => match r.access {
                    Access::OwnSubscription => status == 403,
                    // Events name customers of the sender's own tenant.
                    Access::Ingest => status < 300,
                    _ if names_tenant_a(r) => status == 404,
                    _ => status < 300 && !body.contains("\"c1\"") && !body.contains("sub_1"),
                },
                _ if expected_ok => status < 300,
                // A customer key asking about data that is not its customer's, or a role
                // outside the route's: 403 (404 where the route names a customer).
                _ => status == 403 || (caller == Customer && status == 404),
            };
            if !fine {
                failures.push(format!(
                    "{caller:?} {} {}: {status} {}",
                    r.method,
                    r.url,
                    body.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    // A customer key reads only its own customer: c2 is not found for it.
    let response = app
        .get("/v1/customers/c2/billing_state", Some("cust_key_a"))
        .await;
    assert_eq!(response.status(), 404);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Requests a second per key.
const RPS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_holds_within_ten_percent_and_spares_other_keys() {
    let mut config = test_config("access_rate", &common::clickhouse_url());
    config.rate_limit_rps = RPS;
    let app = Arc::new(spawn_with(config, true).await);
    let run_for = Duration::from_secs(4);
    let start = Instant::now();
    let (ok, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Eight clients hammer one key.
    let mut hammer = Vec::new();
    for _ in 0..8 {
        let (app, ok, limited) = (app.clone(), ok.clone(), limited.clone());
        hammer.push(tokio::spawn(async move {
            while start.elapsed() < run_for {
                let response = app.get("/v1/meters", Some("read_key_a")).await;
                match response.status().as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        assert!(response.headers().contains_key("retry-after"));
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("unexpected {other}"),
                };
            }
        }));
    }
    // Meanwhile another key of the same tenant sends 10 requests a second: never limited.
    let mut polite_statuses = Vec::new();
    while start.elapsed() < run_for {
        polite_statuses.push(
            app.get("/v1/meters", Some("admin_key_a"))
                .await
                .status()
                .as_u16(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in hammer {
        h.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    // governor: a burst of RPS, then RPS a second.
    let expected = f64::from(RPS) * (1.0 + elapsed);
    let got = ok.load(Ordering::Relaxed) as f64;
    assert!(
        limited.load(Ordering::Relaxed) > 0,
        "the load must exceed the limit"
    );
    assert!(
        (got - expected).abs() <= expected * 0.10,
        "{got} requests passed in {elapsed:.2} s; the limit allows {expected:.0} (±10%)"
    );
    assert!(polite_statuses.len() >= 30);
    assert!(
        polite_statuses.iter().all(|&s| s == 200),
        "{polite_statuses:?}"
    );
}
