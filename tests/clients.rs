//! The vendors' official clients against a running meterhouse and a real ClickHouse:
//! `lago-python-client`, `lark-billing` and `flexprice` (tests/clients/vendor_clients.py) and
//! `@flowglad/node` (tests/clients/flowglad.cjs), `@openmeter/sdk`'s event client
//! (tests/clients/openmeter.cjs); and our own client, generated from
//! `/openapi.json` by `openapi-python-client` after `openapi-spec-validator` has checked the
//! document (tests/openapi/drive.py). `scripts/install-clients` installs them into
//! `target/clients-venv`, `target/clients-node` and `target/openapi-venv`, pinned; `scripts/test`
//! runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::spawn_app;

fn installed(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-clients (scripts/test does)",
        path.display()
    );
    path
}

/// Runs `program script` with the service's address and the test keys; panics with its output
/// unless it exits 0; its standard output.
fn run(program: &Path, script: &str, base: &str, envs: &[(&str, &Path)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let output = Command::new(program)
        .arg(&script)
        .env("METERHOUSE_URL", base)
        .env("ADMIN_KEY", "admin_key_a")
        .env("INGEST_KEY", "ingest_key_a")
        .env("READ_KEY", "read_key_a")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("start the client script");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} failed:\n{text}",
        script.display()
    );
    println!("{text}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `program args`; panics with its output unless it exits 0.
fn command(program: &Path, args: &[&std::ffi::OsStr]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("start the command");
    assert!(
        output.status.success(),
        "{} failed:\n{}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_openapi_document_drives_the_service() {
    let venv = installed("target/openapi-venv/bin");
    let app = spawn_app("generated_client").await;
    let document = app.get("/openapi.json", None).await.text().await.unwrap();
    let dir = common::scratch_dir("generated-client");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openapi.json");
    std::fs::write(&path, document).unwrap();
    let base = app.base.clone();
    let line = tokio::task::spawn_blocking(move || {
        command(&venv.join("openapi-spec-validator"), &[path.as_os_str()]);
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/generator.yaml");
        let package = dir.join("meterhouse_client");
        command(
            &venv.join("openapi-python-client"),
            &[
                "generate".as_ref(),
                "--path".as_ref(),
                path.as_os_str(),
                "--output-path".as_ref(),
                package.as_os_str(),
                "--meta".as_ref(),
                "none".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ],
        );
        run(
            &venv.join("python"),
            "tests/openapi/drive.py",
            &base,
            &[("PYTHONPATH", &dir)],
        )
    })
    .await
    .unwrap();
    let read: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    // 3 calls at 0.25 and the 10.00 base fee; the repeated event is a duplicate.
    assert_eq!(
        read,
        serde_json::json!({"accepted": 3, "duplicates": 1, "quantity": "3", "total": "10.75",
                           "status": "active", "estimate": "10.75", "forbidden": [403, "forbidden"]})
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_official_clients_work_unchanged() {
    let python = installed("target/clients-venv/bin/python");
    let node_modules = installed("target/clients-node/node_modules");
    let app = spawn_app("clients").await;
    let base = app.base.clone();
    tokio::task::spawn_blocking(move || {
        run(&python, "tests/clients/vendor_clients.py", &base, &[]);
        run(
            Path::new("node"),
            "tests/clients/flowglad.cjs",
            &base,
            &[("NODE_PATH", &node_modules)],
        );
        run(
            Path::new("node"),
            "tests/clients/openmeter.cjs",
            &base,
            &[("NODE_PATH", &node_modules)],
        );
    })
    .await
    .unwrap();
    // What OpenMeter's SDK sent is billed: 11 + 22 + 33 tokens, the repeated event once.
    let now = chrono::Utc::now().timestamp_millis();
    let path = format!(
        "/v1/meters/tokens/query?from={}&to={}&customer=om_customer&window_size=day",
        now - 86_400_000,
        now + 60_000
    );
    let (status, series) = common::get_json(&app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{series}");
    let total: rust_decimal::Decimal = series["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["value"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, rust_decimal::Decimal::from(66), "{series}");
}
