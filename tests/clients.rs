//! The vendors' official clients against a running meterhouse and a real ClickHouse:
//! `lago-python-client`, `lark-billing` and `flexprice` (tests/clients/vendor_clients.py) and
//! `@flowglad/node` (tests/clients/flowglad.cjs). `scripts/install-clients` installs them into
//! `target/clients-venv` and `target/clients-node`, pinned; `scripts/test` runs it.

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
/// unless it exits 0.
fn run(program: &Path, script: &str, base: &str, envs: &[(&str, &Path)]) {
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
    })
    .await
    .unwrap();
}
