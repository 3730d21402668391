//! Who the sidecar is and who is calling it: `agentvault serve` taking its
//! identity from a real SPIFFE Workload API (late start, a foreign ID,
//! rotations under traffic, the SVID expiry metric), local callers mapped to
//! roles by `SO_PEERCRED` (client processes really run under other uids), and
//! a policy directory that is reloaded live and survives a broken file.

mod support;
#[path = "support/workload_api.rs"]
mod workload_api;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvault::client::Client;
use hyper::Method;
use serde_json::json;
use support::peers::{as_uid, assert_root, cli_as, shared_dir};
use support::{
    assert_denial_audited, assert_denied, assert_error, assert_hidden, free_port, get, put,
    put_value, reasons, RedisServer, Sidecar, BIN,
};
use tempfile::TempDir;
use workload_api::{TestCa, WorkloadApi};

const ID: &str = "spiffe://example.org/agent/acme/planner";
const TTL: Duration = Duration::from_secs(3600);
const RESEARCHER: u32 = 1001;
const WRITER: u32 = 1002;
const APPROVER: u32 = 1003;

// ---- harness -----------------------------------------------------------------

/// Writes acme's tenant keyring (serve refuses a master keyring) to `file`.
fn keygen(file: &Path) {
    keygen_for("acme", file);
}

/// The keyring of `tenant`, derived from a master keyring next to `file`.
fn keygen_for(tenant: &str, file: &Path) {
    let master = file.with_file_name("master.json");
    if !master.exists() {
        support::security::keygen(&master, None);
    }
    support::security::keygen(file, Some((tenant, &master)));
}

