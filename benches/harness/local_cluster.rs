//! The tests' local ClickHouse cluster (tests/common/cluster.rs), for the cluster harness: the
//! two helpers it takes from the tests' common module, here for a bench.

use std::path::PathBuf;

#[path = "../../tests/common/cluster.rs"]
pub mod cluster;

/// A free loopback port below the ephemeral range.
pub fn free_server_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A directory of this harness's own.
pub fn scratch_dir(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join("meterhouse-bench")
        .join(format!("cluster-{name}"))
}
