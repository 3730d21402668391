//! Envoy's Secret Discovery Service on the Envoy socket, driven by a client
//! built from Envoy's own protos (`envoy-types`): the SVID, the trust bundle
//! and secrets as Envoy receives them; ACK, NACK and subscription changes on
//! one stream; pushes after a PUT through another sidecar sharing Redis, an
//! expiry, a deletion and a Workload API rotation; denied and missing
//! resources left out and audited; who may call; and that no secret value
//! reaches a log line or the audit log.
//!
//! The SDS sidecar is `agentvault serve` with its identity from a real
//! Workload API (tests/support/workload_api.rs) and Redis; a dev sidecar of
//! the same tenant and agent shares that Redis and keyring and writes the
//! secrets. The test process (uid 0) plays Envoy (`--role envoy=uid:0`), so
//! this needs root, as tests/envoy.rs does.

mod support;
#[path = "support/workload_api.rs"]
mod workload_api;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentvault::store::{RedisStore, RedisTarget, Store};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use support::peers::{self, shared_dir};
use support::{free_port, put, wait_for, RedisServer, Sidecar, BIN};
use workload_api::{TestCa, WorkloadApi};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const ID: &str = "spiffe://dev.local/agent/acme/planner";
const TTL: Duration = Duration::from_secs(3600);
/// How long a push may take before the test gives up (the guarantee is 1 s;
/// this only bounds a hang, it is not what the tests assert).
const PUSH_WAIT: Duration = Duration::from_secs(10);

const API_KEY: &str = "sk-sds-live-0c41f9e2";
const API_KEY_2: &str = "sk-sds-rotated-77b1d3aa";
const SCOPED_AWAY: &str = "researcher-only-sds-5d2e";
const SHORT_LIVED: &str = "short-lived-sds-a9c3";

// ---- harness -----------------------------------------------------------------

/// A running `agentvault serve` child with its logs in files.
struct Serve {
    child: Child,
    dir: PathBuf,
}