/// A running `agentvault serve --config FILE`, its identity from the Workload
/// API named by `SPIFFE_ENDPOINT_SOCKET`. stdout and stderr go to files.
struct Serve {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Serve {
    /// Starts it; returns without waiting for anything.
    fn spawn(dir: &Path, config: &Path, endpoint: &str) -> Self {
        let out = std::fs::File::create(dir.join("serve.out")).expect("stdout file");
        let err = std::fs::File::create(dir.join("serve.err")).expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, _) in std::env::vars() {
            if key.starts_with("AGENTVAULT_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("spawn agentvault serve");
        Self {
            child: Some(child),
            dir: dir.to_owned(),
            socket: dir.join("av.sock"),
        }
    }

    /// Starts it and waits until its socket accepts connections.
    fn start(dir: &Path, config: &Path, endpoint: &str) -> Self {
        let mut serve = Self::spawn(dir, config, endpoint);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&serve.socket).is_err() {
            if let Some(status) = serve.try_wait() {
                panic!("serve exited early with {status}:\n{}", serve.logs());
            }
            assert!(
                Instant::now() < deadline,
                "serve's socket never came up:\n{}",
                serve.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.err")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("serve.out")).unwrap_or_default();
        format!("{out}{}", self.stderr())
    }

    fn client(&self) -> Client {
        Client::new(&self.socket)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The leaf's notAfter, in Unix seconds.
fn not_after(leaf_der: &[u8]) -> i64 {
    x509_parser::parse_x509_certificate(leaf_der)
        .expect("leaf parses")
        .1
        .validity()
        .not_after
        .timestamp()
}

/// The value of an unlabelled metric on the Prometheus endpoint.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

/// Polls the metric until it equals `want` or `timeout` passes; returns the last value.
async fn wait_for_metric(port: u16, name: &str, want: i64, timeout: Duration) -> Option<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = metric(port, name).await;
        if value == Some(want as f64) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SVID_EXPIRY: &str = "agentvault_svid_expiry_timestamp_seconds";

// ---- requests from processes of other uids -----------------------------------

fn role_sidecar(dir: &TempDir) -> Sidecar {
    Sidecar::dev(
        dir.path(),
        &[
            "--role",
            &format!("researcher=uid:{RESEARCHER}"),
            "--role",
            &format!("writer=uid:{WRITER}"),
            "--role",
            &format!("approver=uid:{APPROVER}"),
        ],
    )
}

// ---- serve with the Workload API ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_identity_from_the_workload_api_and_exports_the_svid_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let api = WorkloadApi::start(dir.path(), &ca, ID, TTL);
    keygen(&dir.path().join("keyring.json"));
    let port = free_port();
    let config = dir.path().join("agentvault.yaml");
    std::fs::write(
        &config,
        format!(
            "socket: {dir}/av.sock\nkeyring: {dir}/keyring.json\ndata_dir: {dir}/data\n\
             metrics_addr: 127.0.0.1:{port}\nidentity:\n  pattern: \"spiffe://{{trust_domain}}/agent/{{tenant}}/{{agent}}\"\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let serve = Serve::start(dir.path(), &config, &api.endpoint());
    let c = serve.client();

    // The SVID arrives promptly; health then names the Workload API's identity.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let reply = get(&c, "/v1/health").await;
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health.status, 200, "{:?}\n{}", health.json(), serve.logs());
    let health = health.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["identity"], ID);
    assert_eq!(health["storage"], "embedded");

    assert_eq!(put_value(&c, "team/key", "sk-serve-1").await, 1);
    let secret = get(&c, "/v1/secrets/team/key").await;
    assert_eq!(secret.status, 200, "{:?}", secret.json());
    assert_eq!(secret.json()["value"], "sk-serve-1");

    let want = not_after(api.current().leaf_der());
    let got = wait_for_metric(port, SVID_EXPIRY, want, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        Some(want as f64),
        "{SVID_EXPIRY} vs the SVID's notAfter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_unavailable_until_the_workload_api_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let agent_socket = dir.path().join("agent.sock");
    let started = Instant::now();
    let api = WorkloadApi::start_after(&agent_socket, Duration::from_secs(2), &ca, ID, TTL);
    keygen(&dir.path().join("keyring.json"));
    let config = dir.path().join("agentvault.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{dir}/av.sock\"\nkeyring = \"{dir}/keyring.json\"\ndata_dir = \"{dir}/data\"\n\
             metrics_addr = \"off\"\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let serve = Serve::start(dir.path(), &config, &api.endpoint());
    let c = serve.client();

    let health = get(&c, "/v1/health").await;
    let read = get(&c, "/v1/secrets/x").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "inconclusive: the sidecar took {:?} to start, the Workload API was up already",
        started.elapsed()
    );
    for reply in [&health, &read] {
        assert_error(reply, 503, "unavailable");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("waiting for") && message.contains("SVID"),
            "the message should say it waits for an SVID: {message:?}"
        );
    }

    // Once the API is up, health turns 200 without any restart.
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let reply = get(&c, "/v1/health").await;
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.status, 200, "{:?}\n{}", health.json(), serve.logs());
    assert_eq!(health.json()["identity"], ID);
    assert!(api.fetch_calls() >= 1);
    assert_error(&get(&c, "/v1/secrets/x").await, 404, "not_found");
}

/// Runs `serve` for the SVID `spiffe_id` with the keyring of `keyring_tenant`
/// until it exits, which it must do with a failure; returns its stderr.
fn serve_until_it_fails(spiffe_id: &str, keyring_tenant: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let api = WorkloadApi::start(dir.path(), &ca, spiffe_id, TTL);
    keygen_for(keyring_tenant, &dir.path().join("keyring.json"));
    let config = dir.path().join("agentvault.yaml");
    std::fs::write(
        &config,
        format!(
            "socket: {dir}/av.sock\nkeyring: {dir}/keyring.json\ndata_dir: {dir}/data\nmetrics_addr: \"off\"\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut serve = Serve::spawn(dir.path(), &config, &api.endpoint());
    let status = serve
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("serve kept running:\n{}", serve.logs()));
    assert!(!status.success(), "exit status {status}");
    assert!(!dir.path().join("av.sock").exists(), "socket left behind");
    serve.stderr()
}

#[test]
fn serve_exits_when_its_keyring_is_another_tenants() {
    let stderr = serve_until_it_fails(ID, "globex");
    assert!(
        stderr.contains("holds the keys of tenant `globex`, not of tenant `acme`"),
        "{stderr}"
    );
}

#[test]
fn serve_exits_when_the_svid_does_not_name_an_agent() {
    let foreign = "spiffe://example.org/workload/x";
    let stderr = serve_until_it_fails(foreign, "acme");
    assert!(
        stderr.contains(foreign) && stderr.contains("does not match the pattern"),
        "stderr should name the SPIFFE ID and the mismatch:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("agentvault: ") && l.contains(foreign)),
        "no final error line on stderr:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn svid_rotations_under_traffic_drop_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let ca = TestCa::new("example.org");
    let api = Arc::new(WorkloadApi::start(dir.path(), &ca, ID, TTL));
    keygen(&dir.path().join("keyring.json"));
    let port = free_port();
    let config = dir.path().join("agentvault.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{dir}/av.sock\"\nkeyring = \"{dir}/keyring.json\"\nredis_url = \"{url}\"\n\
             metrics_addr = \"127.0.0.1:{port}\"\n\
             # as fast as the machine goes: rotations, not the rate limit, are tested\n\
             [limits]\nrate_per_second = 0\n",
            dir = dir.path().display(),
            url = redis.url()
        ),
    )
    .unwrap();
    let serve = Serve::start(dir.path(), &config, &api.endpoint());
    let c = serve.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&c, "/v1/health").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", serve.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = not_after(api.current().leaf_der());
    assert_eq!(
        wait_for_metric(port, SVID_EXPIRY, first, Duration::from_secs(5)).await,
        Some(first as f64)
    );

    const TASKS: usize = 3;
    const PER_TASK: usize = 100;
    let rotating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let c = c.clone();
        let rotating = rotating.clone();
        workers.push(tokio::spawn(async move {
            let path = format!("rot/task-{task}");
            let mut failures = Vec::new();
            let mut written = None;
            let mut n = 0usize;
            // At least PER_TASK requests, and on until the rotations are over.
            while n < PER_TASK || rotating.load(std::sync::atomic::Ordering::SeqCst) {
                let reply = if n.is_multiple_of(2) {
                    let value = format!("v-{task}-{n}");
                    let reply = put(&c, &path, json!({ "value": value })).await;
                    if reply.status == 200 {
                        written = Some(value);
                    }
                    reply
                } else {
                    let reply = get(&c, &format!("/v1/secrets/{path}")).await;
                    if reply.status == 200 && reply.json()["value"].as_str() != written.as_deref() {
                        failures.push(format!("read {:?}, wrote {written:?}", reply.json()));
                    }
                    reply
                };
                if !(200..300).contains(&reply.status) {
                    failures.push(format!("{}: {:?}", reply.status, reply.json()));
                }
                n += 1;
            }
            (n, failures)
        }));
    }
    let mut serials = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        serials.push(api.rotate());
    }
    rotating.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    let mut failures = Vec::new();
    for worker in workers {
        let (n, f) = worker.await.expect("worker");
        total += n;
        failures.extend(f);
    }
    assert!(total >= TASKS * PER_TASK, "only {total} requests");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed across rotations: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    serials.dedup();
    assert_eq!(serials.len(), 4, "each rotation issues a new leaf");

