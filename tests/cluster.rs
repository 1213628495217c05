//! meterhouse on a real ClickHouse cluster: ZooKeeper and four `clickhouse-server` processes
//! forming 2 shards × 2 replicas on loopback (tests/common/cluster.rs).
//!
//! - The same events give the same JSON on the cluster as on one server, for every usage,
//!   charge, billing-state, time-series and vendor answer compared, and each customer's rows sit
//!   on one shard, on both of its replicas.
//! - Two meterhouse replicas sharing their dedup through Redis take events from retrying clients
//!   while a ClickHouse replica is killed and brought back, then while ZooKeeper is: a shard
//!   short of its quorum refuses writes (503) and still answers reads, and at the end every
//!   acknowledged event is stored once, on both replicas of its shard, and counted once. A
//!   service started while a node is down uses that node once it answers.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::cluster::{CLUSTER, LocalCluster};
use common::{
    Service, TestApp, clickhouse_url, free_port, free_server_port, get_json, post_ok, scratch_dir,
    serve_process_on, spawn_retrying_clients_over, spawn_with, start_redis, test_config,
    wait_ready, wait_redis,
};
use meterhouse::store::Compacted;
use meterhouse::store::cluster::shard_of;
use serde_json::{Value, json};

/// One cluster at a time in this binary: each takes five processes of a 2-core machine.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CUSTOMERS: usize = 6;

/// A plan over the test tenant's meters and a distinct-users meter, and a subscription per
/// customer started 10 days before `now`.
async fn catalog(app: &TestApp, start: chrono::DateTime<Utc>) {
    post_ok(
        app,
        "/v1/meters",
        json!({"slug": "users", "name": "Users", "event_type": "api_call",
        "aggregation": "unique_count", "value_property": "user"}),
    )
    .await;
    post_ok(app, "/v1/plans", json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
          {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "10",
           "tiers": [{"up_to": "100", "unit_amount": "0.002", "flat_amount": "0"}, {"up_to": null, "unit_amount": "0.001", "flat_amount": "0"}]},
          {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
           "package_amount": "0.50", "rounding": "up", "group_by": ["model"]},
          {"code": "users", "type": "usage", "meter": "users", "model": "per_unit", "unit_amount": "1.25"}]})).await;
    for c in 0..CUSTOMERS {
        post_ok(
            app,
            "/v1/customers",
            json!({"external_id": format!("c{c}"), "name": format!("C{c}")}),
        )
        .await;
        post_ok(
            app,
            "/v1/subscriptions",
            json!({"external_id": format!("sub_{c}"), "customer": format!("c{c}"),
            "plan": "pro", "start_date": start.to_rfc3339()}),
        )
        .await;
    }
}

/// The same events for both stores: calls with users, token calls by model, over the last
/// nine days, for every customer.
fn events(now_ms: i64) -> Vec<Value> {
    let mut body = Vec::new();
    for i in 0..600usize {
        let customer = format!("c{}", i % CUSTOMERS);
        let ts = now_ms - 60_000 - (i as i64) * 1_297_000;
        body.push(
            json!({"id": format!("call-{i}"), "customer": customer, "type": "api_call",
            "timestamp": ts, "properties": {"user": format!("u{}", i % 17)}}),
        );
        if i % 3 == 0 {
            let model = ["gpt-x", "small"][i % 2];
            body.push(
                json!({"id": format!("tok-{i}"), "customer": customer, "type": "llm_call",
                "timestamp": ts, "properties": {"tokens": 100 + i, "model": model}}),
            );
        }
    }
    body
}

/// The answers compared between the two stores.
fn paths(now: chrono::DateTime<Utc>) -> Vec<String> {
    let from = (now - TimeDelta::days(9)).format("%Y-%m-%dT00:00:00Z");
    let to = (now + TimeDelta::days(1)).format("%Y-%m-%dT00:00:00Z");
    let mut paths = Vec::new();
    for c in 0..CUSTOMERS {
        paths.push(format!("/v1/subscriptions/sub_{c}/usage"));
        paths.push(format!("/v1/customers/c{c}/billing_state"));
        paths.push(format!("/v1/customers/c{c}/usage"));
        paths.push(format!(
            "/lago/api/v1/customers/c{c}/current_usage?external_subscription_id=sub_{c}"
        ));
    }
    paths.push(format!("/v1/subscriptions/sub_1/usage?from={from}&to={to}"));
    for meter in ["calls", "tokens", "users"] {
        for window in ["day", "hour"] {
            paths.push(format!(
                "/v1/meters/{meter}/query?from={from}&to={to}&window_size={window}"
            ));
        }
    }
    paths.push(format!(
        "/v1/meters/tokens/query?from={from}&to={to}&window_size=day&group_by=model"
    ));
    paths.push(format!(
        "/v1/meters/users/query?from={from}&to={to}&window_size=day&customer=c2"
    ));
    paths
}

