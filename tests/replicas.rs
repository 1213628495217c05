//! Replicas that share their dedup through Redis, as real processes: one ClickHouse, one
//! `redis-server`, three `meterhouse serve`. Clients spread their requests over the replicas
//! and retry each unacknowledged one on another; one replica is killed (SIGKILL) and started
//! again, and Redis is killed and started again empty. Every acknowledged id is stored exactly
//! once, and every replica reports what a process holding nothing in memory reports. A second
//! process without shared dedup refuses to start beside one.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    Service, admin, free_port, free_server_port, scratch_dir, serve_log, serve_process,
    start_redis, test_config, wait_ready, wait_redis,
};
use meterhouse::ingest::ledger::Verdict;
use meterhouse::ingest::shared::{SharedLedger, generation_key};
use meterhouse::store::Store;
use serde_json::{Value, json};

/// The epoch Redis holds for the test database: written each time it is loaded.
async fn epoch(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(format!(
            "mh:test_replicas:{}",
            meterhouse::ingest::shared::EPOCH
        ))
        .query_async(&mut connection)
        .await
        .ok()?
}

const REPLICAS: usize = 3;
const CLIENTS: usize = 16;
const REQUESTS: usize = 30;
const EVENTS: usize = 20;

/// The quantity and total of sub_1's current period, as the replica at `base` reports them.
async fn usage(http: &reqwest::Client, base: &str) -> Option<(String, String)> {
    let response = http
        .get(format!("{base}/v1/subscriptions/sub_1/usage"))
        .bearer_auth("read_key_a")
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    Some((
        body["charges"][0]["quantity"].as_str()?.to_owned(),
        body["total"].as_str()?.to_owned(),
    ))
}

