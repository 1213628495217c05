//! Dashboards in a real browser: Debian's `chromium`, headless, opens links minted through the
//! API against a seeded tenant, and each test reads the DOM after the page's scripts ran: the
//! quantities and totals the usage API returns, a customer's link refused elsewhere, an expired
//! or forged link refused, a new event shown by the page's own refresh, a customer's page
//! working inside a frame of an allowed site and refused in another's. Screenshots of each
//! page are saved as `target/dashboard-*.png`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{TestApp, d, dec, get_json, post_ok, spawn_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// A plan with a flat fee, a graduated price with included units, and a per-unit price split
/// by model; customers `c1` (Paris) and `c2`, each subscribed since two days ago.
async fn seed(app: &TestApp) {
    post_ok(
        app,
        "/v1/plans",
        json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
               "prices": [
                 {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance"},
                 {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated",
                  "included_units": "100",
                  "tiers": [{"up_to": "1000", "unit_amount": "0.01", "flat_amount": "0"},
                            {"up_to": null, "unit_amount": "0.005", "flat_amount": "0"}]},
                 {"code": "tokens", "type": "usage", "meter": "tokens", "model": "per_unit",
                  "unit_amount": "0.0001", "group_by": ["model"]}]}),
    )
    .await;
    let start = (chrono::Utc::now() - chrono::TimeDelta::days(2)).to_rfc3339();
    for (customer, name, tz) in [("c1", "Acme", "Europe/Paris"), ("c2", "Other", "UTC")] {
        post_ok(
            app,
            "/v1/customers",
            json!({"external_id": customer, "name": name, "timezone": tz}),
        )
        .await;
        post_ok(
            app,
            "/v1/subscriptions",
            json!({"external_id": format!("sub_{customer}"), "customer": customer, "plan": "pro",
                   "start_date": start}),
        )
        .await;
    }
    let mut events: Vec<Value> = (0..1234)
        .map(|i| json!({"id": format!("call-{i}"), "customer": "c1", "type": "api_call"}))
        .collect();
    events.extend(
        (0..5).map(|i| json!({"id": format!("other-{i}"), "customer": "c2", "type": "api_call"})),
    );
    events.extend(
        [("gpt", 120_000), ("claude", 30_500), ("gpt", 1_500)]
            .iter()
            .enumerate()
            .map(|(i, (model, tokens))| {
                json!({"id": format!("tok-{i}"), "customer": "c1", "type": "llm_call",
                   "properties": {"tokens": tokens, "model": model}})
            }),
    );
    let (status, answer) = app.post_events("ingest_key_a", &Value::Array(events)).await;
    assert_eq!(status, 202, "{answer}");
}

/// `POST /v1/dashboard/links` with `key` and `body`: the status and answer.
async fn mint(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    app.post_raw(
        "/v1/dashboard/links",
        key,
        "application/json",
        body.to_string(),
    )
    .await
}

/// A link minted with `key`: its path and query.
async fn link(app: &TestApp, key: &str, body: Value) -> String {
    let (status, answer) = mint(app, key, &body).await;
    assert_eq!(status, 201, "{answer}");
    answer["url"].as_str().unwrap().to_owned()
}

fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join(format!("dashboard-{name}.png"))
}

/// Runs headless chromium with a profile of its own on `url` plus `args`; its standard output.
async fn chromium(url: &str, args: &[String]) -> String {
    // At most two browsers at once: the tests run in parallel on small machines.
    static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _browser = BROWSERS.acquire().await.unwrap();
    // A browser that stalls on a loaded machine (it happens, rarely, to headless chromium
    // whatever the page) is started once more, on a fresh profile.
    for attempt in 1..=2 {
        let profile = tempfile::tempdir().unwrap();
        let mut command = tokio::process::Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(90), command.output()).await {
            Ok(output) => {
                let output =
                    output.expect("chromium runs (scripts/install-deps --tests installs it)");
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            Err(_) => eprintln!("chromium did not finish within 90 s (attempt {attempt}) on {url}"),
        }
    }
    panic!("chromium did not finish {url} within 90 s, twice");
}

