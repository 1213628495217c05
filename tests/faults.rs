//! Faults with real processes: the service killed with SIGKILL while 20 clients ingest, and a
//! throttled ClickHouse (a slow link between the service and the server). Every scenario ends
//! by checking the store: every acknowledged event exactly once.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    KEYS, Service, TestApp, clickhouse_url, free_port, scratch_dir, spawn_with, test_config,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `meterhouse serve` as its own process on `port`, on the shared test ClickHouse.
fn start_service(port: u16, database: &str) -> Service {
    common::serve_process(port, database, &[])
}

const CLIENTS: usize = 20;
const REQUESTS: usize = 25;
const EVENTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_of_the_service_exactly_once() {
    const DB: &str = "test_faults_kill9";
    // A handle on the database for checking, and a clean start. Not a service: a second
    // process keeping ids in its own memory would make the service refuse to start.
    let checker = common::empty_database(&test_config("faults_kill9", &clickhouse_url())).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut service = start_service(port, DB);
    common::wait_ready(&http, &base).await;

    let bases = Arc::new(vec![base.clone()]);
    let shape = (CLIENTS, REQUESTS, EVENTS);
    let patience = Duration::from_secs(90);
    let (clients, tally) = common::spawn_retrying_clients(&http, &bases, shape, "k", patience);
    // Mid-stream (a fifth of the requests acknowledged): SIGKILL, no chance to flush; then
    // start it again on the same port.
    while tally.done.load(Ordering::Relaxed) < CLIENTS * REQUESTS / 5 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    service.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let service = start_service(port, DB);

    let mut acknowledged = HashSet::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(
        tally.refused.load(Ordering::Relaxed) > 0,
        "the kill must have been felt by clients"
    );
    assert_eq!(acknowledged.len(), CLIENTS * REQUESTS * EVENTS);
    let stored = common::stored_ids(&checker, DB).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "no event stored twice");
    assert_eq!(
        unique, acknowledged,
        "exactly the acknowledged (and retried) events are stored"
    );
    // The killed process's batches were settled by its successor: none is left to settle, and
    // every stored event has its samples.
    let client = checker.client();
    let count = |sql: String| async move {
        let n: u64 = client.query(&sql).fetch_one().await.unwrap();
        n
    };
    let unsettled = count(format!(
        "SELECT count() FROM (SELECT writer FROM {DB}.ingest_writer_beats GROUP BY writer \
         HAVING max(settled_before_ms) < 9223372036854775807 AND max(beat) < now() - 3)"
    ));
    assert_eq!(unsettled.await, 0, "the killed writer is settled");
    let expected = count(format!(
        "SELECT toUInt64(sum(length(sample_meter))) FROM {DB}.events"
    ));
    let samples = count(format!("SELECT count() FROM {DB}.usage_samples"));
    assert_eq!(samples.await, expected.await);
    drop(service);
}

/// A TCP relay to `upstream` that passes at most `bytes_per_second` towards it: a slow link.
async fn slow_link(
    upstream: SocketAddr,
    bytes_per_second: usize,
    stop: Arc<AtomicBool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok((client, _)) = listener.accept().await else {
                break;
            };
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let chunk = (bytes_per_second / 20).max(1);
            tokio::spawn(async move {
                let mut buf = vec![0u8; chunk];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = server_write.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clickhouse_pushes_back_with_503_and_the_queue_stays_bounded() {
    const QUEUE_MAX: usize = 4_000;
    let url = clickhouse_url();
    let upstream: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // About 400 KB/s towards ClickHouse: a few thousand events a second.
    let relay = slow_link(upstream, 400_000, stop.clone()).await;
    let mut config = test_config("faults_slow", &format!("http://{relay}"));
    // Through the relay, the server's generated password is not found by URL: give it.
    config.store.clickhouse_password = meterhouse::store::local::password_of(&url).unwrap();
    config.queue_max_events = QUEUE_MAX;
    config.batch_max_events = 1_000;
    config.ack_timeout_ms = 20_000;
    let app = Arc::new(spawn_with(config, true).await);

    let (pushed_back, max_queue) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (app, max_queue, sampling) = (app.clone(), max_queue.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let text = app.get("/metrics", None).await.text().await.unwrap();
                let depth = text
                    .lines()
                    .find(|l| l.starts_with("meterhouse_queue_events "))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0) as usize;
                max_queue.fetch_max(depth, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for client in 0..16 {
        let (app, pushed_back) = (app.clone(), pushed_back.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            let mut request = 0;
            while Instant::now() < until {
                let ids: Vec<String> = (0..500).map(|i| format!("s{client}-{request}-{i}")).collect();
                let body: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "customer": "c1", "type": "api_call", "properties": {"pad": "x".repeat(64)}}))
                    .collect();
                let (status, answer) = app.post_events("ingest_key_a", &json!(body)).await;
                match status {
                    202 => acknowledged.extend(ids),
                    503 | 429 => {
                        pushed_back.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("unexpected {other}: {answer}"),
                }
                request += 1;
            }
            acknowledged
        }));
    }
    let mut acknowledged = HashSet::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(
        pushed_back.load(Ordering::Relaxed) > 0,
        "a slow store must push back on clients"
    );
    let peak = max_queue.load(Ordering::Relaxed);
    assert!(
        peak <= QUEUE_MAX,
        "queue reached {peak} events, bound {QUEUE_MAX}"
    );
    let stored = common::stored_ids(&app.store().await, "test_faults_slow").await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "no event stored twice");
    assert!(
        acknowledged.is_subset(&unique),
        "every acknowledged event is stored"
    );
    stop.store(true, Ordering::Relaxed);
    Arc::try_unwrap(app).ok().unwrap().shutdown().await;
}