    let last = not_after(api.current().leaf_der());
    assert!(last > first, "rotations 1.6 s apart move notAfter");
    assert_eq!(
        wait_for_metric(port, SVID_EXPIRY, last, Duration::from_secs(5)).await,
        Some(last as f64),
        "{SVID_EXPIRY} should follow the rotated SVID"
    );
    let health = get(&c, "/v1/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["identity"], ID);
    assert_eq!(api.fetch_calls(), 1, "rotations must not need a reconnect");
}

// ---- roles from SO_PEERCRED --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_scoped_secret_is_readable_by_that_role_only() {
    assert_root();
    let dir = shared_dir();
    let sidecar = role_sidecar(&dir);
    let socket = sidecar.socket.clone();

    let out = cli_as(
        Some(RESEARCHER),
        &socket,
        &[
            "put",
            "research/notes",
            "n-secret-1",
            "--scope",
            "researcher",
        ],
    )
    .await;
    assert!(out.status.success(), "researcher put: {out:?}");

    let out = cli_as(Some(RESEARCHER), &socket, &["get", "research/notes"]).await;
    assert!(out.status.success(), "researcher get: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n-secret-1\n");
    let mine = as_uid(
        RESEARCHER,
        &socket,
        Method::GET,
        "/v1/secrets/research/notes",
        None,
    )
    .await;
    assert_eq!(mine.status, 200, "{:?}", mine.json());
    assert_eq!(mine.json()["scope"], "researcher");

