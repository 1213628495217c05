//! What the harness benches share: their command line, logs, allocator and JSON report.

use std::future::Future;

use clap::Parser;
use serde::Serialize;

/// The service's allocator, so that the harnesses measure the service as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli<A: clap::Args> {
    #[command(flatten)]
    args: A,
    /// Added by `cargo bench`: without it (`cargo test --all-targets`) the harness does not
    /// run; `tests/` runs small ones.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Parses the harness's arguments, runs it, and prints its report as JSON on stdout; logs go
/// to stderr (`METERHOUSE_LOG`, default `info`).
pub fn main<A, R, F>(harness: impl FnOnce(A) -> F) -> anyhow::Result<()>
where
    A: clap::Args,
    F: Future<Output = anyhow::Result<R>>,
    R: Serialize,
{
    let cli = Cli::<A>::parse();
    if !cli.bench {
        eprintln!("a benchmark: run it with `cargo bench --bench <name> -- <args>`");
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let report = tokio::runtime::Runtime::new()?.block_on(harness(cli.args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