impl Serve {
    fn logs(&self) -> String {
        ["serve.out", "serve.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SDS sidecar, its Workload API, and a writer sharing Redis and keyring.
struct Env {
    serve: Serve,
    writer: Sidecar,
    api: WorkloadApi,
    ca: TestCa,
    envoy: PathBuf,
    metrics: u16,
    redis: RedisServer,
    _dir: TempDir,
}

impl Env {
    async fn start() -> Self {
        peers::assert_root();
        let dir = shared_dir();
        let redis = RedisServer::start();
        let master = dir.path().join("master.json");
        let keyring = dir.path().join("acme.json");
        support::security::keygen(&master, None);
        support::security::keygen(&keyring, Some(("acme", &master)));
        let ca = TestCa::new("dev.local");
        let api = WorkloadApi::start(dir.path(), &ca, ID, TTL);

        let serve_dir = dir.path().join("serve");
        std::fs::create_dir(&serve_dir).unwrap();
        let envoy = serve_dir.join("envoy.sock");
        let socket = serve_dir.join("av.sock");
        let metrics = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(serve_dir.join("data"))
            .arg("--keyring")
            .arg(&keyring)
            .args(["--redis-url", &redis.url()])
            .args(["--workload-api", &api.endpoint()])
            .arg("--envoy-socket")
            .arg(&envoy)
            .args(["--role", "envoy=uid:0", "--role", "researcher=uid:1001"])
            .args(["--rate-limit", "0"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(serve_dir.join("serve.out")).unwrap())
            .stderr(std::fs::File::create(serve_dir.join("serve.err")).unwrap());
        for (key, _) in std::env::vars() {
            if key.starts_with("AGENTVAULT_") || key == "SPIFFE_ENDPOINT_SOCKET" {
                cmd.env_remove(key);
            }
        }
        let serve = Serve {
            child: cmd.spawn().expect("spawn agentvault serve"),
            dir: serve_dir,
        };
        let client = agentvault::client::Client::new(&socket);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = client.get("/v1/health").await {
                if reply.status == 200 {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve never became ready:\n{}",
                serve.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let writer_dir = dir.path().join("writer");
        std::fs::create_dir(&writer_dir).unwrap();
        let url = redis.url();
        let writer = Sidecar::dev(
            &writer_dir,
            &[
                "--redis-url",
                &url,
                "--keyring",
                keyring.to_str().unwrap(),
                "--tenant",
                "acme",
                "--agent",
                "planner",
                "--rate-limit",
                "0",
            ],
        );
        Self {
            serve,
            writer,
            api,
            ca,
            envoy,
            metrics,
            redis,
            _dir: dir,
        }
    }

    async fn client(&self) -> SecretDiscoveryServiceClient<Channel> {
        SecretDiscoveryServiceClient::new(support::uds_channel(&self.envoy).await)
    }

    /// Writes a secret through the other sidecar, as the agent-level caller.
    async fn provision(&self, path: &str, body: Value) {
        let reply = put(&self.writer.client(), path, body).await;
        assert_eq!(reply.status, 200, "provision {path}: {:?}", reply.json());
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The tenant's whole audit log, newest first, as the operator reads it
    /// from Redis (a caller's own view is scoped by the policy).
    async fn audit(&self) -> Vec<Value> {
        let store = RedisStore::new(RedisTarget::Standalone(self.redis.url()));
        let entries = store.audit_newest("acme", 500).await.unwrap();
        entries
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }
}

/// A StreamSecrets stream as Envoy drives it.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(env: &Env, names: &[&str]) -> Self {
        let (tx, requests) = mpsc::channel(8);
        tx.send(request(names, "", "", None)).await.unwrap();
        let rx = env
            .client()
            .await
            .stream_secrets(ReceiverStream::new(requests))
            .await
            .expect("StreamSecrets opens")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(PUSH_WAIT, self.rx.message())
            .await
            .expect("a response within the wait")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// ACKs `resp` with the same names.
    async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(request(names, &resp.version_info, &resp.nonce, None))
            .await;
    }
}

fn request(names: &[&str], version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: TYPE_URL.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|message| RpcStatus {
            code: 3,
            message: message.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

/// A DeltaSecrets stream as Envoy drives it.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(env: &Env, names: &[&str]) -> Self {
        let (tx, requests) = mpsc::channel(8);
        tx.send(DeltaDiscoveryRequest {
            type_url: TYPE_URL.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = env
            .client()
            .await
            .delta_secrets(ReceiverStream::new(requests))
            .await
            .expect("DeltaSecrets opens")
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let resp = tokio::time::timeout(PUSH_WAIT, self.rx.message())
            .await
            .expect("a delta response within the wait")
            .expect("the stream is healthy")
            .expect("the stream is open");
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: TYPE_URL.into(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        resp
    }
}

fn decode(any: &envoy_types::pb::google::protobuf::Any) -> Secret {
    assert_eq!(any.type_url, TYPE_URL);
    Secret::decode(any.value.as_slice()).expect("a Secret")
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(resp.type_url, TYPE_URL);
    assert!(!resp.nonce.is_empty() && !resp.version_info.is_empty());
    let mut all: Vec<Secret> = resp.resources.iter().map(decode).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn names(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.name.as_str()).collect()
}

fn inline(source: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|s| s.specifier.clone()) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        Some(Specifier::InlineString(text)) => text.into_bytes(),
        other => panic!("not inline: {other:?}"),
    }
}

/// The value a `generic_secret` carries.
fn generic_value(secret: &Secret) -> String {
    match &secret.r#type {
        Some(secret::Type::GenericSecret(g)) => String::from_utf8(inline(&g.secret)).unwrap(),
        other => panic!("{} is not a generic_secret: {other:?}", secret.name),
    }
}

/// DER blocks of a PEM text, with their tags.
fn pem_blocks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    pem::parse_many(bytes)
        .expect("PEM")
        .into_iter()
        .map(|p| (p.tag().to_owned(), p.contents().to_vec()))
        .collect()
}

/// The SVID and its key as `default` carries them.
fn tls_of(secret: &Secret) -> (Vec<Vec<u8>>, Vec<u8>) {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a tls_certificate", secret.name)
    };
    let chain = pem_blocks(&inline(&tls.certificate_chain));
    assert!(chain.iter().all(|(tag, _)| tag == "CERTIFICATE"));
    let key = pem_blocks(&inline(&tls.private_key));
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].0, "PRIVATE KEY");
    (
        chain.into_iter().map(|(_, der)| der).collect(),
        key[0].1.clone(),
    )
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_each_resource_type_and_leaves_out_denied_and_missing_ones() {
    let env = Env::start().await;
    env.provision(
        "envoy/openai/api-key",
        json!({"value": API_KEY, "scope": "envoy", "type": "api_key"}),
    )
    .await;
    env.provision(
        "team/researcher-only",
        json!({"value": SCOPED_AWAY, "scope": "researcher"}),
    )
    .await;
    let asked = [
        "default",
        "ROOTCA",
        "secret:envoy/openai/api-key",
        "secret:team/researcher-only",
        "secret:envoy/does-not-exist",
        "not-a-resource",
    ];

    // State of the world: the three servable resources, the rest left out.
    let mut sotw = Sotw::open(&env, &asked).await;
    let first = sotw.next().await;
    let served = secrets(&first);
    assert_eq!(
        names(&served),
        ["ROOTCA", "default", "secret:envoy/openai/api-key"]
    );
    let issued = env.api.current();
    let (chain, key) = tls_of(&served[1]);
    assert_eq!(chain, issued.cert_chain_der, "the Workload API's SVID");
    assert_eq!(key, issued.key_der, "and its key");
    let Some(secret::Type::ValidationContext(vc)) = &served[0].r#type else {
        panic!("ROOTCA is a validation_context")
    };
    assert_eq!(
        pem_blocks(&inline(&vc.trusted_ca)),
        [("CERTIFICATE".to_owned(), env.ca.bundle_der())]
    );
    assert_eq!(generic_value(&served[2]), API_KEY);
    sotw.ack(&first, &asked).await;

    // Fetch answers the same, and a delta stream sends the same resources.
    let fetched = env
        .client()
        .await
        .fetch_secrets(request(&asked, "", "", None))
        .await
        .expect("FetchSecrets answers")
        .into_inner();
    assert_eq!(
        secrets(&fetched)
            .iter()
            .map(|s| s.encode_to_vec())
            .collect::<Vec<_>>(),
        served.iter().map(|s| s.encode_to_vec()).collect::<Vec<_>>()
    );
    let mut delta = Delta::open(&env, &asked).await;
    let d = delta.next().await;
    let mut delta_names: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    delta_names.sort();
    assert_eq!(
        delta_names,
        ["ROOTCA", "default", "secret:envoy/openai/api-key"]
    );
    assert!(d.removed_resources.is_empty(), "{:?}", d.removed_resources);
    for r in &d.resources {
        assert!(!r.version.is_empty());
        assert_eq!(decode(r.resource.as_ref().unwrap()).name, r.name);
    }

    // Audit: the read as the Envoy caller, the denial by policy (with its
    // reasons, though Envoy is told no more than of a missing secret), the
    // missing secret as a denial; nothing carries a value.
    let audit = env.audit().await;
    let read = audit
        .iter()
        .find(|e| e["event"] == "vault.accessed" && e["path"] == "envoy/openai/api-key")
        .unwrap_or_else(|| panic!("the SDS read is audited: {audit:?}"));
    assert_eq!(read["role"], "envoy");
    assert!(audit.iter().any(|e| e["event"] == "vault.denied"
        && e["path"] == "team/researcher-only"
        && e["outcome"] == "policy_denied"
        && e["role"] == "envoy"));
    // Once, by the vault, with its reasons: not again as a missing secret.
    assert!(
        !audit.iter().any(|e| e["event"] == "vault.denied"
            && e["path"] == "team/researcher-only"
            && e["outcome"] == "not_found"),
        "{audit:?}"
    );
    assert!(audit.iter().any(|e| e["event"] == "vault.denied"
        && e["path"] == "envoy/does-not-exist"
        && e["outcome"] == "not_found"));
    assert!(audit.iter().any(|e| e["event"] == "vault.denied"
        && e["path"] == "not-a-resource"
        && e["outcome"] == "not_found"));

    let metrics = env.metrics().await;
    for kind in ["tls_certificate", "validation_context", "generic_secret"] {
        assert!(
            counter(
                &metrics,
                &format!("agentvault_sds_resources_served_total{{type=\"{kind}\"}}")
            ) >= 3.0,
            "{kind}: stream, fetch and delta each served one\n{metrics}"
        );
    }
    assert_eq!(
        counter(&metrics, "agentvault_sds_streams_open{api=\"sotw\"}"),
        1.0
    );
    assert_eq!(
        counter(&metrics, "agentvault_sds_streams_open{api=\"delta\"}"),
        1.0
    );
    // A secret the Envoy caller may not read is answered as a missing one
    // (no existence oracle).
    assert_eq!(
        counter(
            &metrics,
            "agentvault_sds_resources_left_out_total{reason=\"not_found\"}"
        ),
        9.0,
        "the denied secret, the missing one and the unknown name, once per stream or fetch"
    );

    // No secret value and no key material in the logs or the audit log.
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", issued.key_der.clone()));
    let key_line = key_pem.lines().nth(1).unwrap().to_owned();
    let text = format!(
        "{}{}{}",
        env.serve.logs(),
        env.writer.logs(),
        serde_json::to_string(&audit).unwrap()
    );
    for value in [API_KEY, SCOPED_AWAY, key_line.as_str()] {
        assert!(!text.contains(value), "{value} leaked");
    }
    drop(sotw);
    drop(delta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_nacks_and_subscription_changes_on_one_stream() {
    let env = Env::start().await;
    env.provision("envoy/a", json!({"value": "value-a", "scope": "envoy"}))
        .await;
    env.provision("envoy/b", json!({"value": "value-b", "scope": "envoy"}))
        .await;

    let mut sotw = Sotw::open(&env, &["secret:envoy/a", "ROOTCA"]).await;
    let first = sotw.next().await;
    assert_eq!(names(&secrets(&first)), ["ROOTCA", "secret:envoy/a"]);
    sotw.ack(&first, &["secret:envoy/a", "ROOTCA"]).await;

    // Envoy rejects the next version: the NACK is logged with its error_detail
    // and counted, and the rejected content is not sent again.
    env.provision("envoy/a", json!({"value": "value-a2", "scope": "envoy"}))
        .await;
    let second = sotw.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(generic_value(&secrets(&second)[1]), "value-a2");
    sotw.send(request(
        &["secret:envoy/a", "ROOTCA"],
        &first.version_info,
        &second.nonce,
        Some("bad generic secret: rejected-by-test-envoy"),
    ))
    .await;
    wait_for("the NACK is counted", Duration::from_secs(10), || {
        env.serve.logs().contains("rejected-by-test-envoy")
    });
    let metrics = env.metrics().await;
    assert_eq!(
        counter(&metrics, "agentvault_sds_nacks_total{api=\"sotw\"}"),
        1.0
    );

    // A subscription change on the same stream: b in, ROOTCA out. The next
    // response holds exactly the new set, still at the version Envoy
    // rejected for a (nothing changed for it since).
    sotw.send(request(
        &["secret:envoy/a", "secret:envoy/b"],
        &first.version_info,
        &second.nonce,
        None,
    ))
    .await;
    let third = sotw.next().await;
    let served = secrets(&third);
    assert_eq!(names(&served), ["secret:envoy/a", "secret:envoy/b"]);
    assert_eq!(generic_value(&served[0]), "value-a2");
    assert_eq!(generic_value(&served[1]), "value-b");
    let versions: Vec<u64> = [&first, &second, &third]
        .iter()
        .map(|r| r.version_info.parse().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    sotw.ack(&third, &["secret:envoy/a", "secret:envoy/b"])
        .await;

    // After the change, a write of b reaches this stream; a write of the
    // secret it no longer watches would not have woken it (the next response
    // is b's).
    env.provision("envoy/b", json!({"value": "value-b2", "scope": "envoy"}))
        .await;
    let fourth = sotw.next().await;
    assert_eq!(generic_value(&secrets(&fourth)[1]), "value-b2");
    assert_eq!(generic_value(&secrets(&fourth)[0]), "value-a2");
    let metrics = env.metrics().await;
    assert!(counter(&metrics, "agentvault_sds_pushes_total{api=\"sotw\"}") >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_rollbacks_expiry_and_deletion_through_another_sidecar_reach_every_stream() {
    let env = Env::start().await;
    env.provision(
        "envoy/openai/api-key",
        json!({"value": API_KEY, "scope": "envoy"}),
    )
    .await;
    let name = "secret:envoy/openai/api-key";
    let mut first = Sotw::open(&env, &[name]).await;
    let mut second = Sotw::open(&env, &[name, "default"]).await;
    let mut delta = Delta::open(&env, &[name]).await;
    let r1 = first.next().await;
    let r2 = second.next().await;
    let d = delta.next().await;
    assert_eq!(generic_value(&secrets(&r1)[0]), API_KEY);
    first.ack(&r1, &[name]).await;
    second.ack(&r2, &[name, "default"]).await;
    let old_version = d.resources[0].version.clone();

    // A new version written through the other sidecar is pushed to all three.
    env.provision(
        "envoy/openai/api-key",
        json!({"value": API_KEY_2, "scope": "envoy"}),
    )
    .await;
    let r1 = first.next().await;
    assert_eq!(generic_value(&secrets(&r1)[0]), API_KEY_2);
    let r2 = second.next().await;
    let pushed = secrets(&r2);
    assert_eq!(names(&pushed), ["default", name]);
    assert_eq!(generic_value(&pushed[1]), API_KEY_2);
    let d = delta.next().await;
    assert_eq!(d.resources.len(), 1);
    assert_ne!(d.resources[0].version, old_version);
    assert_eq!(
        generic_value(&decode(d.resources[0].resource.as_ref().unwrap())),
        API_KEY_2
    );
    first.ack(&r1, &[name]).await;
    second.ack(&r2, &[name, "default"]).await;

    // A rollback is a new active version too; the resource's version follows
    // its content, so the old value comes back under its old version.
    let reply = support::send(
        &env.writer.client(),
        hyper::Method::POST,
        "/v1/rollback/envoy/openai/api-key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let r1 = first.next().await;
    assert_eq!(generic_value(&secrets(&r1)[0]), API_KEY);
    let r2 = second.next().await;
    assert_eq!(generic_value(&secrets(&r2)[1]), API_KEY);
    let d = delta.next().await;
    assert_eq!(d.resources[0].version, old_version);
    first.ack(&r1, &[name]).await;
    second.ack(&r2, &[name, "default"]).await;

    // Deletion: the delta stream is told it is removed; the others get the
    // state of the world without it.
    let reply = support::raw(
        &env.writer.client(),
        hyper::Method::DELETE,
        "/v1/secrets/envoy/openai/api-key",
        b"",
    )
    .await;
    assert!(
        reply.status == 200 || reply.status == 204,
        "{:?}",
        reply.json()
    );
    let d = delta.next().await;
    assert_eq!(d.removed_resources, [name]);
    assert!(d.resources.is_empty());
    let r1 = first.next().await;
    assert!(r1.resources.is_empty());
    let r2 = second.next().await;
    assert_eq!(names(&secrets(&r2)), ["default"]);

    // Expiry: a secret that expires is taken away when it does.
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    env.provision(
        "envoy/short",
        json!({"value": SHORT_LIVED, "scope": "envoy", "expires_at": expires}),
    )
    .await;
    let mut short = Delta::open(&env, &["secret:envoy/short"]).await;
    let d = short.next().await;
    assert_eq!(
        generic_value(&decode(d.resources[0].resource.as_ref().unwrap())),
        SHORT_LIVED
    );
    let d = short.next().await;
    assert_eq!(d.removed_resources, ["secret:envoy/short"]);
    let audit = env.audit().await;
    assert!(
        audit.iter().any(|e| e["event"] == "vault.denied"
            && e["path"] == "envoy/short"
            && e["outcome"] == "expired"),
        "{audit:?}"
    );
    let logs = env.serve.logs();
    for value in [API_KEY, API_KEY_2, SHORT_LIVED] {
        assert!(!logs.contains(value), "{value} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_rotation_is_pushed() {
    let env = Env::start().await;
    let mut sotw = Sotw::open(&env, &["default", "ROOTCA"]).await;
    let mut delta = Delta::open(&env, &["default", "ROOTCA"]).await;
    let first = sotw.next().await;
    assert_eq!(delta.next().await.resources.len(), 2);
    let before = env.api.current();
    assert_eq!(tls_of(&secrets(&first)[1]).0, before.cert_chain_der);
    sotw.ack(&first, &["default", "ROOTCA"]).await;

    env.api.rotate();
    let rotated = env.api.current();
    assert_ne!(rotated.serial, before.serial);
    let pushed = sotw.next().await;
    let served = secrets(&pushed);
    assert_eq!(names(&served), ["ROOTCA", "default"]);
    let (chain, key) = tls_of(&served[1]);
    assert_eq!(chain, rotated.cert_chain_der);
    assert_eq!(key, rotated.key_der);
    let d = delta.next().await;
    assert_eq!(d.resources.len(), 1, "only default changed, ROOTCA did not");
    assert_eq!(d.resources[0].name, "default");
    assert_eq!(
        tls_of(&decode(d.resources[0].resource.as_ref().unwrap())).0,
        rotated.cert_chain_der
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_is_not_envoy_is_refused() {
    peers::assert_root();
    // Envoy is uid 1002 here, so this process (uid 0) is not Envoy.
    let dir = shared_dir();
    let envoy = dir.path().join("envoy.sock");
    let _sidecar = Sidecar::dev(
        dir.path(),
        &[
            "--envoy-socket",
            envoy.to_str().unwrap(),
            "--role",
            "envoy=uid:1002",
        ],
    );
    let mut client = SecretDiscoveryServiceClient::new(support::uds_channel(&envoy).await);
    let err = client
        .fetch_secrets(request(&["default"], "", "", None))
        .await
        .expect_err("FetchSecrets is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("uid 0 is not the role `envoy`"),
        "{}",
        err.message()
    );
    let (tx, requests) = mpsc::channel(1);
    tx.send(request(&["default"], "", "", None)).await.unwrap();
    let err = client
        .stream_secrets(ReceiverStream::new(requests))
        .await
        .expect_err("StreamSecrets is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = client
        .delta_secrets(tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]))
        .await
        .expect_err("DeltaSecrets is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_resource_type_is_refused() {
    let dir = shared_dir();
    let envoy = dir.path().join("envoy.sock");
    let _sidecar = Sidecar::dev(
        dir.path(),
        &[
            "--envoy-socket",
            envoy.to_str().unwrap(),
            "--role",
            "envoy=uid:0",
        ],
    );
    let mut client = SecretDiscoveryServiceClient::new(support::uds_channel(&envoy).await);
    let mut req = request(&["default"], "", "", None);
    req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let err = client
        .fetch_secrets(req)
        .await
        .expect_err("a Cluster request is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("only"), "{}", err.message());
    // The dev SVID is served the same way as a Workload API one.
    let fetched = client
        .fetch_secrets(request(&["default"], "", "", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&secrets(&fetched)), ["default"]);
}
