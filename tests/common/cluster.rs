//! A real ClickHouse cluster on loopback for the tests: a standalone ZooKeeper (Debian's
//! `zookeeper` jars) and `clickhouse-server` processes forming shards × replicas, each with
//! `remote_servers`, `macros`, `zookeeper` and `distributed_ddl` in its config. Every process
//! is stopped when the handle is dropped (and by the kernel should the test binary die).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_server_port, scratch_dir};

/// The cluster's name in every node's `remote_servers`.
pub const CLUSTER: &str = "mh";

/// A child process, stopped when dropped.
struct Process(Option<Child>);

impl Process {
    fn spawn(mut command: Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        command
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child gets SIGKILL if this process dies.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Self(Some(command.spawn().expect("spawning a cluster process")))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `clickhouse-server` of the cluster.
pub struct Node {
    pub shard: usize,
    pub replica: usize,
    pub http_port: u16,
    dir: PathBuf,
    process: Process,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

/// ZooKeeper and the nodes, shard by shard.
pub struct LocalCluster {
    zookeeper: Process,
    zookeeper_dir: PathBuf,
    pub zookeeper_port: u16,
    pub nodes: Vec<Node>,
}

impl LocalCluster {
    /// Starts ZooKeeper and `shards` × `replicas` servers under this test binary's scratch
    /// directory `name`, and waits until every server answers and sees ZooKeeper.
    pub async fn start(name: &str, shards: usize, replicas: usize) -> Self {
        let root = scratch_dir(name);
        let _ = std::fs::remove_dir_all(&root);
        let zookeeper_dir = root.join("zookeeper");
        std::fs::create_dir_all(zookeeper_dir.join("data")).unwrap();
        let mut ports = distinct_ports(1 + shards * replicas * 3).into_iter();
        let mut port = move || ports.next().unwrap_or_default();
        let zookeeper_port = port();
        std::fs::write(
            zookeeper_dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={zookeeper_port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n",
                zookeeper_dir.join("data").display()
            ),
        )
        .unwrap();
        let zookeeper = start_zookeeper(&zookeeper_dir);
        wait_port(zookeeper_port).await;
        // Ports first: every node's config lists every other's.
        let ports: Vec<Vec<(u16, u16, u16)>> = (0..shards)
            .map(|_| (0..replicas).map(|_| (port(), port(), port())).collect())
            .collect();
        let remote: String = ports
            .iter()
            .map(|shard| {
                let replicas: String = shard
                    .iter()
                    .map(|(_, tcp, _)| {
                        format!("<replica><host>127.0.0.1</host><port>{tcp}</port></replica>")
                    })
                    .collect();
                format!(
                    "<shard><internal_replication>true</internal_replication>{replicas}</shard>"
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for (s, shard) in ports.iter().enumerate() {
            for (r, &(http, tcp, interserver)) in shard.iter().enumerate() {
                let dir = root.join(format!("s{}r{}", s + 1, r + 1));
                std::fs::create_dir_all(&dir).unwrap();
                let config = node_config(
                    &dir,
                    (http, tcp, interserver),
                    &remote,
                    (s + 1, r + 1),
                    zookeeper_port,
                );
                std::fs::write(dir.join("config.xml"), config).unwrap();
                std::fs::write(dir.join("users.xml"), USERS).unwrap();
                let process = start_node(&dir);
                nodes.push(Node {
                    shard: s,
                    replica: r,
                    http_port: http,
                    dir,
                    process,
                });
            }
        }
        let mut cluster = Self {
            zookeeper,
            zookeeper_dir,
            zookeeper_port,
            nodes,
        };
        for i in 0..cluster.nodes.len() {
            cluster.wait_node(i).await;
        }
        cluster.wait_distributed_ddl().await;
        cluster
    }

    /// Waits until every node runs `ON CLUSTER` statements: a node can answer queries and see
    /// ZooKeeper while its DDL worker takes nothing from the queue (a clean-clone run saw a
    /// first `CREATE DATABASE … ON CLUSTER` wait 120 s for one host that never became active).
    /// A statement that changes nothing is run on the cluster; a node that has not run it
    /// within 30 s is started again, its log printed, at most twice.
    async fn wait_distributed_ddl(&mut self) {
        let mut report = String::new();
        for attempt in 0..3 {
            let probe = format!("ddl_probe_{attempt}");
            let sql = format!("CREATE DATABASE IF NOT EXISTS {probe} ON CLUSTER {CLUSTER}");
            let answer = self
                .try_query(0, &sql, &[("distributed_ddl_task_timeout", "30")])
                .await;
            let Err(error) = answer else {
                if attempt > 0 {
                    eprintln!("every node runs distributed DDL after restarts:\n{report}");
                }
                return;
            };
            for i in 0..self.nodes.len() {
                let seen = self
                    .try_query(
                        i,
                        &format!("SELECT count() FROM system.databases WHERE name = '{probe}'"),
                        &[],
                    )
                    .await;
                if seen.as_deref().map(str::trim) == Ok("1") {
                    continue;
                }
                let alive = self.nodes[i]
                    .process
                    .0
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                let log = std::fs::read_to_string(self.nodes[i].dir.join("stderr.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                report += &format!(
                    "node {i} (alive: {alive}) did not run `{sql}` ({error}); its log ends:\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                if attempt < 2 {
                    self.restart_node(i).await;
                }
            }
        }
        panic!("the cluster does not run distributed DDL:\n{report}");
    }

    /// Every node's URL, comma-separated, as `--clickhouse-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].process.0.as_ref().map(Child::id)
    }

    /// Kills node `i` at once (SIGKILL), as a crash would.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    /// Starts node `i` again on its files and ports, and waits until it answers.
    pub async fn restart_node(&mut self, i: usize) {
        self.nodes[i].process.kill();
        self.nodes[i].process = start_node(&self.nodes[i].dir);
        self.wait_node(i).await;
    }

    pub fn kill_zookeeper(&mut self) {
        self.zookeeper.kill();
    }

    pub async fn restart_zookeeper(&mut self) {
        self.zookeeper.kill();
        self.zookeeper = start_zookeeper(&self.zookeeper_dir);
        wait_port(self.zookeeper_port).await;
    }

    /// Runs `sql` on node `i` with `settings`; its text answer, or the status and message.
    async fn try_query(
        &self,
        i: usize,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<String, String> {
        let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = reqwest::Client::new()
            .post(format!("{}/?{}", self.nodes[i].url(), settings.join("&")))
            .body(sql.to_owned())
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(text)
        } else {
            Err(format!(
                "{status}: {}",
                text.lines().next().unwrap_or_default()
            ))
        }
    }

    /// Runs `sql` on node `i`; its text answer.
    pub async fn query(&self, i: usize, sql: &str) -> String {
        self.try_query(i, sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} on node {i}: {e}"))
    }

    /// Waits (60 s at most) until node `i` answers.
    async fn wait_node(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        let url = format!("{}/ping", self.nodes[i].url());
        while Instant::now() < deadline {
            // Answering, and connected to ZooKeeper (which is up before any node starts).
            let zookeeper = "SELECT count() FROM system.zookeeper WHERE path = '/'";
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
                && let Ok(r) = http.post(self.nodes[i].url()).body(zookeeper).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(self.nodes[i].dir.join("stderr.log")).unwrap_or_default();
        panic!("cluster node {i} did not answer within 60 s:\n{log}");
    }
}

/// Waits (60 s at most) until something accepts connections on loopback `port`.
async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on port {port} after 60 s");
}

/// `n` free loopback ports, all different.
fn distinct_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_server_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

const USERS: &str = "<yandex><profiles><default><max_memory_usage>4000000000</max_memory_usage>\
    </default></profiles><users><default><password></password><networks><ip>127.0.0.1</ip>\
    </networks><profile>default</profile><quota>default</quota></default></users>\
    <quotas><default></default></quotas></yandex>";

fn node_config(
    dir: &Path,
    (http, tcp, interserver): (u16, u16, u16),
    remote: &str,
    (shard, replica): (usize, usize),
    zookeeper_port: u16,
) -> String {
    let dir = dir.display();
    format!(
        r#"<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/stderr.log</errorlog><console>0</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{interserver}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>134217728</mark_cache_size>
  <uncompressed_cache_size>0</uncompressed_cache_size>
  <remote_servers><{CLUSTER}>{remote}</{CLUSTER}></remote_servers>
  <macros><shard>{shard}</shard><replica>r{replica}</replica></macros>
  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper_port}</port></node><session_timeout_ms>6000</session_timeout_ms></zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
"#
    )
}

fn start_node(dir: &Path) -> Process {
    let mut command = Command::new(clickhouse_server());
    command
        .arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ))
        .current_dir(dir);
    Process::spawn(command, &dir.join("stdout.log"))
}

fn clickhouse_server() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "clickhouse-server".into())
}

/// A standalone ZooKeeper from Debian's jars (`scripts/install-deps --tests` installs them).
fn start_zookeeper(dir: &Path) -> Process {
    assert!(
        Path::new("/usr/share/java/zookeeper.jar").exists(),
        "ZooKeeper's jars are missing: scripts/install-deps --tests installs the zookeeper package"
    );
    let mut command = Command::new("java");
    command
        .args(["-Xmx256m", "-XX:+UseSerialGC"])
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .args(["-cp", "/usr/share/java/zookeeper.jar:/usr/share/java/*"])
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(dir.join("zoo.cfg"))
        .current_dir(dir);
    Process::spawn(command, &dir.join("zookeeper.log"))
}
