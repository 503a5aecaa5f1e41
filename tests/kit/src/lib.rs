//! Shared test harness: a throwaway Function App folder, the real `fanout` binary started by the
//! emulated host (`fanout::hostsim`), read-back helpers, real local services (Azurite, Redis,
//! tansu) and protocol-level fakes (Event Hubs AMQP, AI Search, the identity endpoint).
//! Integration tests use it as `use fanout_test_kit as common;`, benches by name.

pub mod cosmos;
pub mod fake_event_hubs;
pub mod fake_identity;
pub mod kafka;
pub mod search;

use fanout::hostsim::EmulatedHost;
use fanout::sinks::delta::{ChangelogSnapshot, read_changelog};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The `fanout` binary cargo built beside the running test or bench (`target/<profile>/`:
/// tests and benches run from its `deps/`, and cargo builds the package's binaries for them).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("fanout");
    assert!(
        bin.exists(),
        "{} is missing: run the tests and benches through cargo, which builds it",
        bin.display()
    );
    bin
}

pub fn fixture(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures").join(rel))
        .unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A request body captured from the real Functions host (handlers/hostsim/captured, embedded
/// by `fanout demo` too).
pub fn captured(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("handlers/hostsim/captured").join(name))
        .unwrap_or_else(|e| panic!("captured body {name}: {e}"))
}

/// A Function App folder in a temp dir: the repo's host.json, function folders, fanout.toml.
pub struct TestApp {
    pub dir: TempDir,
}

impl Default for TestApp {
    fn default() -> Self {
        Self::new()
    }
}

impl TestApp {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(repo_root().join("host.json"), dir.path().join("host.json"))
            .expect("copy host.json");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A function folder with a cosmosDBTrigger named `binding`, and a retry policy when
    /// `max_retry_count` is given.
    pub fn function(&self, name: &str, binding: &str, max_retry_count: Option<i64>) -> &Self {
        let mut f = serde_json::json!({
            "bindings": [{"type": "cosmosDBTrigger", "name": binding, "direction": "in", "connection": "CosmosDBConnection",
                          "databaseName": "shop", "containerName": name, "leaseContainerName": "leases", "leaseContainerPrefix": format!("{name}-")}]
        });
        if let Some(n) = max_retry_count {
            f["retry"] = serde_json::json!({"strategy": "fixedDelay", "maxRetryCount": n, "delayInterval": "00:00:01"});
        }
        std::fs::create_dir_all(self.path().join(name)).unwrap();
        std::fs::write(self.path().join(name).join("function.json"), f.to_string()).unwrap();
        self
    }

    pub fn config(&self, toml: &str) -> &Self {
        std::fs::write(self.path().join("fanout.toml"), toml).unwrap();
        self
    }

    pub fn table(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub async fn start(&self) -> EmulatedHost {
        self.start_with(&[]).await
    }

    pub async fn start_with(&self, env: &[(&str, &str)]) -> EmulatedHost {
        // The handler's stderr is the test's: keep it to errors unless the test asks, so a
        // passing run stays quiet (tests that read logs use `serve_logged`).
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "FANOUT_LOG") {
            env.push(("FANOUT_LOG", "error"));
        }
        EmulatedHost::start(&binary(), self.path(), &env)
            .await
            .expect("handler starts and answers on /")
    }

    /// The handler started by hand (not by the emulated host) with its stderr kept in a file:
    /// for tests that read what it logs. Waits until the port accepts connections.
    pub async fn serve_logged(&self, env: &[(&str, &str)]) -> LoggedHandler {
        let port = fanout::hostsim::free_port().unwrap();
        let log_path = self.path().join("stderr.log");
        let child = Command::new(binary())
            .current_dir(self.path())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no answer on /"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        LoggedHandler {
            child,
            port,
            log_path,
        }
    }

    /// Runs a `fanout` subcommand in the app root.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary());
        cmd.current_dir(self.path())
            .args(args)
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run fanout")
    }

    /// [`TestApp::run`] off the test's runtime, for tests whose fakes are served by it.
    pub async fn run_async(&self, args: &[&str]) -> Output {
        let dir = self.path().to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .current_dir(dir)
                .args(args)
                .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
                .output()
                .expect("run fanout")
        })
        .await
        .expect("the command's thread")
    }

    /// Pending dead-letter records (relative keys).
    pub fn dead_letters(&self) -> Vec<String> {
        let root = self.path().join(".fanout/dead-letter/pending");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    pub fn dead_letter(&self, key: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.path().join(".fanout/dead-letter/pending").join(key))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// A Function App routing `orders` (binding `documents`, partition key `/customerId`, soft
/// delete `/deleted`) to one Delta sink `changelog` at `tables/orders`.
pub fn orders_to_delta(max_retry_count: Option<i64>) -> TestApp {
    let app = TestApp::new();
    app.function("orders", "documents", max_retry_count).config(
        r#"
[functions.orders]
partition_key = "/customerId"
soft_delete = { field = "/deleted" }

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"
"#,
    );
    app
}

/// A handler process started by [`TestApp::serve_logged`].
pub struct LoggedHandler {
    child: Child,
    pub port: u16,
    log_path: PathBuf,
}

impl LoggedHandler {
    /// Kills the handler and returns everything it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log_path).unwrap()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Sends `docs` to `function` as the host would (one latest-version batch, first attempt) and
/// expects the handler to answer 2xx: the call, for its logs.
pub async fn deliver_ok(
    host: &EmulatedHost,
    function: &str,
    docs: &[serde_json::Value],
) -> fanout::hostsim::HostCall {
    let body = fanout::hostsim::cosmos_trigger_body("documents", function, docs, None);
    let call = host
        .invoke(function, &body)
        .await
        .expect("the handler answers");
    assert_eq!(call.status, 200, "{:?}", call.logs());
    call
}

pub async fn read_table(path: &Path) -> ChangelogSnapshot {
    let url = url::Url::from_directory_path(path).unwrap();
    read_changelog(url, Default::default())
        .await
        .expect("read changelog")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a Python snippet with the test virtualenv (tests/setup.sh installs `deltalake` and
/// `pyarrow` there).
pub fn python(script: &str, env: &[(&str, &str)]) -> String {
    let venv = repo_root().join("tests/.tools/venv/bin/python");
    assert!(
        venv.exists(),
        "the test virtualenv is missing: run tests/setup.sh"
    );
    let mut cmd = Command::new(venv);
    // Leave without the interpreter's teardown: a native library's threads (deltalake's
    // runtime) racing it crashed a finished script now and then ("terminate called without
    // an active exception"). A script that failed has exited non-zero before this line.
    let script =
        format!("{script}\nimport os, sys\nsys.stdout.flush()\nsys.stderr.flush()\nos._exit(0)\n");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed (run tests/setup.sh to install deltalake + pyarrow):\n{}",
        stderr(&out)
    );
    stdout(&out)
}

/// One cluster-enabled redis-server on free loopback ports. A port picked free can be taken
/// by a concurrently running test before the server binds it: then the server exits, and it
/// is started again on other ports.
fn start_cluster_node(bin: &Path, node_dir: &Path) -> (std::process::Child, u16) {
    for _ in 0..5 {
        let _ = std::fs::remove_file(node_dir.join("nodes.conf"));
        let port = fanout::hostsim::free_port().unwrap();
        let bus = fanout::hostsim::free_port().unwrap();
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .args([
                "--cluster-config-file",
                "nodes.conf",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("cluster node did not start (5 attempts)");
}

/// A real Azure Blob endpoint: Azurite (installed by tests/setup.sh), on a free loopback port,
/// stopped by PID on drop.
pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Azurite with its debug log on, so [`Azurite::requests`] can count what clients asked.
    pub fn start_counting() -> Self {
        Self::start_with(&["--debug", "debug.log"])
    }

    /// Requests served so far (the debug log's one line per request; only when started with
    /// [`Azurite::start_counting`]).
    pub fn requests(&self) -> u64 {
        self.count_log("BlobStorageContextMiddleware: RequestMethod=")
    }

    /// Of those, blob listings.
    pub fn list_requests(&self) -> u64 {
        self.count_log("comp=list")
    }

    fn count_log(&self, needle: &str) -> u64 {
        let log = std::fs::read_to_string(self._dir.path().join("debug.log")).unwrap_or_default();
        log.lines()
            .filter(|l| {
                l.contains("BlobStorageContextMiddleware: RequestMethod=") && l.contains(needle)
            })
            .count() as u64
    }

    fn start_with(extra: &[&str]) -> Self {
        let bin = repo_root().join("tests/.tools/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed: run tests/setup.sh (or tests/run.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = fanout::hostsim::free_port().unwrap();
        let child = Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .args(extra)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment object_store (in fanout and in Python deltalake) uses to reach Azurite.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.blob_url()),
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
        ]
    }

    /// Creates a blob container (Shared Key auth, as any Azure client would).
    pub async fn create_container(&self, name: &str) {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let response = reqwest::Client::new()
            .put(format!(
                "{}/{AZURITE_ACCOUNT}/{name}?restype=container",
                self.blob_url()
            ))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header(
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .header("Content-Length", "0")
            .send()
            .await
            .expect("azurite answers");
        assert!(
            response.status().is_success(),
            "create container: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real redis-server (installed by tests/setup.sh) on a free 127.0.0.1 port, optionally TLS
/// with a throwaway CA; stopped by PID on drop. `kill` + `restart` simulate an outage.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    tls: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// TLS only (`--port 0 --tls-port`), with a CA and a server certificate for 127.0.0.1.
    pub fn start_tls() -> Self {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if tls {
            let d = dir.path();
            let sh = |cmd: &str| {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .current_dir(d)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{cmd}: {}", stderr(&out));
            };
            sh(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=fanout test CA' -keyout ca.key -out ca.crt 2>/dev/null",
            );
            sh(
                "openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' -keyout server.key -out server.csr 2>/dev/null",
            );
            std::fs::write(
                d.join("san.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
            )
            .unwrap();
            sh(
                "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt 2>/dev/null",
            );
        }
        let mut server = Self {
            child: None,
            port: fanout::hostsim::free_port().unwrap(),
            dir,
            tls,
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = which("redis-server").expect("redis-server is not installed: run tests/setup.sh");
        let mut cmd = Command::new(bin);
        // AOF with fsync on every write: a SIGKILLed server comes back with its data, like a
        // managed Redis after a failover.
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
        ])
        .arg(self.dir.path());
        if self.tls {
            let d = self.dir.path();
            cmd.args([
                "--port",
                "0",
                "--tls-port",
                &self.port.to_string(),
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(d.join("server.crt"))
            .arg("--tls-key-file")
            .arg(d.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(d.join("ca.crt"));
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server"),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: an outage, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A plain synchronous client for setting up and checking keys.
    pub fn client(&self) -> redis::Connection {
        assert!(!self.tls, "use the plain server for checks");
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A real three-primary Redis Cluster on free loopback ports (redis-server in cluster mode,
/// joined with `redis-cli --cluster create`), stopped by PID on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = which("redis-server").expect("redis-server is not installed: run tests/setup.sh");
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (child, port) = start_cluster_node(&bin, &node_dir);
            children.push(child);
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out =
            Command::new(which("redis-cli").expect("redis-cli (redis-tools) is not installed"))
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let started = Instant::now();
        loop {
            let ok = ports.iter().all(|p| {
                redis::Client::open(format!("redis://127.0.0.1:{p}"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            children,
            ports,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    pub fn client(&self) -> redis::cluster::ClusterConnection {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sample order batches (`samples::order_batches`) as the handler sees them: decoded from the
/// host's double-encoded body and normalized (partition key `/customerId`, soft delete
/// `/deleted = true`).
pub fn order_changes(
    lsn_base: i64,
    batches: usize,
    size: usize,
    keys: usize,
) -> Vec<Vec<fanout::change::Change>> {
    use fanout::change::{Normalizer, PartitionKeyPaths, SoftDelete};
    let normalizer = Normalizer::new(
        PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
        Some(SoftDelete {
            path: vec!["deleted".into()],
            equals: serde_json::Value::Bool(true),
        }),
    );
    fanout::hostsim::samples::order_batches(lsn_base, batches, size, keys)
        .iter()
        .map(|docs| {
            let body = fanout::hostsim::cosmos_trigger_body("documents", "orders", docs, None);
            fanout::host::HostRequest::decode(body.as_bytes(), "documents")
                .unwrap()
                .items
                .into_iter()
                .enumerate()
                .map(|(i, item)| normalizer.normalize(i, item).unwrap())
                .collect()
        })
        .collect()
}
