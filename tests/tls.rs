//! ClickHouse over TLS: `--clickhouse-url https://…` against a ClickHouse serving HTTPS with a
//! certificate from a test CA. A server whose certificate is not trusted is refused; trusted
//! through `SSL_CERT_FILE` (the usual way to add a CA), the service migrates, ingests and reads
//! over HTTPS.

mod common;

use std::process::{Command, Stdio};

use common::{KEYS, scratch_dir};
use meterhouse::store::Store;
use meterhouse::store::local::LocalClickHouse;
use serde_json::{Value, json};

/// A CA, and a certificate it signs for 127.0.0.1 and localhost; PEM files under `dir`:
/// (`ca.pem`, `server.pem`, `server.key`).
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "meterhouse test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_certificate = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_certificate = server.signed_by(&server_key, &issuer).unwrap();
    let paths = [
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ];
    std::fs::write(&paths[0], ca_certificate.pem()).unwrap();
    std::fs::write(&paths[1], server_certificate.pem()).unwrap();
    std::fs::write(&paths[2], server_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_works_over_https_to_a_clickhouse_it_trusts() {
    let dir = scratch_dir("tls");
    let _ = std::fs::remove_dir_all(&dir);
    let [ca, certificate, key] = certificates(&dir.join("pki"));
    let clickhouse = LocalClickHouse::start_with_tls(&dir, &certificate, &key)
        .await
        .expect("clickhouse with https");
    let https = clickhouse.https_url().unwrap();
    let password = meterhouse::store::local::password_of(&https).expect("owned here");

    // This process trusts the system's CAs only: the test CA's certificate is refused.
    let mut config = common::test_config("tls_untrusted", &https);
    config.store.clickhouse_password = password.clone();
    let refused = Store::new(&https, &config.store).connect().await;
    let message = format!(
        "{:?}",
        refused.err().expect("an untrusted certificate is refused")
    );
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    // `meterhouse serve` trusting the test CA through SSL_CERT_FILE.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let catalog = scratch_dir("tls-catalog.json");
    std::fs::write(&catalog, common::CATALOG).unwrap();
    let mut service = common::Service(
        Command::new(env!("CARGO_BIN_EXE_meterhouse"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--clickhouse-url",
                &https,
            ])
            .args([
                "--database",
                "tls",
                "--api-keys",
                KEYS,
                "--batch-max-wait-ms",
                "5",
            ])
            .arg("--catalog")
            .arg(&catalog)
            .env("METERHOUSE_CLICKHOUSE_PASSWORD", &password)
            .env("SSL_CERT_FILE", &ca)
            .env_remove("SSL_CERT_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meterhouse serve"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&http, &base).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"id": "t1", "customer": "c1", "type": "llm_call", "timestamp": now,
                         "properties": {"tokens": 42, "model": "gpt-x"}}]);
    let ack: Value = http
        .post(format!("{base}/v1/events"))
        .bearer_auth("ingest_key_a")
        .json(&events)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack["accepted"], 1, "{ack}");
    let series: Value = http
        .get(format!(
            "{base}/v1/meters/tokens/query?from={}&to={}&customer=c1",
            now - 3_600_000,
            now + 3_600_000
        ))
        .bearer_auth("read_key_a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(series["data"][0]["value"], "42", "{series}");
    service.kill();
}
