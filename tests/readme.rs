//! The README's examples, run as written against a demo server (the demo keys and catalog
//! of `scripts/demo`, on this suite's ClickHouse): every `sh` block that calls the service
//! with curl must succeed, so the docs cannot drift from what the service answers.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_block_works_against_the_demo() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = common::test_config("readme", &common::clickhouse_url());
    config.api_keys = "demo_admin_key:demo:admin,demo_ingest_key:demo:ingest,\
                       demo_read_key:demo:read,demo_customer_key:demo:customer:cust_42"
        .into();
    config.catalog = Some(root.join("demo/catalog.json"));
    let app = common::spawn_with(config, true).await;
    let address = app.base.trim_start_matches("http://").to_owned();

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks: Vec<String> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .filter(|block| block.contains("curl "))
        .map(str::to_owned)
        .collect();
    assert!(blocks.len() >= 3, "the README's curl examples were found");
    for block in &blocks {
        // Each command fails the block on an HTTP error, and prints what it was answered.
        let script = block
            .replace("localhost:8080", &address)
            .replace("curl -s ", "curl -sS --fail-with-body ");
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .output()
                .expect("run bash")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "README block failed:\n{block}\n--- answered:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    app.shutdown().await;
}

/// The README's webhook check, in Python as written, accepts what the service signs and refuses
/// a body changed on the way.
#[test]
fn the_readme_python_verifies_a_webhook_signature() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let function = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a python block in the README");
    let body = r#"{"id":"evt_1","type":"alert.triggered"}"#;
    let t = chrono::Utc::now().timestamp();
    let header = meterhouse::alerts::signature::sign("whsec_test", t, body);
    let script = format!(
        "{function}\n\
         assert verified('whsec_test', {header:?}, {body:?}.encode())\n\
         assert not verified('whsec_test', {header:?}, {body:?}.encode() + b' ')\n\
         assert not verified('whsec_other', {header:?}, {body:?}.encode())\n"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
