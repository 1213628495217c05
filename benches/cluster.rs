//! The cluster harness: ingest and usage reads through a local ClickHouse cluster of 2 shards
//! × 2 replicas beside one ClickHouse server, in the same run, with the CPU each node spends
//! per event. `cargo bench --bench cluster -- --help`; BENCHMARKS.md, "Cluster".

#[path = "harness/cli.rs"]
mod cli;
#[path = "harness/clusterbench.rs"]
mod clusterbench;
#[path = "harness/loadgen.rs"]
#[allow(dead_code)]
mod loadgen;
#[path = "harness/local_cluster.rs"]
#[allow(dead_code)]
mod local_cluster;

fn main() -> anyhow::Result<()> {
    cli::main(clusterbench::run)
}
