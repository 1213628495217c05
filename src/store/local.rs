//! A `clickhouse-server` this process starts and owns: its own data directory and free ports
//! on loopback, stopped with the service (and killed by the kernel if the service dies first).
//! Its `default` user has a password generated on first start and kept in `password` under its
//! directory (owner-only), so other local users cannot read the tenants' data; a [`Store`] of
//! this process opened on its URL uses it without being told (see [`password_of`]).
//!
//! [`Store`]: crate::store::Store

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running owned server. `stop` ends it; dropping the handle stops it too.
pub struct LocalClickHouse {
    dir: PathBuf,
    http_port: u16,
    tcp_port: u16,
    /// An HTTPS port too, with this certificate and key (PEM files).
    tls: Option<(u16, PathBuf, PathBuf)>,
    child: Option<Child>,
    /// Dropping this ends the thread that spawned the child, which the child's
    /// parent-death signal is tied to; kept until the child is stopped.
    keeper: Option<mpsc::Sender<()>>,
}

impl LocalClickHouse {
    /// Starts a server with its files under `data_dir/clickhouse`, on free loopback ports.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_serving(data_dir, None).await
    }

    /// As [`Self::start`], also serving HTTPS ([`Self::https_url`]) with the certificate and
    /// key in these PEM files.
    pub async fn start_with_tls(
        data_dir: &Path,
        certificate: &Path,
        key: &Path,
    ) -> anyhow::Result<Self> {
        let tls = (free_port()?, certificate.to_owned(), key.to_owned());
        Self::start_serving(data_dir, Some(tls)).await
    }

    async fn start_serving(
        data_dir: &Path,
        tls: Option<(u16, PathBuf, PathBuf)>,
    ) -> anyhow::Result<Self> {
        let dir = std::path::absolute(data_dir.join("clickhouse"))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = Self {
            dir,
            http_port: free_port()?,
            tcp_port: free_port()?,
            tls,
            child: None,
            keeper: None,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The HTTPS URL, when started with TLS.
    pub fn https_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _, _)| format!("https://127.0.0.1:{port}"))
    }

    /// `url` if given, else a server started under `data_dir` (returned, to be stopped).
    pub async fn given_or_started(
        url: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<(String, Option<Self>)> {
        match url {
            Some(url) => Ok((url.to_owned(), None)),
            None => {
                let local = Self::start(data_dir).await?;
                Ok((local.url(), Some(local)))
            }
        }
    }

    /// The HTTP URL to give the ClickHouse client.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 20 s); its files stay.
    pub async fn stop(&mut self) {
        self.end(libc::SIGTERM).await;
    }

    /// Kills the server at once (SIGKILL), as a crash would; its files stay.
    pub async fn kill(&mut self) {
        self.end(libc::SIGKILL).await;
    }

    async fn end(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        self.keeper = None;
        let _ = std::fs::remove_file(self.dir.join("server.pid"));
        tracing::info!(dir = %self.dir.display(), signal, "owned clickhouse ended");
    }

    /// Starts the server again on the same ports and files.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        stop_stale(&self.dir).await?;
        let password = password_in(&self.dir)?;
        std::fs::write(self.dir.join("config.xml"), self.config_xml())?;
        write_private(&self.dir.join("users.xml"), &users_xml(&password))?;
        OWNED.lock().unwrap_or_else(|e| e.into_inner()).extend(
            std::iter::once(self.url())
                .chain(self.https_url())
                .map(|url| (url, password.clone())),
        );
        let binary = find_binary().context("clickhouse-server not found; install it (apt-get install -y clickhouse-server) or set --clickhouse-url")?;
        let log = std::fs::File::create(self.dir.join("stdout.log"))?;
        let mut command = Command::new(&binary.0);
        command.args(&binary.1).arg(format!(
            "--config-file={}",
            self.dir.join("config.xml").display()
        ));
        // A preload meant for the service (a profiler, or libfaketime when the tests run with
        // the clock moved) is not ClickHouse's: its allocator and clock calls clash with some.
        command
            .env_remove("LD_PRELOAD")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child
        // when the spawning thread exits, so a killed service never leaves ClickHouse behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let (child, keeper) = spawn_kept(command)?;
        std::fs::write(self.dir.join("server.pid"), child.id().to_string())?;
        self.child = Some(child);
        self.keeper = Some(keeper);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/ping", self.url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                bail!(
                    "clickhouse-server exited with {status} while starting; see {}:\n{tail}",
                    self.dir.display()
                );
            }
            if let Ok(response) = http.get(&url).timeout(Duration::from_secs(1)).send().await
                && response.status().is_success()
            {
                tracing::info!(url = %self.url(), dir = %self.dir.display(), "owned clickhouse ready");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "clickhouse-server did not answer on {} within 60 s",
            self.url()
        )
    }

    fn config_xml(&self) -> String {
        let dir = self.dir.display();
        format!(
            r#"<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/stderr.log</errorlog><console>0</console><size>50M</size><count>2</count></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
  <keep_alive_timeout>3</keep_alive_timeout>
  <shutdown_wait_unfinished>2</shutdown_wait_unfinished>
  <merge_tree><parts_to_delay_insert>300</parts_to_delay_insert><parts_to_throw_insert>600</parts_to_throw_insert></merge_tree>
{tls}</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
            tls = self.tls.as_ref().map_or_else(String::new, |(port, certificate, key)| format!(
                "  <https_port>{port}</https_port>\n  <openSSL><server><certificateFile>{}</certificateFile>\
                 <privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode>\
                 <loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>\
                 <preferServerCiphers>true</preferServerCiphers></server></openSSL>\n",
                certificate.display(),
                key.display()
            )),
        )
    }
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The passwords of the servers this process owns, by URL.
static OWNED: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Mutex::default);