    // The writer role is told what a missing path tells it (CLI exit 3,
    // HTTP 404), and the audit keeps why it was refused.
    let out = cli_as(Some(WRITER), &socket, &["get", "research/notes"]).await;
    assert_eq!(out.status.code(), Some(3), "writer get: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    let denied = as_uid(
        WRITER,
        &socket,
        Method::GET,
        "/v1/secrets/research/notes",
        None,
    )
    .await;
    assert_hidden(&denied, "research/notes");
    assert!(!String::from_utf8_lossy(&denied.body).contains("n-secret-1"));

    // The agent-level caller (root matches no role) is refused as well; its
    // audit view holds its own denial with the reason.
    let root = get(&sidecar.client(), "/v1/secrets/research/notes").await;
    assert_hidden(&root, "research/notes");
    assert_denial_audited(
        &sidecar.client(),
        "research/notes",
        "scoped to role researcher",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscoped_secret_is_readable_by_every_role() {
    assert_root();
    let dir = shared_dir();
    let sidecar = role_sidecar(&dir);
    let socket = sidecar.socket.clone();
    put_value(&sidecar.client(), "team/shared", "everyone-1").await;
    for uid in [RESEARCHER, WRITER] {
        let out = cli_as(Some(uid), &socket, &["get", "team/shared"]).await;
        assert!(out.status.success(), "uid {uid}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "everyone-1\n");
        let reply = as_uid(uid, &socket, Method::GET, "/v1/secrets/team/shared", None).await;
        assert_eq!(reply.status, 200, "uid {uid}: {:?}", reply.json());
        assert_eq!(reply.json()["value"], "everyone-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_may_not_scope_a_secret_to_another_role() {
    assert_root();
    let dir = shared_dir();
    let sidecar = role_sidecar(&dir);
    let socket = sidecar.socket.clone();
    let body = json!({"value": "w-1", "scope": "researcher"});
    let reply = as_uid(
        WRITER,
        &socket,
        Method::PUT,
        "/v1/secrets/writer/x",
        Some(body),
    )
    .await;
    assert_denied(&reply, "may not scope a secret to role researcher");
    let out = cli_as(
        Some(WRITER),
        &socket,
        &["put", "writer/y", "w-2", "--scope", "researcher"],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Nothing was written.
    assert_error(
        &get(&sidecar.client(), "/v1/secrets/writer/x").await,
        404,
        "not_found",
    );
    // Scoping to itself is fine.
    let own = as_uid(
        WRITER,
        &socket,
        Method::PUT,
        "/v1/secrets/writer/z",
        Some(json!({"value": "w-3", "scope": "writer"})),
    )
    .await;
    assert_eq!(own.status, 200, "{:?}", own.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_level_caller_provisions_role_scoped_secrets_but_cannot_read_them() {
    assert_root();
    let dir = shared_dir();
    let sidecar = role_sidecar(&dir);
    let socket = sidecar.socket.clone();
    let c = sidecar.client();

    // Root writes a new secret scoped to the researcher: the researcher reads it, root does not.
    let reply = put(
        &c,
        "research/api",
        json!({"value": "prov-1", "scope": "researcher"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let read = as_uid(
        RESEARCHER,
        &socket,
        Method::GET,
        "/v1/secrets/research/api",
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{:?}", read.json());
    assert_eq!(read.json()["value"], "prov-1");
    let root_read = get(&c, "/v1/secrets/research/api").await;
    assert_hidden(&root_read, "research/api");
    assert!(!String::from_utf8_lossy(&root_read.body).contains("prov-1"));

    // Root overwrites it (a rotation by the provisioner), still scoped.
    let overwrite = put(
        &c,
        "research/api",
        json!({"value": "prov-2", "scope": "researcher"}),
    )
    .await;
    assert_eq!(
        overwrite.status,
        200,
        "the agent-level caller may overwrite a role-scoped secret: {:?}",
        overwrite.json()
    );
    assert_eq!(overwrite.json()["version"], 2);
    let read = as_uid(
        RESEARCHER,
        &socket,
        Method::GET,
        "/v1/secrets/research/api",
        None,
    )
    .await;
    assert_eq!(read.json()["value"], "prov-2", "{:?}", read.json());
    assert_hidden(&get(&c, "/v1/secrets/research/api").await, "research/api");

    // The same for a secret the researcher wrote itself.
    let own = as_uid(
        RESEARCHER,
        &socket,
        Method::PUT,
        "/v1/secrets/research/own",
        Some(json!({"value": "r-1", "scope": "researcher"})),
    )
    .await;
    assert_eq!(own.status, 200, "{:?}", own.json());
    let overwrite = put(&c, "research/own", json!({"value": "r-2"})).await;
    assert_eq!(overwrite.status, 200, "{:?}", overwrite.json());

    // Root may not move the researcher's secret to a role whose reads it could
    // make: the old versions would go along.
    for (method, body) in [
        (Method::PUT, json!({"value": "prov-3", "scope": "writer"})),
        (Method::PATCH, json!({"scope": "writer"})),
    ] {
        let moved = c
            .request(
                method.clone(),
                "/v1/secrets/research/api",
                Some(body.to_string().into_bytes()),
            )
            .await
            .unwrap();
        assert_denied(
            &moved,
            "only role researcher may change this secret's scope",
        );
    }
    let writer_read = as_uid(
        WRITER,
        &socket,
        Method::GET,
        "/v1/secrets/research/api?version=1",
        None,
    )
    .await;
    assert_hidden(&writer_read, "research/api");

    // And root deletes it.
    let deleted = c
        .request(Method::DELETE, "/v1/secrets/research/api", None)
        .await
        .unwrap();
    assert_eq!(
        deleted.status,
        204,
        "the agent-level caller may delete a role-scoped secret: {:?}",
        deleted.json()
    );
    let gone = as_uid(
        RESEARCHER,
        &socket,
        Method::GET,
        "/v1/secrets/research/api",
        None,
    )
    .await;
    assert_error(&gone, 404, "not_found");
}

// ---- policy reload -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_keeps_the_last_good_one_and_a_fixed_one_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            std::fs::copy(&path, policies.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied >= 1 && policies.join("authz.rego").exists());
    let sidecar_dir = dir.path().join("sidecar");
    std::fs::create_dir(&sidecar_dir).unwrap();
    let policy_dir = policies.display().to_string();
    let sidecar = Sidecar::dev(&sidecar_dir, &["--policy-dir", &policy_dir]);
    let c = sidecar.client();
    put_value(&c, "app/key", "k-1").await;
    assert_eq!(get(&c, "/v1/secrets/app/key").await.status, 200);

    std::fs::write(
        policies.join("authz.rego"),
        "package agentvault.authz\n\ndecision := {\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = get(&c, "/v1/secrets/app/key").await;
    assert_eq!(
        read.status,
        200,
        "the last good policy still decides: {:?}",
        read.json()
    );
    assert_eq!(read.json()["value"], "k-1");
    assert_eq!(get(&c, "/v1/health").await.status, 200);
    let logs = sidecar.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("policy") && l.contains("authz.rego") && l.contains("ERROR")),
        "the log should show the policy error:\n{logs}"
    );

    std::fs::write(
        policies.join("authz.rego"),
        "package agentvault.authz\n\ndecision := {\"allow\": false, \"reasons\": [\"closed\"]}\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let denied = loop {
        let reply = get(&c, "/v1/secrets/app/key").await;
        if reply.status != 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A read it may not make answers as a missing path; a write of a new
    // path shows the new policy's reason.
    assert_hidden(&denied, "app/key");
    assert!(!String::from_utf8_lossy(&denied.body).contains("k-1"));
    let write = put(&c, "app/new", json!({"value": "v"})).await;
    assert_error(&write, 403, "policy_denied");
    assert_eq!(reasons(&write), vec!["closed".to_owned()]);
}