/// Waits until every replica reports `expected`, at most `within`; returns how long it took.
async fn converge(
    http: &reqwest::Client,
    bases: &[String],
    expected: &(String, String),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut reported = Vec::new();
        for base in bases {
            reported.push(usage(http, base).await);
        }
        if reported.iter().all(|r| r.as_ref() == Some(expected)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "replicas do not report {expected:?} after {within:?}: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_store_each_acknowledged_event_once_through_kills_and_a_redis_restart() {
    const DB: &str = "test_replicas";
    let store = common::empty_database(&test_config("replicas", &common::clickhouse_url())).await;
    let redis_port = free_server_port();
    let redis_dir = scratch_dir("redis");
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut redis = start_redis(redis_port, &redis_dir);
    wait_redis(&redis_url).await;
    let shared = ["--redis-url", redis_url.as_str()];
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let mut replicas: Vec<Service> = ports
        .iter()
        .map(|&port| serve_process(port, DB, &shared))
        .collect();
    let bases: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for base in bases.iter() {
        wait_ready(&http, base).await;
    }
    admin(
        &http,
        &bases[0],
        "/v1/plans",
        json!({"code": "pro", "name": "Pro", "currency": "USD",
        "interval": "month", "prices": [{"code": "calls", "type": "usage", "meter": "calls",
        "model": "per_unit", "unit_amount": "0.01"}]}),
    )
    .await;
    admin(
        &http,
        &bases[0],
        "/v1/customers",
        json!({"external_id": "c1"}),
    )
    .await;
    let start = chrono::Utc::now() - chrono::TimeDelta::days(1);
    admin(
        &http,
        &bases[0],
        "/v1/subscriptions",
        json!({"external_id": "sub_1",
        "customer": "c1", "plan": "pro", "start_date": start.to_rfc3339()}),
    )
    .await;
    let nothing = ("0".to_owned(), "0.00".to_owned());
    converge(&http, &bases, &nothing, Duration::from_secs(10)).await;

    let shape = (CLIENTS, REQUESTS, EVENTS);
    let patience = Duration::from_secs(120);
    let (clients, tally) = common::spawn_retrying_clients(&http, &bases, shape, "r", patience);
    let at = |share: usize| {
        let tally = tally.clone();
        async move {
            while tally.done.load(Ordering::Relaxed) < CLIENTS * REQUESTS * share / 8 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    // A replica killed mid-stream, no chance to flush, then started again.
    at(2).await;
    replicas[1].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas[1] = serve_process(ports[1], DB, &shared);
    // Redis killed, and started again empty.
    at(4).await;
    let epoch_before = epoch(&redis_url).await;
    assert!(
        epoch_before.is_some(),
        "redis holds the epoch of its first load"
    );
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis = start_redis(redis_port, &redis_dir);
    let mut acknowledged = HashSet::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(
        tally.refused.load(Ordering::Relaxed) > 0,
        "the kills must have been felt by clients"
    );
    // The restarted replica came up, Redis restarting under it or not.
    wait_ready(&http, &bases[1]).await;
    // Redis came back empty, and a replica loaded the accepted ids into it again.
    let reloaded = epoch(&redis_url).await;
    assert!(
        reloaded.is_some() && reloaded != epoch_before,
        "the emptied redis was loaded again: {epoch_before:?} then {reloaded:?}"
    );
    assert_eq!(acknowledged.len(), CLIENTS * REQUESTS * EVENTS);
    let stored = common::stored_ids(&store, DB).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "no event stored twice");
    assert_eq!(
        unique, acknowledged,
        "exactly the acknowledged events are stored"
    );

    // Every replica agrees with a process that keeps nothing in memory.
    let fresh_port = free_port();
    let fresh_base = format!("http://127.0.0.1:{fresh_port}");
    let fresh_args = [shared[0], shared[1], "--usage-cache-customers", "0"];
    let _fresh = serve_process(fresh_port, DB, &fresh_args);
    wait_ready(&http, &fresh_base).await;
    let expected = usage(&http, &fresh_base)
        .await
        .expect("the fresh process's usage");
    assert_eq!(expected.0, acknowledged.len().to_string());
    converge(&http, &bases, &expected, Duration::from_secs(30)).await;

    // A write through one replica shows in every replica's reads within the staleness bound.
    let one = json!([{"id": "after-all", "customer": "c1", "type": "api_call"}]);
    let response = http
        .post(format!("{}/v1/events", bases[2]))
        .bearer_auth("ingest_key_a")
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let count = (acknowledged.len() + 1).to_string();
    let total = format!("{:.2}", (acknowledged.len() + 1) as f64 / 100.0);
    converge(&http, &bases, &(count, total), Duration::from_secs(2)).await;
    drop(replicas);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_that_keeps_ids_in_its_own_memory_refuses_to_start() {
    const DB: &str = "test_replicas_alone";
    common::empty_database(&test_config("replicas_alone", &common::clickhouse_url())).await;
    let http = reqwest::Client::new();
    let first_port = free_port();
    let _first = serve_process(first_port, DB, &[]);
    wait_ready(&http, &format!("http://127.0.0.1:{first_port}")).await;
    let redis_port = free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let _redis = start_redis(redis_port, &scratch_dir("redis-alone"));
    wait_redis(&redis_url).await;
    // Neither another embedded process nor a shared one may ingest beside it.
    for extra in [vec![], vec!["--redis-url", redis_url.as_str()]] {
        let port = free_port();
        let mut second = serve_process(port, DB, &extra);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = second.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the second process ({extra:?}) did not stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!status.success(), "{extra:?}");
        let log = serve_log(port);
        assert!(
            log.contains("--redis-url") && log.contains(DB),
            "the refusal says why and what to set: {log}"
        );
    }
}

/// Redis's own clock, in epoch ms (the generations of ids follow it).
async fn redis_now_ms(redis: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await.unwrap();
    seconds * 1000 + micros / 1000
}

/// Leaves in Redis what replica `replica` leaves when killed while its batch `batch_id` of `ids`
/// was being inserted: the ids taken by the batch, and the batch pending.
async fn leave_claim(redis_url: &str, database: &str, replica: &str, batch_id: u64, ids: &[&str]) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("mh:{database}:");
    // Into the generation of Redis's clock that the service writes now.
    let generation = generation_key(
        database,
        meterhouse::config::Config::defaults().dedup_window(),
        redis_now_ms(&mut redis).await,
    );
    for id in ids {
        let _: () = redis::cmd("HSET")
            .arg(&generation)
            .arg(
                meterhouse::ingest::dedup::key("acme", id)
                    .to_be_bytes()
                    .as_slice(),
            )
            .arg(format!("{batch_id:016x}"))
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let stamped_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}b:{batch_id:016x}"))
        .arg(format!("p:{replica}:{stamped_ms}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(format!("{prefix}batches"))
        .arg(format!("{batch_id:016x}"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Sends `ids` until acknowledged (at most 60 s: a dead replica's batches are settled once any
/// attempt it started has ended, 15 s after its heartbeat expired); the acknowledgement and how
/// many refusals came first.
async fn send_until_acknowledged(
    http: &reqwest::Client,
    base: &str,
    ids: &[&str],
) -> (Value, usize) {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "customer": "c1", "type": "api_call"}))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        let response = http
            .post(format!("{base}/v1/events"))
            .bearer_auth("ingest_key_a")
            .json(&events)
            .send()
            .await
            .unwrap();
        if response.status() == 202 {
            return (response.json().await.unwrap(), refused);
        }
        assert_eq!(response.status(), 503);
        refused += 1;
        assert!(Instant::now() < deadline, "{ids:?} never acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stores event `id` of customer c1 as batch `batch_id`'s insert would have, now.
async fn insert_event(store: &Store, id: &str, batch_id: u64) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    store
        .client()
        .query(
            "INSERT INTO events (tenant, id, customer, event_type, ts_ms, ts, properties, ingested_ms, ingested_at, batch_id, \
             sample_meter, sample_value, sample_value_str, sample_group_keys, sample_group_values) \
             SELECT 'acme', ?, 'c1', 'api_call', toInt64(?), toDateTime(intDiv(toInt64(?), 1000)), '{}', \
             toInt64(?), toDateTime(intDiv(toInt64(?), 1000)), toUInt64(?), ['calls'], [toDecimal128(1, 12)], [''], [[]], [[]]",
        )
        .bind(id)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .bind(batch_id)
        .execute()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_claims_are_settled_against_clickhouse_before_they_are_taken_over() {
    const DB: &str = "test_replicas_dead";
    let store =
        common::empty_database(&test_config("replicas_dead", &common::clickhouse_url())).await;
    let redis_port = free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let _redis = start_redis(redis_port, &scratch_dir("redis-dead"));
    wait_redis(&redis_url).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _replica = serve_process(port, DB, &["--redis-url", &redis_url]);
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;

    // The dead replica's first batch landed (its row is in ClickHouse, written as an insert
    // writes it); its second did not.
    let (landed_batch, lost_batch) = (0x5eed_0001_u64, 0x5eed_0002_u64);
    insert_event(&store, "landed-1", landed_batch).await;
    // A third batch spanning two months landed in part: an insert writes one part per month.
    let split_batch = 0x5eed_0004_u64;
    insert_event(&store, "split-a", split_batch).await;
    leave_claim(
        &redis_url,
        DB,
        "ghost",
        split_batch,
        &["split-a", "split-b"],
    )
    .await;
    leave_claim(&redis_url, DB, "ghost", landed_batch, &["landed-1"]).await;
    leave_claim(&redis_url, DB, "ghost", lost_batch, &["lost-1"]).await;
    // A replica still alive (its heartbeat expires in 3 s) holds its claim until then.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("mh:{DB}:r:slow"))
        .arg(1)
        .arg("PX")
        .arg(3000)
        .query_async(&mut redis)
        .await
        .unwrap();
    leave_claim(&redis_url, DB, "slow", 0x5eed_0003, &["held-1"]).await;

    // The retry of the landed batch is a duplicate, the retry of the lost one is accepted:
    // neither is counted twice, neither is lost.
    let (ack, _) = send_until_acknowledged(&http, &base, &["landed-1"]).await;
    assert_eq!(ack, json!({"accepted": 0, "duplicates": 1}));
    let (ack, _) = send_until_acknowledged(&http, &base, &["lost-1"]).await;
    assert_eq!(ack, json!({"accepted": 1, "duplicates": 0}));
    let (ack, _) = send_until_acknowledged(&http, &base, &["split-a", "split-b"]).await;
    assert_eq!(
        ack,
        json!({"accepted": 1, "duplicates": 1}),
        "settled id by id"
    );
    let (ack, refused) = send_until_acknowledged(&http, &base, &["held-1"]).await;
    assert_eq!(ack, json!({"accepted": 1, "duplicates": 0}));
    assert!(refused > 0, "a live replica's claim is not taken over");
    let mut stored = common::stored_ids(&store, DB).await;
    stored.sort();
    assert_eq!(
        stored,
        ["held-1", "landed-1", "lost-1", "split-a", "split-b"]
    );
    // Nothing of the dead replicas is left to settle.
    let left: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("mh:{DB}:batches"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A replica started while Redis is down waits for it (it is not up, so no load balancer sends
/// it anything), then serves as soon as Redis answers: nothing is accepted in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_serves_once_redis_answers() {
    const DB: &str = "test_replicas_redis_late";
    common::empty_database(&test_config(
        "replicas_redis_late",
        &common::clickhouse_url(),
    ))
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let redis_port = free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let port = free_server_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut replica = serve_process(port, DB, &["--redis-url", &redis_url]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        replica.0.try_wait().unwrap().is_none(),
        "{}",
        serve_log(port)
    );
    let events = json!([{"id": "late-1", "customer": "c1", "type": "api_call"}]);
    let sent = http
        .post(format!("{base}/v1/events"))
        .bearer_auth("ingest_key_a")
        .json(&events)
        .send()
        .await;
    assert!(
        sent.as_ref().map_or(true, |r| r.status() != 202),
        "nothing is accepted without Redis: {sent:?}"
    );
    let _redis = start_redis(redis_port, &scratch_dir("redis-late"));
    wait_redis(&redis_url).await;
    wait_ready(&http, &base).await;
    let sent = http
        .post(format!("{base}/v1/events"))
        .bearer_auth("ingest_key_a")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let again = http
        .post(format!("{base}/v1/events"))
        .bearer_auth("ingest_key_a")
        .json(&events)
        .send()
        .await
        .unwrap();
    let ack: Value = again.json().await.unwrap();
    assert_eq!(ack, json!({"accepted": 0, "duplicates": 1}));
}

/// Starts a service on `database` with `extra` arguments, sends `ids` until acknowledged, kills
/// the service; the acknowledgement.
async fn run_once(http: &reqwest::Client, database: &str, extra: &[&str], ids: &[&str]) -> Value {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut service = serve_process(port, database, extra);
    wait_ready(http, &base).await;
    let (ack, _) = send_until_acknowledged(http, &base, ids).await;
    service.kill();
    ack
}

/// A database run by replicas, then by one process that keeps ids in its own memory, then by
/// replicas again on the same Redis: the ids accepted in between are in ClickHouse only, and
/// the replica that starts loads them, so their retries stay duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_accepted_between_two_runs_of_replicas_stay_duplicates() {
    const DB: &str = "test_replicas_between";
    common::empty_database(&test_config("replicas_between", &common::clickhouse_url())).await;
    let http = reqwest::Client::new();
    let redis_port = free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let _redis = start_redis(redis_port, &scratch_dir("redis-between"));
    wait_redis(&redis_url).await;
    let shared = ["--redis-url", redis_url.as_str()];
    assert_eq!(
        run_once(&http, DB, &shared, &["r-1"]).await,
        json!({"accepted": 1, "duplicates": 0})
    );
    assert_eq!(
        run_once(&http, DB, &[], &["e-1", "e-2"]).await,
        json!({"accepted": 2, "duplicates": 0}),
        "one process alone, its ids in its own memory"
    );
    assert_eq!(
        run_once(&http, DB, &shared, &["e-1", "e-2", "r-1", "r-2"]).await,
        json!({"accepted": 1, "duplicates": 3}),
        "replicas again: what the process alone accepted is a duplicate"
    );
}

/// An id accepted through Redis is remembered for at least the dedup window and forgotten
/// within a window and a half (ids live in generations of half a window, scripts.rs), so what
/// Redis holds is bounded by the window; a retake after that is a new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ids_are_remembered_for_the_window_and_then_forgotten() {
    let store =
        common::empty_database(&test_config("replicas_window", &common::clickhouse_url())).await;
    meterhouse::store::migrate::run(&store).await.unwrap();
    let redis_port = free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let _redis = start_redis(redis_port, &scratch_dir("redis-window"));
    wait_redis(&redis_url).await;
    let window = Duration::from_secs(4);
    const HOUR: Duration = Duration::from_secs(3600);
    let key = |id: &str| meterhouse::ingest::dedup::key("acme", id);
    let verdict = async |ledger: &mut SharedLedger, batch_id: u64, id: &str| {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let verdicts = ledger.claim(batch_id, now_ms, &[key(id)]).await.unwrap();
        ledger
            .committed(batch_id, [key(id)].into_iter().collect())
            .await;
        // Only the ids not taken have a verdict.
        verdicts.get(&key(id)).copied().unwrap_or(Verdict::New)
    };
    // A Redis filled by a version that kept a key per id (its epoch under the old key) is
    // loaded again: an id stored in ClickHouse is a duplicate, though Redis never had it here.
    insert_event(&store, "stored-1", 7).await;
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("mh:{}:epoch", store.database()))
        .arg("00000000000000aa.1")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (mut ledger, heartbeat) = SharedLedger::open(&redis_url, store.database(), HOUR)
        .await
        .unwrap();
    ledger.prepare(&store).await.unwrap();
    assert_eq!(
        verdict(&mut ledger, 6, "stored-1").await,
        Verdict::Duplicate
    );
    heartbeat.abort();

    let (mut ledger, heartbeat) = SharedLedger::open(&redis_url, store.database(), window)
        .await
        .unwrap();
    ledger.prepare(&store).await.unwrap();

    // Generations span 2 s of Redis's clock: start just after one begins, so that each check
    // below has at least a second and a half of margin (lateness only helps the last one).
    let (begun, first) = loop {
        let now_ms = redis_now_ms(&mut redis).await;
        if now_ms % 2_000 < 100 {
            let into = Duration::from_millis((now_ms % 2_000) as u64);
            break (
                Instant::now() - into,
                generation_key(store.database(), window, now_ms),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(verdict(&mut ledger, 1, "e-1").await, Verdict::New);
    tokio::time::sleep(Duration::from_millis(2_100).saturating_sub(begun.elapsed())).await;
    assert_eq!(
        verdict(&mut ledger, 2, "e-1").await,
        Verdict::Duplicate,
        "within the window"
    );
    assert_eq!(verdict(&mut ledger, 3, "e-2").await, Verdict::New);
    // Three generations on: e-1's is no longer looked at (and is freed by this write), e-2's is.
    tokio::time::sleep(Duration::from_millis(6_500).saturating_sub(begun.elapsed())).await;
    assert_eq!(verdict(&mut ledger, 4, "e-1").await, Verdict::New);
    assert_eq!(verdict(&mut ledger, 5, "e-2").await, Verdict::Duplicate);
    let kept: bool = redis::cmd("EXISTS")
        .arg(&first)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!kept, "the generation out of use is freed");

    // Redis's clock stepped back (as if the generations used so far ran ahead of it): ids go
    // on into the newest generation used, where the next claim looks.
    let span_ms = meterhouse::ingest::shared::generation_span_ms(window);
    let ahead = redis_now_ms(&mut redis).await.div_euclid(span_ms) + 5;
    let _: () = redis::cmd("SET")
        .arg(format!("mh:{}:gmax:{span_ms}", store.database()))
        .arg(ahead)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(verdict(&mut ledger, 7, "e-3").await, Verdict::New);
    let written: bool = redis::cmd("HEXISTS")
        .arg(generation_key(store.database(), window, ahead * span_ms))
        .arg(key("e-3").to_be_bytes().as_slice())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(written, "written into the newest generation used");
    assert_eq!(verdict(&mut ledger, 8, "e-3").await, Verdict::Duplicate);
    heartbeat.abort();
}