/// The DOM of `url` once its scripts ran for `budget_ms` of virtual time.
async fn dom(url: &str, budget_ms: u32) -> String {
    chromium(
        url,
        &[
            "--dump-dom".into(),
            format!("--virtual-time-budget={budget_ms}"),
        ],
    )
    .await
}

async fn screenshot(url: &str, name: &str, width: u32, height: u32) {
    let path = screenshot_path(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    chromium(
        url,
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
            "--virtual-time-budget=1000".into(),
        ],
    )
    .await;
    assert!(path.exists(), "no screenshot at {}", path.display());
}

/// The value of `attribute` on the element whose opening tag also holds `marker`.
fn attribute(dom: &str, marker: &str, attribute: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attribute}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(tag[start..end].to_owned())
}

/// `$1,234.50`: an amount as the pages show it.
fn usd(amount: Decimal) -> String {
    let mut rounded =
        amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
    rounded.rescale(2);
    let text = rounded.to_string();
    let (whole, cents) = text.split_once('.').unwrap();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("${grouped}.{cents}")
}

#[tokio::test]
async fn pages_show_the_usage_apis_quantities_and_totals() {
    let app = spawn_app("dashboard_figures").await;
    seed(&app).await;
    let (status, usage) = get_json(&app, "/v1/customers/c1/usage", "read_key_a").await;
    assert_eq!(status, 200, "{usage}");
    let calls = usage["charges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["price"] == "calls")
        .unwrap();
    assert_eq!(dec(&calls["quantity"]), d("1234"));

    // A customer's page, opened from the customer's link minted with a customer key.
    let url = link(&app, "cust_key_a", json!({})).await;
    assert!(url.starts_with("/dashboard/customers/c1?token="), "{url}");
    let page = dom(&format!("{}{url}", app.base), 1000).await;
    assert!(page.contains("Usage of Acme (c1)"), "{page}");
    for charge in usage["charges"].as_array().unwrap() {
        let marker = format!("data-price=\"{}\"", charge["price"].as_str().unwrap());
        let shown = attribute(&page, &marker, "data-quantity")
            .unwrap_or_else(|| panic!("{marker} in {page}"));
        assert_eq!(d(&shown), dec(&charge["quantity"]), "{marker}");
        let amount = attribute(&page, &marker, "data-amount").unwrap();
        assert_eq!(d(&amount), dec(&charge["amount"]), "{marker}");
    }
    assert!(
        page.contains(">1,234<"),
        "the quantity with a thousands separator"
    );
    let total = attribute(&page, "class=\"num total\"", "data-total").expect("a total");
    assert_eq!(d(&total), dec(&usage["total"]));
    assert!(
        page.contains(&usd(dec(&usage["total"]))),
        "{} in the page",
        usd(dec(&usage["total"]))
    );
    assert!(
        page.contains("tier 2"),
        "the calls price is in its second tier"
    );
    assert!(
        page.contains("Tokens per day") && page.contains("model=gpt"),
        "charts with a group split"
    );
    assert!(
        page.contains("time (Europe/Paris)"),
        "the customer's zone on the axes"
    );
    screenshot(&format!("{}{url}", app.base), "customer", 1280, 1600).await;
    screenshot(&format!("{}{url}", app.base), "customer-phone", 390, 1600).await;

    // The tenant's overview: per plan the API's totals summed, meters' volumes.
    let url = link(&app, "read_key_a", json!({})).await;
    assert!(url.starts_with("/dashboard?token="), "{url}");
    let page = dom(&format!("{}{url}", app.base), 1000).await;
    let (_, other) = get_json(&app, "/v1/customers/c2/usage", "read_key_a").await;
    let plan_total = dec(&usage["total"]) + dec(&other["total"]);
    assert!(
        page.contains(&format!("data-amount=\"{plan_total}\"")) || {
            let shown = attribute(&page, "<td class=\"num\" data-amount", "data-amount")
                .unwrap_or_default();
            d(&shown) == plan_total
        },
        "plan total {plan_total} in {page}"
    );
    assert!(page.contains(&usd(plan_total)), "{}", usd(plan_total));
    assert_eq!(
        attribute(&page, "data-meter=\"calls\"", "data-meter").as_deref(),
        Some("calls")
    );
    let volume = page
        .split("data-meter=\"calls\"")
        .nth(1)
        .and_then(|rest| attribute(rest, "data-volume", "data-volume"))
        .unwrap();
    assert_eq!(d(&volume), d("1239"), "1234 + 5 calls this week");
    assert!(page.contains("Events per hour, last 7 days"));
    screenshot(&format!("{}{url}", app.base), "tenant", 1280, 1400).await;

    // The meter explorer: the meter query's rows, split by model.
    let token = url.split("token=").nth(1).unwrap();
    let to = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let from = to - chrono::TimeDelta::days(1);
    let query = format!(
        "from={}&to={}&window_size=day&group_by=model&timezone=UTC",
        from.timestamp(),
        to.timestamp()
    );
    let (status, api) = get_json(
        &app,
        &format!("/v1/meters/tokens/query?{query}"),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{api}");
    let explorer = format!("{}/dashboard/meters/tokens?{query}&token={token}", app.base);
    let page = dom(&explorer, 500).await;
    let shown: Vec<Decimal> = page
        .split("data-value=\"")
        .skip(1)
        .map(|rest| d(rest.split('"').next().unwrap()))
        .collect();
    let mut expected: Vec<Decimal> = api["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dec(&r["value"]))
        .collect();
    let mut sorted = shown.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{page}");
    assert!(page.contains("121,500"), "gpt's tokens with a separator");
    assert!(page.contains("Download CSV"));
    screenshot(&explorer, "meter", 1280, 1200).await;

    // The CSV, through the session the link opens.
    let cookie = session_cookie(&app, &url).await;
    let csv = with_cookie(
        &app,
        &format!("/dashboard/meters/tokens/csv?{query}"),
        &cookie,
    )
    .await;
    assert_eq!(csv.status(), 200);
    let csv = csv.text().await.unwrap();
    assert!(
        csv.starts_with("window_start,window_end,customer,model,value\r\n"),
        "{csv}"
    );
    for row in api["data"].as_array().unwrap() {
        let line = format!(
            ",{},{},{}\r\n",
            row["customer"].as_str().unwrap(),
            row["group"]["model"].as_str().unwrap(),
            row["value"].as_str().unwrap()
        );
        assert!(csv.contains(&line), "{line} in {csv}");
    }

    // Any window of the customer's: the figures of the usage API for that window.
    let cookie = session_cookie(
        &app,
        &link(&app, "admin_key_a", json!({"customer": "c1"})).await,
    )
    .await;
    let z = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = format!(
        "from={}&to={}",
        z(chrono::Utc::now() - chrono::TimeDelta::days(1)),
        z(chrono::Utc::now() + chrono::TimeDelta::hours(1))
    );
    let (status, usage) = get_json(
        &app,
        &format!("/v1/customers/c1/usage?{window}"),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let page = with_cookie(&app, &format!("/dashboard/customers/c1?{window}"), &cookie).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let total = attribute(&page, "class=\"num total\"", "data-total").expect("a total");
    assert_eq!(d(&total), dec(&usage["total"]), "{page}");
    assert!(
        !page.contains("id=\"live\""),
        "a past window does not refresh"
    );
    app.shutdown().await;
}

/// `path` of the service, with the session `cookie`.
async fn with_cookie(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    app.http
        .get(format!("{}{path}", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Opens `url` without following the redirect: the session cookie it sets.
async fn session_cookie(app: &TestApp, url: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(!location.contains("token"), "{location}");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_customers_link_is_refused_elsewhere_and_expired_or_forged_links_say_so() {
    let app = spawn_app("dashboard_refusals").await;
    seed(&app).await;
    let url = link(&app, "admin_key_a", json!({"customer": "c1", "ttl_s": 600})).await;
    let token = url.split("token=").nth(1).unwrap().to_owned();
    // Another customer's page and the tenant's overview: 403, in the browser and over HTTP.
    for elsewhere in ["/dashboard/customers/c2", "/dashboard"] {
        let page = dom(&format!("{}{elsewhere}?token={token}", app.base), 200).await;
        assert!(
            page.contains("Not available with this link"),
            "{elsewhere}: {page}"
        );
        assert!(!page.contains("data-price"), "{elsewhere} shows no figures");
    }
    let cookie = session_cookie(&app, &url).await;
    for (path, status) in [
        ("/dashboard/customers/c2", 403),
        ("/dashboard", 403),
        ("/dashboard/customers/c1", 200),
        ("/dashboard/customers/c2/live", 403),
    ] {
        let response = with_cookie(&app, path, &cookie).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    screenshot(
        &format!("{}/dashboard/customers/c2?token={token}", app.base),
        "refused",
        800,
        500,
    )
    .await;

    // A link that expired.
    let expired = link(&app, "admin_key_a", json!({"customer": "c1", "ttl_s": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = dom(&format!("{}{expired}", app.base), 200).await;
    assert!(page.contains("This link has expired"), "{page}");
    assert_eq!(app.get(&expired, None).await.status(), 410);
    screenshot(&format!("{}{expired}", app.base), "expired", 800, 500).await;

    // A link changed by hand: another customer's id under the same signature.
    let forged = url.replacen(
        &format!(".{}.", hex(b"c1")),
        &format!(".{}.", hex(b"c2")),
        1,
    );
    assert_ne!(forged, url);
    let page = dom(
        &format!("{}{}", app.base, forged.replacen("c1?", "c2?", 1)),
        200,
    )
    .await;
    assert!(page.contains("This link is not valid"), "{page}");
    assert_eq!(app.get(&forged, None).await.status(), 401);
    // No link at all.
    assert_eq!(app.get("/dashboard", None).await.status(), 401);

    // Who may mint what.
    for (key, body, status) in [
        ("ingest_key_a", json!({}), 403),
        ("cust_key_a", json!({"customer": "c2"}), 404),
        ("admin_key_a", json!({"customer": "nobody"}), 404),
        ("admin_key_a", json!({"ttl_s": 604_801}), 400),
        ("admin_key_b", json!({"customer": "c1"}), 404),
    ] {
        let (got, answer) = mint(&app, key, &body).await;
        assert_eq!(got, status, "{key} {body}: {answer}");
    }
    let response = app
        .http
        .post(format!("{}/v1/dashboard/links", app.base))
        .bearer_auth("admin_key_a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "no body: the tenant's dashboard for an hour"
    );
    let answer: Value = response.json().await.unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(answer["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    app.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn pages_are_not_framed_unless_an_origin_is_allowed() {
    let app = spawn_app("dashboard_frames").await;
    let url = link(&app, "admin_key_a", json!({})).await;
    let cookie = session_cookie(&app, &url).await;
    let response = with_cookie(&app, "/dashboard", &cookie).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    app.shutdown().await;

    let mut config = common::test_config("dashboard_frames_allowed", &common::clickhouse_url());
    config.dashboard_frame_ancestors = vec!["https://app.example.com".into()];
    let app = common::spawn_with(config, true).await;
    seed(&app).await;
    let url = link(&app, "admin_key_a", json!({"customer": "c1"})).await;
    // Loaded as a frame's page: no redirect, the token authorises it and stays in its links.
    let response = app
        .http
        .get(format!("{}{url}", app.base))
        .header("sec-fetch-dest", "iframe")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-frame-options").is_none());
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("frame-ancestors https://app.example.com"),
        "{policy}"
    );
    let page = response.text().await.unwrap();
    let token = url.split("token=").nth(1).unwrap();
    assert!(
        page.contains(&format!("/dashboard/customers/c1/live?token={token}")),
        "{page}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_new_event_shows_on_the_open_page_without_reloading() {
    let app = spawn_app("dashboard_refresh").await;
    seed(&app).await;
    let url = link(&app, "admin_key_a", json!({"customer": "c1"})).await;
    let page_url = format!("{}{url}", app.base);
    // The page, open in the browser while the event arrives: its refresh request waits on
    // the server for a change, and virtual time stands still while it does.
    let browser = tokio::spawn(async move { dom(&page_url, 1500).await });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "the page never asked for new figures"
        );
        let metrics = app.get("/metrics", None).await.text().await.unwrap();
        let waiting = metrics
            .lines()
            .find_map(|l| l.strip_prefix("meterhouse_dashboard_live_waiting "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = app
        .post_events(
            "ingest_key_a",
            &json!([{"id": "late-call", "customer": "c1", "type": "api_call"}]),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let page = browser.await.unwrap();
    let (_, usage) = get_json(&app, "/v1/customers/c1/usage", "read_key_a").await;
    let calls = usage["charges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["price"] == "calls")
        .unwrap();
    assert_eq!(dec(&calls["quantity"]), d("1235"));
    let shown = attribute(&page, "data-price=\"calls\"", "data-quantity").unwrap();
    assert_eq!(d(&shown), d("1235"), "{page}");
    assert!(page.contains(">1,235<"));
    let refreshes = attribute(&page, "id=\"live\"", "data-refreshes").unwrap();
    assert!(
        refreshes.parse::<u32>().unwrap() >= 1,
        "refreshed in place: {refreshes}"
    );
    let total = attribute(&page, "class=\"num total\"", "data-total").unwrap();
    assert_eq!(d(&total), dec(&usage["total"]));
    app.shutdown().await;
}

/// The DOM of a page that frames a page of another site. Such a frame runs in a process of
/// its own, outside the page's virtual time; kept in the page's process, its timers run
/// within the budget.
async fn framed_dom(url: &str) -> String {
    chromium(
        url,
        &[
            "--dump-dom".into(),
            "--virtual-time-budget=1500".into(),
            "--disable-site-isolation-trials".into(),
            "--disable-features=IsolateOrigins,site-per-process".into(),
        ],
    )
    .await
}

/// The value of the gauge of pages waiting for new figures.
async fn waiting_pages(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("meterhouse_dashboard_live_waiting "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Serves, on another site (`localhost` rather than `127.0.0.1`), a page that frames `src`;
/// its origin.
async fn host_page(src: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let html = format!(
        "<!DOCTYPE html><html><body><h1>Your usage</h1>\
         <iframe src=\"{src}\" width=\"1000\" height=\"700\"></iframe></body></html>"
    );
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    origin
}

#[tokio::test]
async fn a_customers_page_works_inside_a_frame_of_an_allowed_origin_only() {
    // The allowed origin is known once its server listens: start it first, framing a link
    // made once the service is up.
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let router = axum::Router::new().route(
        "/",
        axum::routing::get({
            let src = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
            let framed = std::sync::Arc::new(tokio::sync::OnceCell::<String>::new());
            move || {
                let (src, framed) = (src.clone(), framed.clone());
                async move {
                    let url = framed
                        .get_or_init(|| async {
                            src.lock().await.take().unwrap().await.unwrap()
                        })
                        .await;
                    axum::response::Html(format!(
                        "<!DOCTYPE html><html><body><h1>Your usage</h1>\
                         <iframe src=\"{url}\" width=\"1000\" height=\"700\"></iframe></body></html>"
                    ))
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut config = common::test_config("dashboard_embedded", &common::clickhouse_url());
    config.dashboard_frame_ancestors = vec![origin.clone()];
    let app = common::spawn_with(config, true).await;
    seed(&app).await;
    let url = link(&app, "admin_key_a", json!({"customer": "c1"})).await;
    tx.send(format!("{}{url}", app.base)).unwrap();
    // The framed page loads on its token (no cookie reaches a frame of another site) and its
    // script asks for new figures: the service sees that request wait.
    let host = format!("{origin}/");
    let browser = tokio::spawn(async move { framed_dom(&host).await });
    let deadline = Instant::now() + Duration::from_secs(90);
    while waiting_pages(&app).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the framed page never ran its refresh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = browser.await.unwrap();
    assert!(page.contains("<iframe"), "{page}");
    screenshot(&format!("{origin}/"), "embedded", 1100, 850).await;
    app.shutdown().await;

    // The same page framed by a site that is not listed: the browser refuses to show it.
    let app = spawn_app("dashboard_not_embedded").await;
    seed(&app).await;
    let url = link(&app, "admin_key_a", json!({"customer": "c1"})).await;
    let other = host_page(format!("{}{url}", app.base)).await;
    let host = format!("{other}/");
    let browser = tokio::spawn(async move { framed_dom(&host).await });
    // A framed page's refresh request would wait seconds on the service: none ever does.
    while !browser.is_finished() {
        assert_eq!(
            waiting_pages(&app).await,
            0,
            "a framed page ran though no origin is allowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(browser.await.unwrap().contains("<iframe"));
    screenshot(&format!("{other}/"), "embedding-refused", 1100, 850).await;
    app.shutdown().await;
}

/// What the overview shows of one meter: its volume and top customers (customer, value).
#[derive(Debug, PartialEq)]
struct ShownMeter {
    volume: Decimal,
    top: Vec<(String, Decimal)>,
}

/// The value of `name="…"` in `html` after its first `marker`.
fn attribute_after(html: &str, marker: &str, name: &str) -> String {
    let rest = &html[html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"))..];
    let start = rest.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    rest[start..start + rest[start..].find('"').unwrap()].to_owned()
}

/// The overview's week (epoch seconds) and, per meter shown, its volume and top customers.
fn shown_meters(html: &str) -> ((i64, i64), Vec<(String, ShownMeter)>) {
    let table = &html[html
        .find("<table id=\"meters\"")
        .expect("the meters' table")..];
    let from = attribute_after(table, "<table", "data-from")
        .parse()
        .unwrap();
    let to = attribute_after(table, "<table", "data-to").parse().unwrap();
    let table = &table[..table.find("</table>").unwrap()];
    let meters = table
        .split("<tr data-meter=\"")
        .skip(1)
        .map(|row| {
            let slug = row[..row.find('"').unwrap()].to_owned();
            let volume = d(&attribute_after(row, "data-volume", "data-volume"));
            let top = row
                .split("data-customer=\"")
                .skip(1)
                .map(|a| {
                    let customer = a[..a.find('"').unwrap()].to_owned();
                    (customer, d(&attribute_after(a, "data-value", "data-value")))
                })
                .collect();
            (slug, ShownMeter { volume, top })
        })
        .collect();
    ((from, to), meters)
}

/// What the overview should show of `slug` over `[from, to)`: the meter query's daily series
/// in `tz` over every customer, per customer the sum of the days (counts and sums) or the
/// largest day; the volume over customers likewise, the top five largest first.
async fn expected_meter(
    app: &TestApp,
    slug: &str,
    additive: bool,
    (from, to): (i64, i64),
    tz: &str,
) -> ShownMeter {
    let instant = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .unwrap()
            .to_rfc3339()
            .replace('+', "%2B")
    };
    let path = format!(
        "/v1/meters/{slug}/query?from={}&to={}&window_size=day&timezone={tz}",
        instant(from),
        instant(to)
    );
    let (status, series) = get_json(app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{series}");
    let mut per_customer: std::collections::BTreeMap<String, Decimal> = Default::default();
    for row in series["data"].as_array().unwrap() {
        let value = dec(&row["value"]);
        let total = per_customer
            .entry(row["customer"].as_str().unwrap().to_owned())
            .or_default();
        *total = if additive {
            *total + value
        } else {
            (*total).max(value)
        };
    }
    let volume = if additive {
        per_customer.values().copied().sum()
    } else {
        per_customer.values().copied().max().unwrap_or_default()
    };
    let mut top: Vec<(String, Decimal)> = per_customer.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(5);
    ShownMeter { volume, top }
}

#[tokio::test]
async fn the_overviews_week_is_the_meter_querys_daily_series_folded_in_one_read() {
    let mut config = common::test_config("dashboard_week", &common::store_url());
    config.rollup_maintenance_every_s = 0;
    config.catalog = Some(common::backfill_catalog("catalog-dashboard-week.json"));
    let app = common::spawn_with(config, true).await;
    let additive = [
        ("calls", true),
        ("tokens", true),
        ("eu_tokens", true),
        ("peak", false),
        ("low", false),
        ("users", false),
        ("level", false),
        ("load_hours", true),
    ];
    post_ok(
        &app,
        "/v1/meters",
        json!({"slug": "load_hours", "name": "Load hours", "event_type": "measure",
               "aggregation": "weighted_sum", "value_property": "load", "weight_unit": "hour"}),
    )
    .await;
    for (slug, aggregation, property) in [
        ("peak", "max", "load"),
        ("low", "min", "load"),
        ("users", "unique_count", "user"),
        ("level", "latest", "load"),
    ] {
        post_ok(
            &app,
            "/v1/meters",
            json!({"slug": slug, "name": slug, "event_type": "measure",
                   "aggregation": aggregation, "value_property": property}),
        )
        .await;
    }
    // Nine days back to now, every 25 minutes, six customers in turn (on both shards in
    // cluster mode): each customer's days hold several events, so that where a day starts (in
    // the page's zone) changes its smallest value, its distinct users and its latest value.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut events = Vec::new();
    let mut t = now_ms - 9 * 86_400_000;
    let mut i = 0;
    while t < now_ms - 60_000 {
        let customer = ["c1", "c2", "c3", "c4", "c5", "c6"][i % 6];
        let region = ["eu", "us"][i % 2];
        events.push(json!({"id": format!("m-{i}"), "customer": customer, "type": "measure", "timestamp": t,
            "properties": {"load": format!("{}.{}", (i * 37) % 101, i % 10), "user": format!("u{}", i % 7)}}));
        events.push(json!({"id": format!("a-{i}"), "customer": customer, "type": "api_call", "timestamp": t + 1}));
        events.push(json!({"id": format!("l-{i}"), "customer": customer, "type": "llm_call", "timestamp": t + 2,
            "properties": {"tokens": (i * 131) % 1000, "model": "gpt", "region": region,
                "usage": {"input_tokens": (i * 17) % 300}}}));
        t += 1_500_000;
        i += 1;
    }
    let shards: std::collections::BTreeSet<usize> = (1..=6)
        .map(|c| meterhouse::store::cluster::shard_of("acme", &format!("c{c}"), 2))
        .collect();
    assert_eq!(shards.len(), 2, "the customers on both shards of a cluster");
    let (status, answer) = app
        .post_events("ingest_key_a", &Value::Array(events.clone()))
        .await;
    assert_eq!(status, 202, "{answer}");
    // The day grain written on one server; in cluster mode (each shard with its own grain)
    // the week is read from the hour rollup of every shard.
    let mut sealed = 0;
    let shards = match common::on_cluster() {
        true => vec![],
        false => app.store().await.shards(),
    };
    for shard in shards {
        common::age_reopening_marks(&shard).await;
        let round = shard
            .compact_days(20, 1_000, Duration::from_secs(60))
            .await
            .unwrap();
        sealed += round.sealed;
        // The seal took every late event: no sealed day is left to the hour rollup (from
        // midnight to the seal of yesterday, an hour later, yesterday's events mark it).
        let reopened: u64 = shard
            .client()
            .query(
                "SELECT count() FROM rollup_days_reopened \
                 WHERE day < (SELECT max(until) FROM rollup_days_sealed)",
            )
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(reopened, 0, "{round:?}");
    }
    assert!(
        common::on_cluster() || sealed >= 7,
        "days of the week in the day grain: {sealed}"
    );

    let url = link(&app, "read_key_a", json!({})).await;
    let cookie = session_cookie(&app, &url).await;
    for tz in ["UTC", "Europe/Paris"] {
        let page = with_cookie(&app, &format!("/dashboard?tz={tz}"), &cookie).await;
        let html = page.text().await.unwrap();
        let (week, shown) = shown_meters(&html);
        assert_eq!(shown.len(), additive.len(), "{tz}: every meter shown");
        for (slug, meter) in &shown {
            let adds_up = additive.iter().find(|(s, _)| s == slug).unwrap().1;
            let expected = expected_meter(&app, slug, adds_up, week, tz).await;
            assert_eq!(meter, &expected, "{tz}: {slug}");
            assert!(!meter.top.is_empty(), "{tz}: {slug} has usage this week");
        }
        let sent = events
            .iter()
            .filter(|e| {
                let s = e["timestamp"].as_i64().unwrap() / 1000;
                s >= week.0 && s < week.1
            })
            .count();
        let shown_events = attribute_after(&html, "<section id=\"events\"", "data-events");
        assert_eq!(shown_events, sent.to_string(), "{tz}: events of the week");
    }
}

#[tokio::test]
async fn the_overviews_links_carry_each_viewers_own_token_only() {
    let app = spawn_app("dashboard_week_tokens").await;
    seed(&app).await;
    let framed = link(&app, "read_key_a", json!({})).await;
    let token = framed.split("token=").nth(1).unwrap();
    let html = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().text().await.unwrap()
    };
    // Framed first: its week is read and kept, and its links carry its token.
    let inside = html(
        app.http
            .get(format!("{}{framed}", app.base))
            .header("sec-fetch-dest", "iframe"),
    )
    .await;
    assert!(inside.contains("data-meter=\"calls\""), "{inside}");
    assert!(inside.contains(&format!("token={token}")));
    // Its zone form keeps the token too.
    assert!(
        inside.contains(&format!("name=\"token\" value=\"{token}\"")),
        "{inside}"
    );
    // The same week for a viewer with a session: its links carry no token.
    let other = link(&app, "read_key_a", json!({})).await;
    let cookie = session_cookie(&app, &other).await;
    let page = html(
        app.http
            .get(format!("{}/dashboard", app.base))
            .header("cookie", &cookie),
    )
    .await;
    assert!(page.contains("data-meter=\"calls\""), "{page}");
    assert!(!page.contains("token="), "another viewer's token: {page}");
    assert!(
        !page.contains("name=\"token\""),
        "another viewer's token: {page}"
    );
    // The zone is chosen on the page: a form that sends `tz`, showing the zone in use.
    let zoned = html(
        app.http
            .get(format!("{}/dashboard?tz=Europe/Paris", app.base))
            .header("cookie", &cookie),
    )
    .await;
    assert!(
        zoned.contains("name=\"tz\" value=\"Europe/Paris\""),
        "{zoned}"
    );
    assert!(page.contains("name=\"tz\" value=\"UTC\""), "{page}");
}

#[tokio::test]
async fn a_kept_week_is_served_at_once_and_read_again_in_the_background_after_a_minute() {
    let app = spawn_app("dashboard_week_refresh").await;
    seed(&app).await;
    let url = link(&app, "read_key_a", json!({})).await;
    let cookie = session_cookie(&app, &url).await;
    let events_shown = || async {
        let html = with_cookie(&app, "/dashboard", &cookie).await;
        let html = html.text().await.unwrap();
        let shown = attribute_after(&html, "<section id=\"events\"", "data-events");
        shown.parse::<u64>().unwrap()
    };
    let before = events_shown().await;
    assert_eq!(before, 1242, "the seeded events");
    let (status, answer) = app
        .post_events("ingest_key_a", &common::events("late", "c2", 3))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(events_shown().await, before, "kept for a minute");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        events_shown().await,
        before,
        "a stale week is served while it is read again"
    );
    let started = Instant::now();
    loop {
        let shown = events_shown().await;
        if shown == before + 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the week read again: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
