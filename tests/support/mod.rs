//! The shared integration-test harness: a real `redis-server` on a free port
//! with its own data dir, and real `agentvault` sidecars on their own sockets.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentvault::client::{Client, Reply};
use hyper::Method;
use serde_json::Value;
use tempfile::TempDir;

pub mod cluster;
pub mod jwt;
pub mod opa;
pub mod peers;
pub mod security;

pub const BIN: &str = env!("CARGO_BIN_EXE_agentvault");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `name` found on the PATH (helm, kubernetes-validate), or a failed test that
/// says how to get it: tests that need a tool never skip.
pub fn tool_on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on the PATH: run ./scripts/install-test-tools, then the tests \
                 through ./scripts/test (it puts .tools/bin and .tools/venv/bin on the PATH)"
            )
        })
}

/// Runs `cmd` with `input` on its stdin and collects its exit status, stdout
/// and stderr. The input is written from another thread (a full stdout pipe
/// cannot deadlock the test), and a child that exits without reading all of it
/// is not a panic here: its status and stderr, which say why, are in the
/// `Output` for the caller's assertion. Any other write error is.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || match stdin.write_all(&input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    if let Err(e) = writer.join().expect("stdin writer") {
        panic!(
            "writing to {program}'s stdin: {e}; it exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Panics with the exit status and stderr of a child that failed.
pub fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private `redis-server` that persists to its own dir (AOF and RDB), so
/// tests can inspect exactly what reached Redis's files.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    /// `requirepass`, when the server demands one.
    password: Option<String>,
    /// Extra arguments (TLS); a TLS server serves only on `port`, with TLS.
    extra: Vec<String>,
    tls: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None, Vec::new(), false)
    }

    /// A server that answers only clients that `AUTH` with `password`.
    pub fn start_with_password(password: &str) -> Self {
        let extra = vec!["--requirepass".to_owned(), password.to_owned()];
        Self::start_with(Some(password.to_owned()), extra, false)
    }

    fn start_with(password: Option<String>, extra: Vec<String>, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let server = Self {
            child: None,
            port,
            dir,
            password,
            extra,
            tls,
        };
        server.spawn()
    }

    /// A server that speaks only TLS on `port`, with the certificate of
    /// `files`, checking client certificates as `auth_clients` says
    /// (`no`, `optional` or `yes`).
    pub fn start_tls(files: &security::TlsFiles, auth_clients: &str) -> Self {
        let path = |p: &Path| p.display().to_string();
        Self::start_with(
            None,
            vec![
                "--tls-cert-file".into(),
                path(&files.server_cert),
                "--tls-key-file".into(),
                path(&files.server_key),
                "--tls-ca-cert-file".into(),
                path(&files.ca),
                "--tls-auth-clients".into(),
                auth_clients.into(),
            ],
            true,
        )
    }

    fn spawn(mut self) -> Self {
        let (plain_port, tls_port) = if self.tls {
            ("0".to_owned(), self.port.to_string())
        } else {
            (self.port.to_string(), "0".to_owned())
        };
        let log = self.dir.path().join("redis.log");
        let ready_before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Ready to accept connections")
            .count();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &plain_port,
                "--tls-port",
                &tls_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        if self.tls {
            let what = format!(
                "redis-server with TLS (built with TLS support? see {})",
                log.display()
            );
            wait_for(&what, Duration::from_secs(10), || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches("Ready to accept connections")
                    .count()
                    > ready_before
            });
            return self;
        }
        let url = self.authed_url();
        wait_for("redis-server", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        self
    }

    /// The URL of the default (all-powerful) user; `rediss://` on a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The URL of an ACL user, without its password (that goes in a file).
    pub fn user_url(&self, user: &str) -> String {
        format!("redis://{user}@127.0.0.1:{}/", self.port)
    }

    /// The URL with the password in it, for the test's own connections.
    fn authed_url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => self.url(),
        }
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.authed_url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// Stops the server (data stays in its dir).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and dir.
    pub fn restart(self) -> Self {
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a sidecar keeps its secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// A running `agentvault dev` sidecar, its data dir and captured logs.
pub struct Sidecar {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Sidecar {
    /// Starts `agentvault dev` in `dir` with the given extra arguments.
    pub fn dev(dir: &Path, extra: &[&str]) -> Self {
        Self::dev_with_env(dir, extra, &[])
    }

    pub fn dev_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let socket = dir.join("agentvault.sock");
        let mut args: Vec<String> = vec![
            "dev".into(),
            "--socket".into(),
            socket.display().to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
        ];
        // Metrics stay off unless the test asks for an address.
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr".into(), "off".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut sidecar = Self {
            child: None,
            dir: dir.to_owned(),
            socket,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        sidecar.launch();
        sidecar
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sidecar.log"))
            .expect("log file");
        let out = log.try_clone().expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args)
            .env("RUST_LOG", "debug")
            .env_remove("AGENTVAULT_REDIS_URL")
            .env_remove("AGENTVAULT_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn agentvault"));
        let socket = self.socket.clone();
        let child = self.child.as_mut().expect("child");
        wait_for("the sidecar socket", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sidecar exited early with {status}");
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running sidecar");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sidecar did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts the same sidecar again (same dir, keyring and store).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A sidecar on the chosen backend, with the Redis server it uses if any.
pub struct TestEnv {
    pub sidecar: Sidecar,
    pub redis: Option<RedisServer>,
    pub dir: TempDir,
}

impl TestEnv {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[])
    }

    pub fn start_with(backend: Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(r) = &redis {
            args.push("--redis-url".into());
            args.push(r.url());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sidecar = Sidecar::dev(dir.path(), &args);
        Self {
            sidecar,
            redis,
            dir,
        }
    }

    pub fn client(&self) -> Client {
        self.sidecar.client()
    }
}

/// A gRPC channel over a Unix socket. The harness waits only for the
/// sidecar's API socket; its Envoy socket is bound just after, so the
/// connection is retried for up to 10 s.
pub async fn uds_channel(socket: &Path) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match agentvault::client::grpc_channel(socket).await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() >= deadline => {
                panic!("connect a gRPC channel to {}: {e:?}", socket.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Small request helpers that panic on transport errors (the test failed anyway).
pub async fn get(client: &Client, uri: &str) -> Reply {
    client.get(uri).await.expect("request")
}

/// GETs `uri` until `arrived` holds of the reply (a change announced to the
/// sidecar's cache is applied asynchronously), for at most 10 s; returns the
/// last reply either way, so the caller's assertion names what it saw.
pub async fn get_when(client: &Client, uri: &str, arrived: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(client, uri).await;
        if arrived(&reply) || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn send(client: &Client, method: Method, uri: &str, body: Value) -> Reply {
    client.send_json(method, uri, &body).await.expect("request")
}

pub async fn put(client: &Client, path: &str, body: Value) -> Reply {
    send(client, Method::PUT, &format!("/v1/secrets/{path}"), body).await
}

pub async fn put_value(client: &Client, path: &str, value: &str) -> u64 {
    let reply = put(client, path, serde_json::json!({ "value": value })).await;
    assert_eq!(reply.status, 200, "put {path}: {:?}", reply.json());
    reply.json()["version"].as_u64().expect("version")
}

pub async fn raw(client: &Client, method: Method, uri: &str, body: &[u8]) -> Reply {
    client
        .request(method, uri, Some(body.to_vec()))
        .await
        .expect("request")
}

/// Asserts a contract error: status, code, and (when given) a word of the message.
pub fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "body: {:?}", reply.json());
    assert_eq!(
        reply.error_code().as_deref(),
        Some(code),
        "body: {:?}",
        reply.json()
    );
}

/// One redis-server and one keyring (`agentvault keygen`) shared by every
/// sidecar started from it, each in its own sub-directory.
pub struct Shared {
    pub redis: RedisServer,
    pub keyring: PathBuf,
    dir: TempDir,
}

impl Shared {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Processes of other uids must reach the sockets inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let keyring = dir.path().join("keyring.json");
        let out = Command::new(BIN)
            .arg("keygen")
            .arg(&keyring)
            .output()
            .expect("run agentvault keygen");
        assert!(out.status.success(), "keygen: {out:?}");
        Self {
            redis: RedisServer::start(),
            keyring,
            dir,
        }
    }

    /// A dev sidecar of `tenant`/`agent` on the shared Redis and keyring
    /// (one agent may have several: pods of one workload).
    pub fn sidecar(&self, tenant: &str, agent: &str, extra: &[&str]) -> Sidecar {
        let dir = (1..)
            .map(|n| self.dir.path().join(format!("{tenant}-{agent}-{n}")))
            .find(|dir| !dir.exists())
            .expect("a free directory");
        std::fs::create_dir(&dir).expect("sidecar dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let url = self.redis.url();
        let keyring = self.keyring.display().to_string();
        let mut args = vec![
            "--redis-url",
            &url,
            "--keyring",
            &keyring,
            "--tenant",
            tenant,
            "--agent",
            agent,
        ];
        args.extend_from_slice(extra);
        Sidecar::dev(&dir, &args)
    }
}

/// The `reasons` of a 403 body.
pub fn reasons(reply: &Reply) -> Vec<String> {
    reply.json()["error"]["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no reasons in {:?}", reply.json()))
        .iter()
        .map(|r| r.as_str().expect("reason").to_owned())
        .collect()
}

/// A 403 `policy_denied` with a reason containing `reason`.
pub fn assert_denied(reply: &Reply, reason: &str) {
    assert_error(reply, 403, "policy_denied");
    let reasons = reasons(reply);
    assert!(
        reasons.iter().any(|r| r.contains(reason)),
        "expected a reason containing {reason:?}: {reasons:?}"
    );
}

/// A refusal that hides the secret: word for word what a path holding
/// nothing answers (404 `not_found`), so a caller that may not read a path
/// cannot tell whether anything is there.
pub fn assert_hidden(reply: &Reply, path: &str) {
    assert_error(reply, 404, "not_found");
    assert_eq!(
        reply.json()["error"]["message"],
        format!("no secret at `{path}`"),
        "{:?}",
        reply.json()
    );
}

/// The audit view of `client` (the caller's own events among them) holds a
/// denial at `path` with a reason containing `reason`: what a hidden refusal
/// keeps for the record.
pub async fn assert_denial_audited(client: &Client, path: &str, reason: &str) {
    let reply = get(client, "/v1/audit?limit=1000").await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let items = reply.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        items.iter().any(|e| e["event"] == "vault.denied"
            && e["path"] == path
            && e["reasons"].as_array().is_some_and(|rs| rs
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.contains(reason))))),
        "no denial at {path} for {reason:?} in {items:?}"
    );
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Embedded).await
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Redis).await
                }
            )*
        }
    };
}