/// The password of the server this process owns at `url`, if it owns one there.
pub fn password_of(url: &str) -> Option<String> {
    let owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
    owned.get(url.trim_end_matches('/')).cloned()
}

/// The password kept in `dir`, made (random, owner-only) if there is none yet.
fn password_in(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("password");
    if let Ok(kept) = std::fs::read_to_string(&path) {
        let kept = kept.trim();
        if !kept.is_empty() {
            return Ok(kept.to_owned());
        }
    }
    let password = hex::encode(rand::random::<[u8; 24]>());
    write_private(&path, &password)?;
    Ok(password)
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    // An older file keeps its mode on open: make sure.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

fn users_xml(password: &str) -> String {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(password.as_bytes()));
    format!(
        r#"<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage><log_queries>0</log_queries></default></profiles>
  <users><default><password_sha256_hex>{digest}</password_sha256_hex><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#
    )
}

/// Spawns `command` from a thread that lives until the returned sender is dropped, so the
/// parent-death signal fires when the owner lets go, not when some worker thread exits.
fn spawn_kept(mut command: Command) -> anyhow::Result<(Child, mpsc::Sender<()>)> {
    let (child_tx, child_rx) = mpsc::channel();
    let (keep_tx, keep_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("clickhouse-keeper".into())
        .spawn(move || {
            let _ = child_tx.send(command.spawn());
            let _ = keep_rx.recv();
        })?;
    let child = child_rx.recv().context("spawner thread ended")??;
    Ok((child, keep_tx))
}

/// A server left by a previous run in the same directory (e.g. after `kill -9`) holds its
/// lock: end it first.
/// Stops a `clickhouse-server` a previous run left under `dir`; refuses, leaving it alone, when
/// another live process owns it (a running `meterhouse serve` on the same `--data-dir`).
async fn stop_stale(dir: &Path) -> anyhow::Result<()> {
    let Ok(pid) = std::fs::read_to_string(dir.join("server.pid")) else {
        return Ok(());
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return Ok(());
    };
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.contains("clickhouse") {
        return Ok(());
    }
    // A server started by a process that is still running has that process as its parent;
    // the kernel ends an owned server with its owner (see `spawn_kept`), so a server whose
    // parent is neither init nor this process is another live process's.
    let parent = parent_of(pid).filter(|&p| p > 1);
    if let Some(owner) = parent.filter(|&p| p != std::process::id() as i32) {
        bail!(
            "the ClickHouse under {} belongs to process {owner}, which is still running: give \
             --clickhouse-url with its address (http_port in {}) and --clickhouse-password \
             (METERHOUSE_CLICKHOUSE_PASSWORD) from {}, or use another --data-dir",
            dir.display(),
            dir.join("config.xml").display(),
            dir.join("password").display()
        );
    }
    tracing::warn!(pid, "stopping a clickhouse-server left by a previous run");
    // SAFETY: plain kill(2); the pid was checked to be a clickhouse process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..400 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

/// The parent process of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses: read after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `clickhouse-server` (Debian's package) or the single `clickhouse` binary of newer releases.
fn find_binary() -> Option<(PathBuf, Vec<&'static str>)> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin".into(), "/usr/bin".into()]);
    for dir in dirs {
        if dir.join("clickhouse-server").is_file() {
            return Some((dir.join("clickhouse-server"), vec![]));
        }
        if dir.join("clickhouse").is_file() {
            return Some((dir.join("clickhouse"), vec!["server"]));
        }
    }
    None
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
