//! The read-latency harness: usage and charges of subscriptions on a generated store, against
//! a naive query over raw events. `cargo bench --bench readbench -- --help`; benches/README.md.

#[path = "harness/cli.rs"]
mod cli;
#[path = "harness/readbench.rs"]
mod readbench;

fn main() -> anyhow::Result<()> {
    cli::main(readbench::run)
}
