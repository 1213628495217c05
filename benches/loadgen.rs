//! The ingest load harness: meterhouse's durable acknowledgement against ClickHouse's own bulk
//! insert of the same events. `cargo bench --bench loadgen -- --help`; benches/README.md.

#[path = "harness/cli.rs"]
mod cli;
#[path = "harness/loadgen.rs"]
mod loadgen;

fn main() -> anyhow::Result<()> {
    cli::main(loadgen::run)
}