/// Every answer of [`paths`] from the cluster's service equals the one server's.
async fn compare(clustered: &TestApp, single: &TestApp, now: chrono::DateTime<Utc>, when: &str) {
    for path in paths(now) {
        let (a, on_cluster) = get_json(clustered, &path, "admin_key_a").await;
        let (b, on_one) = get_json(single, &path, "admin_key_a").await;
        assert_eq!((a, b), (200, 200), "{path}: {on_cluster} / {on_one}");
        assert_eq!(steady(on_cluster), steady(on_one), "{path}, {when}");
    }
}

/// Seals every closed day of `store`'s shard (or server) into the day grain, as maintenance
/// would once they are old: the marks of the days the test's (late) events re-opened are
/// dropped first (their rows are all in the hour rollup, which the seal reads).
async fn seal_days(store: &meterhouse::store::Store) {
    drop_reopening_marks(store).await;
    let compacted = store
        .compact_days(30, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(compacted.sealed >= 5, "{compacted:?}");
}

/// Drops the day grain's re-opening marks of `store`'s shard (or server).
async fn drop_reopening_marks(store: &meterhouse::store::Store) {
    store
        .client()
        .query("ALTER TABLE rollup_days_reopened DROP PARTITION tuple()")
        .execute()
        .await
        .unwrap();
}

/// `value` without what depends on the moment it was answered.
fn steady(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        for moment in [
            "as_of",
            "generated_at",
            "computed_at",
            "from_datetime",
            "to_datetime",
        ] {
            map.remove(moment);
        }
        for (_, v) in map.iter_mut() {
            *v = steady(v.take());
        }
    } else if let Value::Array(items) = &mut value {
        for v in items.iter_mut() {
            *v = steady(v.take());
        }
    }
    value
}

/// Waits until both replicas of every shard hold what was written to either.
async fn sync_replicas(cluster: &LocalCluster, database: &str) {
    for i in 0..cluster.nodes.len() {
        for table in ["events", "usage_samples", "usage_rollup_hour"] {
            cluster
                .query(i, &format!("SYSTEM SYNC REPLICA {database}.{table}"))
                .await;
        }
    }
}

