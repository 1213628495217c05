//! The soak harness: a steady ingest rate with concurrent readers for a long time, then a check
//! that every acknowledged event is stored. `cargo bench --bench soak -- --help`.

#[path = "harness/cli.rs"]
mod cli;
#[path = "harness/soak.rs"]
mod soak;

fn main() -> anyhow::Result<()> {
    cli::main(soak::run)
}