/// A tmpfs of `megabytes` mounted at `dir` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, megabytes: u32) -> Self {
        let _ = Command::new("umount")
            .arg(&dir)
            .stderr(Stdio::null())
            .status();
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} needs root",
            dir.display()
        );
        Self(dir)
    }

    /// Makes `path` (under the disk) read-only or writable again, as a read-only bind mount
    /// over itself: writes fail with EROFS while ClickHouse keeps running.
    fn set_read_only(&self, path: &std::path::Path, read_only: bool) {
        let run = |args: &[&str]| {
            let status = Command::new("mount")
                .args(args)
                .arg(path)
                .arg(path)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "mount {args:?} {}",
                path.display()
            );
        };
        if read_only {
            run(&["--bind"]);
            // The kernel refuses (EBUSY) while a file is open for writing through the new
            // mount, which ClickHouse may do at any moment: try again until it is between
            // writes.
            let read_only = (0..100).any(|_| {
                let status = Command::new("mount")
                    .args(["-o", "remount,bind,ro"])
                    .arg(path)
                    .stderr(Stdio::null())
                    .status();
                let done = status.is_ok_and(|s| s.success());
                if !done {
                    std::thread::sleep(Duration::from_millis(50));
                }
                done
            });
            assert!(read_only, "remount read-only");
        } else {
            let status = Command::new("umount").arg(path).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "umount the read-only bind"
            );
        }
    }

    /// Fills the disk: a file grows until the device has no space left.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Sends `body` until it is acknowledged, as a client following Retry-After does.
async fn retry_until_acknowledged(app: &TestApp, body: &Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = app.post_events("ingest_key_a", body).await;
        if status == 202 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still refused once the disk is usable again: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_disk_acknowledges_nothing_it_did_not_store() {
    // Mounting a small disk needs root; CI runs as root, so there it always runs.
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: mounting a small disk needs root (run the suite as root to include it)"
        );
        return;
    }
    let disk = SmallDisk::mount(scratch_dir("diskfull"), 400);
    let mut clickhouse = common::start_clickhouse(disk.0.join("clickhouse"));
    let mut config = test_config("faults_disk", &clickhouse.url());
    config.ack_timeout_ms = 5_000;
    let app = spawn_with(config, true).await;
    let batch = |n: usize| -> (Vec<String>, Value) {
        let ids: Vec<String> = (0..200).map(|i| format!("d{n}-{i}")).collect();
        let body = ids
            .iter()
            .map(|id| json!({"id": id, "customer": "c1", "type": "api_call"}))
            .collect();
        (ids, Value::Array(body))
    };
    let (ids, body) = batch(0);
    assert_eq!(app.post_events("ingest_key_a", &body).await.0, 202);
    let mut acknowledged: HashSet<String> = ids.into_iter().collect();

    let filler = disk.fill();
    let mut refused = Vec::new();
    for n in 1..=5 {
        let (ids, body) = batch(n);
        let (status, answer) = app.post_events("ingest_key_a", &body).await;
        match status {
            202 => acknowledged.extend(ids),
            _ => {
                assert!(
                    answer["code"].is_string(),
                    "errors keep docs/api.md's shape: {answer}"
                );
                refused.push((n, status, answer["code"].clone()));
            }
        }
    }
    println!("refused while full: {refused:?}");
    assert!(!refused.is_empty(), "a full disk must refuse writes");
    assert!(
        refused
            .iter()
            .all(|(_, s, code)| *s == 503 && code == "unavailable"),
        "a full disk is a passing condition: 503 with Retry-After, {refused:?}"
    );

    // Space again: the refused batches, retried with the same ids, are stored once.
    std::fs::remove_file(filler).unwrap();
    for (n, _, _) in &refused {
        let (ids, body) = batch(*n);
        retry_until_acknowledged(&app, &body).await;
        acknowledged.extend(ids);
    }

    // A read-only data directory: the same promise.
    let data = disk.0.join("clickhouse/clickhouse/data");
    disk.set_read_only(&data, true);
    let (ids, body) = batch(100);
    let (status, answer) = app.post_events("ingest_key_a", &body).await;
    assert_eq!(
        (status, &answer["code"]),
        (503, &json!("unavailable")),
        "read-only: {answer}"
    );
    disk.set_read_only(&data, false);
    retry_until_acknowledged(&app, &body).await;
    acknowledged.extend(ids);

    let stored = common::stored_ids(&app.store().await, "test_faults_disk").await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "no event stored twice");
    assert_eq!(
        unique, acknowledged,
        "exactly the acknowledged events are stored"
    );
    app.shutdown().await;
    clickhouse.kill().await;
    drop(disk);
}

/// A second process pointed at a running service's data directory (`meterhouse backfill` with
/// the default `--data-dir`, say) refuses to start its own ClickHouse there, rather than stop
/// the one the service is using.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_clickhouse_in_use_is_not_stopped_by_another_process() {
    let data_dir = scratch_dir("owned-in-use");
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    let mut service = Service(
        Command::new(env!("CARGO_BIN_EXE_meterhouse"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--api-keys", KEYS])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meterhouse serve"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&http, &base).await;
    let refused = meterhouse::store::local::LocalClickHouse::start(&data_dir).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("is still running"), "{message}");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the service's ClickHouse is still up");
    service.kill();
}