/// `SELECT count(), uniqExact(id)` of events per node.
async fn stored(cluster: &LocalCluster, database: &str) -> Vec<(u64, u64)> {
    let mut per_node = Vec::new();
    for i in 0..cluster.nodes.len() {
        let text = cluster
            .query(
                i,
                &format!("SELECT count(), uniqExact(id) FROM {database}.events"),
            )
            .await;
        let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        per_node.push((numbers.next().unwrap(), numbers.next().unwrap()));
    }
    per_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_answers_exactly_as_one_server() {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = LocalCluster::start("same-answers", 2, 2).await;
    // Every read from storage: the answers kept in memory would hide where rows are.
    let mut config = test_config("cluster_same", &cluster.urls());
    config.store.cluster = Some(CLUSTER.into());
    config.usage_cache_customers = 0;
    // The day grain is written below, shard by shard.
    config.rollup_maintenance_every_s = 0;
    let clustered = spawn_with(config, false).await;
    let mut config = test_config("cluster_single", &clickhouse_url());
    config.usage_cache_customers = 0;
    config.rollup_maintenance_every_s = 0;
    let single = spawn_with(config, true).await;
    let now = Utc::now();
    let start = chrono::DateTime::from_timestamp(now.timestamp() - 10 * 86_400, 0).unwrap();
    let body = Value::Array(events(now.timestamp_millis()));
    for app in [&clustered, &single] {
        catalog(app, start).await;
        for chunk in body.as_array().unwrap().chunks(250) {
            let (status, ack) = app.post_events("ingest_key_a", &json!(chunk)).await;
            assert_eq!(status, 202, "{ack}");
        }
    }

    compare(&clustered, &single, now, "from hours and samples").await;
    // The closed days compacted into the day grain on one server and on shard 0 only: each
    // shard reads its own grain (shard 1 has none, and reads its hours).
    let cluster_store = clustered.store().await;
    for shard in cluster_store.shards() {
        drop_reopening_marks(&shard).await;
    }
    for store in [&cluster_store.shards()[0], &single.store().await] {
        seal_days(store).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    compare(&clustered, &single, now, "with shard 0's days sealed").await;

    // A re-opened day is written again for good only once every replica of its shard holds the
    // new rows and has deleted the old: until then the day stays re-opened (read from the hour
    // rollup), as a read on a replica behind would count it twice, or not at all.
    let database = "test_cluster_same";
    let shard0 = &cluster_store.shards()[0];
    let first = first_of(&cluster, 0);
    let other = (0..cluster.nodes.len())
        .find(|&i| i != first && cluster.nodes[i].shard == 0)
        .unwrap();
    let customer = (0..CUSTOMERS)
        .map(|i| format!("c{i}"))
        .find(|c| shard_of("acme", c, 2) == 0)
        .unwrap();
    let now_s = now.timestamp();
    let day_s = (now_s / 86_400 - 5) * 86_400;
    let marks = format!(
        "SELECT count() FROM {database}.rollup_days_reopened WHERE customer = '{customer}'"
    );
    cluster
        .query(
            first,
            &format!(
                "INSERT INTO {database}.rollup_days_reopened VALUES \
                 ('acme', '{customer}', toDateTime({day_s}), toDateTime({}))",
                now_s - 600
            ),
        )
        .await;
    let held = format!("{database}.usage_rollup_day");
    // Held back: its deletions and fetches (a replica may fetch a part another replica mutated
    // instead of mutating its own), then its fetches only (the rows written again).
    for stops in [&["MERGES", "FETCHES"][..], &["FETCHES"]] {
        let stop = stops.join(", ");
        for what in stops {
            cluster
                .query(other, &format!("SYSTEM STOP {what} {held}"))
                .await;
        }
        let round = shard0.compact_days(30, 1_000, Duration::from_secs(3)).await;
        assert!(
            matches!(
                round,
                Ok(Compacted {
                    resealed: 0,
                    deferred: 1,
                    ..
                })
            ),
            "{stop}: {round:?}"
        );
        assert_eq!(cluster.query(first, &marks).await.trim(), "1", "{stop}");
        for what in stops {
            cluster
                .query(other, &format!("SYSTEM START {what} {held}"))
                .await;
        }
        cluster
            .query(other, &format!("SYSTEM SYNC REPLICA {held}"))
            .await;
    }
    let round = shard0
        .compact_days(30, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((round.resealed, round.deferred), (1, 0), "{round:?}");
    // The marks' deletion is done: on 18.16 `system.mutations` of a replicated table may say so
    // a moment before the part holding them is rewritten.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.query(first, &marks).await.trim() != "0" {
        assert!(Instant::now() < deadline, "the marks stay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = format!(
        "SELECT count() FROM {held} WHERE customer = '{customer}' AND bucket = toDateTime({day_s})"
    );
    let written = cluster.query(first, &rows).await;
    assert_ne!(written.trim(), "0");
    assert_eq!(written, cluster.query(other, &rows).await);
    compare(
        &clustered,
        &single,
        now,
        "with a day of shard 0 written again",
    )
    .await;

    // Each customer's rows on its shard only, on both replicas; every shard holds some.
    sync_replicas(&cluster, database).await;
    let total = body.as_array().unwrap().len() as u64;
    let per_node = stored(&cluster, database).await;
    let by_shard: BTreeMap<usize, Vec<(u64, u64)>> =
        cluster
            .nodes
            .iter()
            .zip(&per_node)
            .fold(BTreeMap::new(), |mut m, (n, c)| {
                m.entry(n.shard).or_default().push(*c);
                m
            });
    let mut sum = 0;
    for (shard, replicas) in &by_shard {
        assert_eq!(replicas[0], replicas[1], "shard {shard}'s replicas differ");
        assert_eq!(
            replicas[0].0, replicas[0].1,
            "shard {shard} holds an event twice"
        );
        assert!(replicas[0].0 > 0, "shard {shard} holds nothing");
        sum += replicas[0].0;
    }
    assert_eq!(sum, total);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let customers = cluster
            .query(
                i,
                &format!("SELECT DISTINCT customer FROM {database}.events"),
            )
            .await;
        for customer in customers.lines() {
            assert_eq!(
                shard_of("acme", customer, 2),
                node.shard,
                "{customer} on node {i}"
            );
        }
    }
    clustered.shutdown().await;
    single.shutdown().await;
}

/// The first node of `shard`.
fn first_of(cluster: &LocalCluster, shard: usize) -> usize {
    (0..cluster.nodes.len())
        .find(|&i| cluster.nodes[i].shard == shard)
        .unwrap()
}

/// `meterhouse serve --cluster` on `port`, sharing its dedup through `redis`.
fn serve(port: u16, cluster: &LocalCluster, redis: &str) -> Service {
    serve_process_on(
        port,
        &cluster.urls(),
        "",
        "test_cluster_faults",
        &[
            "--cluster",
            CLUSTER,
            "--redis-url",
            redis,
            "--usage-cache-customers",
            "0",
        ],
    )
}

/// POSTs one event of `customer` until `want` is answered (at most 60 s); the status seen.
async fn post_until(http: &reqwest::Client, base: &str, customer: &str, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut status = 0;
    while Instant::now() < deadline {
        let id = format!("probe-{}", rand::random::<u64>());
        let body = json!([{"id": id, "customer": customer, "type": "api_call"}]);
        let sent = http
            .post(format!("{base}/v1/events"))
            .bearer_auth("ingest_key_a")
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        status = sent.map(|r| r.status().as_u16()).unwrap_or(0);
        if status == want {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    status
}

/// The `calls` total the replica at `base` reports for `customer` over the last two days.
async fn calls_of(http: &reqwest::Client, base: &str, customer: &str) -> (u16, u64) {
    let now = Utc::now();
    let url = format!(
        "{base}/v1/meters/calls/query?from={}&to={}&window_size=day&customer={customer}",
        (now - TimeDelta::days(2)).format("%Y-%m-%dT00:00:00Z"),
        (now + TimeDelta::days(1)).format("%Y-%m-%dT00:00:00Z"),
    );
    let r = http
        .get(url)
        .bearer_auth("read_key_a")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    let total = body["data"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|p| {
                    p["value"]
                        .as_str()
                        .unwrap_or("0")
                        .parse::<rust_decimal::Decimal>()
                        .unwrap()
                })
                .sum::<rust_decimal::Decimal>()
                .try_into()
                .unwrap()
        })
        .unwrap_or(0);
    (status, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_or_doubled_when_a_replica_or_zookeeper_dies() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = LocalCluster::start("faults", 2, 2).await;
    let redis_port = free_port();
    let _redis = start_redis(redis_port, &scratch_dir("cluster-redis"));
    let redis = format!("redis://127.0.0.1:{redis_port}");
    wait_redis(&redis).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let ports = [free_server_port(), free_server_port()];
    let mut services: Vec<Service> = Vec::new();
    for port in ports {
        services.push(serve(port, &cluster, &redis));
    }
    let bases: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    );
    for base in bases.iter() {
        wait_ready(&http, base).await;
    }
    // A customer of each shard, and the nodes of shard 0.
    let on = |shard| {
        (0..8)
            .map(|c| format!("c{c}"))
            .find(|c| shard_of("acme", c, 2) == shard)
            .unwrap()
    };
    let (c0, c1) = (on(0), on(1));
    let shard0: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| cluster.nodes[i].shard == 0)
        .collect();

    let patience = Duration::from_secs(180);
    let (clients, tally) =
        spawn_retrying_clients_over(&http, &bases, (4, 40, 25), 8, "e", patience);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A replica of shard 0 dies mid-ingest: its shard's writes are refused, the other shard's
    // go on, and both shards' reads are answered.
    cluster.kill_node(shard0[1]);
    assert_eq!(
        post_until(&http, &bases[0], &c0, 503).await,
        503,
        "shard 0 short of its quorum"
    );
    // Shard 1's writes go on, each taken at its first attempt.
    for _ in 0..3 {
        let id = format!("probe-{}", rand::random::<u64>());
        let body = json!([{"id": id, "customer": c1, "type": "api_call"}]);
        let sent = http
            .post(format!("{}/v1/events", bases[1]))
            .bearer_auth("ingest_key_a")
            .json(&body)
            .send()
            .await;
        let status = sent.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 202, "shard 1 takes writes");
    }
    assert_eq!(
        calls_of(&http, &bases[0], &c0).await.0,
        200,
        "shard 0 still answers reads"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_node(shard0[1]).await;
    assert_eq!(
        post_until(&http, &bases[0], &c0, 202).await,
        202,
        "shard 0 writes again"
    );

    // ZooKeeper dies: writes are refused, reads answered; it comes back: writes are taken.
    cluster.kill_zookeeper();
    assert_eq!(
        post_until(&http, &bases[1], &c1, 503).await,
        503,
        "no writes without ZooKeeper"
    );
    assert_eq!(
        calls_of(&http, &bases[1], &c1).await.0,
        200,
        "reads go on without ZooKeeper"
    );
    cluster.restart_zookeeper().await;
    assert_eq!(
        post_until(&http, &bases[1], &c1, 202).await,
        202,
        "writes again with ZooKeeper"
    );

    let mut acknowledged = HashSet::new();
    for c in clients {
        acknowledged.extend(c.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 4 * 40 * 25);
    assert!(
        tally.refused.load(Relaxed) > 0,
        "the clients met the faults"
    );

    // Every acknowledged event once, on both replicas of its shard, and counted once.
    let database = "test_cluster_faults";
    sync_replicas(&cluster, database).await;
    let per_node = stored(&cluster, database).await;
    for shard in 0..2 {
        let replicas: Vec<(u64, u64)> = (0..cluster.nodes.len())
            .filter(|&i| cluster.nodes[i].shard == shard)
            .map(|i| per_node[i])
            .collect();
        assert_eq!(replicas[0], replicas[1], "shard {shard}'s replicas differ");
        assert_eq!(
            replicas[0].0, replicas[0].1,
            "shard {shard} holds an event twice"
        );
    }
    let mut ids = HashSet::new();
    for (i, node) in cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.replica == 0)
    {
        let text = cluster
            .query(
                i,
                &format!("SELECT id FROM {database}.events WHERE id LIKE 'e%'"),
            )
            .await;
        for id in text.lines() {
            assert!(
                ids.insert(id.to_owned()),
                "{id} stored twice (shard {})",
                node.shard
            );
        }
    }
    assert_eq!(
        ids, acknowledged,
        "exactly the acknowledged events are stored"
    );
    // And each is counted once by the reads, on every replica of the service.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for id in &acknowledged {
        let (n, i) = {
            let mut parts = id[1..].split('-');
            let n: usize = parts.next().unwrap().parse().unwrap();
            let _request = parts.next();
            (n, parts.next().unwrap().parse::<usize>().unwrap())
        };
        *expected.entry(format!("c{}", (n + i) % 8)).or_default() += 1;
    }
    for (customer, want) in &expected {
        let probed = cluster
            .query(
                first_of(&cluster, shard_of("acme", customer, 2)),
                &format!("SELECT count() FROM {database}.events WHERE customer = '{customer}' AND id LIKE 'probe-%'"),
            )
            .await
            .trim()
            .parse::<u64>()
            .unwrap();
        for base in bases.iter() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, total) = calls_of(&http, base, customer).await;
                if status == 200 && total == want + probed {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{customer} on {base}: {total} != {}",
                    want + probed
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    // A service started while a node is down uses it once it answers: with the other replica
    // of that shard killed next, the shard's reads go to the node that joined.
    let (status, before) = calls_of(&http, &bases[0], &c0).await;
    assert_eq!(status, 200);
    cluster.kill_node(shard0[0]);
    let port = free_server_port();
    services.push(serve(port, &cluster, &redis));
    let late = format!("http://127.0.0.1:{port}");
    wait_ready(&http, &late).await;
    cluster.restart_node(shard0[0]).await;
    // A ping or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(shard0[1]);
    // Reads go where the last pings said: within a ping or two of the kill.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut read = calls_of(&http, &late, &c0).await;
    while read.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        read = calls_of(&http, &late, &c0).await;
    }
    assert_eq!(
        read,
        (200, before),
        "shard 0 read from the node that joined"
    );
    drop(services);
}
