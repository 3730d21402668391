//! The Envoy front end over its real gRPC socket, with a client built from
//! Envoy's own protos (`envoy-types`): decisions in the OPA-Envoy plugin's
//! shapes, credential injection through the vault, who may call, malformed
//! requests, audit and metrics; and the same answers from real OPA.
//!
//! The test process (uid 0) plays Envoy (`--role envoy=uid:0`); the agent's
//! own callers run as other uids (support::peers), so this needs root.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use agentvault::envoy::{build_input, CheckInput, InputError, SubjectInput};
use agentvault::policy::{PolicyConfig, PolicyEngine, RuleInput};
use envoy_types::pb::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, socket_address, Address, HeaderValueOption,
    SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use hyper::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use support::jwt::{token, TestKey};
use support::peers::{self, as_uid};
use support::{free_port, Sidecar};

const RESEARCHER: u32 = 1001;
const WRITER: u32 = 1002;
/// Maps to no role: the agent-level caller, which provisions secrets.
const AGENT: u32 = 1003;
/// The operator's auditor role, which sees the tenant's whole audit log.
const AUDITOR: u32 = 1004;
const OPENAI_KEY: &str = "sk-live-envoy-7f3a9c41";
const SCOPED_AWAY: &str = "researcher-only-d81e";
const EXPIRED_KEY: &str = "expired-key-55aa";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(path: &str) -> PathBuf {
    repo().join("tests/fixtures/envoy").join(path)
}

/// A policy directory holding agentvault's own policy and `files`.
fn policy_dir(files: &[PathBuf]) -> TempDir {
    let dir = peers::shared_dir();
    std::fs::copy(
        repo().join("policies/authz.rego"),
        dir.path().join("authz.rego"),
    )
    .unwrap();
    for file in files {
        std::fs::copy(file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    dir
}

/// The built-in Envoy policy with the test routes.
fn routes_policy() -> TempDir {
    policy_dir(&[
        repo().join("policies/envoy.rego"),
        fixture("routes/routes.rego"),
    ])
}

struct Env {
    sidecar: Sidecar,
    envoy: PathBuf,
    metrics: Option<String>,
    _dir: TempDir,
    _policies: TempDir,
}

impl Env {
    /// A dev sidecar with the Envoy socket on, `envoy_uid` as Envoy, and
    /// researcher and writer roles.
    fn start(policies: TempDir, envoy_uid: u32, extra: &[&str]) -> Self {
        let dir = peers::shared_dir();
        let envoy = dir.path().join("envoy.sock");
        let metrics_port = free_port().to_string();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let envoy_role = format!("envoy=uid:{envoy_uid}");
        let researcher = format!("researcher=uid:{RESEARCHER}");
        let writer = format!("writer=uid:{WRITER}");
        let auditor = format!("auditor=uid:{AUDITOR}");
        let mut args = vec![
            "--envoy-socket",
            envoy.to_str().unwrap(),
            "--policy-dir",
            policies.path().to_str().unwrap(),
            "--role",
            &researcher,
            "--role",
            &writer,
            "--role",
            &envoy_role,
            "--role",
            &auditor,
            "--rate-limit",
            "0",
            "--metrics-addr",
            &metrics_addr,
        ];
        args.extend_from_slice(extra);
        let sidecar = Sidecar::dev(dir.path(), &args);
        Self {
            sidecar,
            envoy,
            metrics: Some(metrics_addr),
            _dir: dir,
            _policies: policies,
        }
    }

    async fn client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::new(support::uds_channel(&self.envoy).await)
    }

    async fn check(&self, req: CheckRequest) -> CheckResponse {
        self.client()
            .await
            .check(req)
            .await
            .expect("a Check answer")
            .into_inner()
    }

    /// Sends one request to the socket API as `uid`.
    async fn as_uid(
        &self,
        uid: u32,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let reply = as_uid(uid, &self.sidecar.socket, method, uri, body).await;
        let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        (reply.status, json)
    }

    /// Writes a secret as the agent-level caller.
    async fn provision(&self, path: &str, body: Value) {
        let (status, reply) = self
            .as_uid(
                AGENT,
                Method::PUT,
                &format!("/v1/secrets/{path}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "provision {path}: {reply}");
    }

    async fn metrics(&self) -> String {
        let addr = self.metrics.as_ref().unwrap();
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A CheckRequest as Envoy's HTTP ext_authz filter sends it.
fn request(host: &str, method: &str, path: &str, role: Option<&str>) -> CheckRequest {
    request_with(host, method, path, role, &[], "")
}

fn request_with(
    host: &str,
    method: &str,
    path: &str,
    role: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> CheckRequest {
    let mut all_headers: BTreeMap<String, String> = [
        (":authority", host),
        (":method", method),
        (":path", path),
        ("x-request-id", "req-envoy-1"),
    ]
    .iter()
    .chain(headers)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all_headers.retain(|_, v| !v.is_empty());
    let socket = |ip: &str, port: u32| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(socket("127.0.0.1", 41234)),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(socket("127.0.0.1", 15001)),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_764_000_000,
                    nanos: 5,
                }),
                http: Some(HttpRequest {
                    id: "4242".into(),
                    method: method.into(),
                    headers: all_headers.into_iter().collect(),
                    path: path.into(),
                    host: host.into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    body: body.into(),
                    size: body.len() as i64,
                    ..Default::default()
                }),
            }),
            context_extensions: role
                .map(|r| [("agentvault_role".to_string(), r.to_string())].into())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

fn ok(resp: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(0),
        "{}",
        show(resp)
    );
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        _ => panic!("expected an OkHttpResponse: {}", show(resp)),
    }
}

fn denied(resp: &CheckResponse) -> &DeniedHttpResponse {
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(7),
        "PERMISSION_DENIED: {}",
        show(resp)
    );
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        _ => panic!("expected a DeniedHttpResponse: {}", show(resp)),
    }
}

/// A response without header values, for assertion messages.
fn show(resp: &CheckResponse) -> String {
    let status = resp.status.as_ref().map(|s| s.code);
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            format!("status {status:?}, denied {:?}: {}", d.status, d.body)
        }
        Some(HttpResponse::OkResponse(ok)) => format!(
            "status {status:?}, ok with headers {:?}",
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| &h.key)
                .collect::<Vec<_>>()
        ),
        _ => format!("status {status:?}"),
    }
}

fn status_of(d: &DeniedHttpResponse) -> i32 {
    d.status.as_ref().map_or(0, |s| s.code)
}

fn header<'a>(headers: &'a [HeaderValueOption], key: &str) -> Vec<(&'a str, i32)> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref().map(|hv| (hv, h.append_action)))
        .filter(|(hv, _)| hv.key == key)
        .map(|(hv, action)| (hv.value.as_str(), action))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_an_envoy_scoped_secret_the_apps_role_cannot_read() {
    peers::assert_root();
    let env = Env::start(routes_policy(), 0, &[]);
    env.provision(
        "envoy/openai/api-key",
        json!({"value": OPENAI_KEY, "scope": "envoy", "type": "api_key"}),
    )
    .await;

    // The app's role cannot read the key over the socket: it never holds it.
    let (status, body) = env
        .as_uid(
            RESEARCHER,
            Method::GET,
            "/v1/secrets/envoy/openai/api-key",
            None,
        )
        .await;
    assert_eq!(status, 404, "answers as a missing path: {body}");
    assert!(!body.to_string().contains(OPENAI_KEY));

    // Through Envoy, the same role's request gets it as a header.
    let resp = env
        .check(request_with(
            "api.openai.com",
            "POST",
            "/v1/chat/completions",
            Some("researcher"),
            &[("authorization", "Bearer app-supplied")],
            "",
        ))
        .await;
    let injected = format!("Bearer {OPENAI_KEY}");
    assert_eq!(
        header(&ok(&resp).headers, "authorization"),
        vec![(
            injected.as_str(),
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        )],
        "the credential replaces whatever the app sent"
    );

    // Same host, but a path or a role the policy does not allow.
    let resp = env
        .check(request(
            "api.openai.com",
            "POST",
            "/admin",
            Some("researcher"),
        ))
        .await;
    let d = denied(&resp);
    assert_eq!(status_of(d), 403);
    assert!(d.body.contains("path is not allowed"), "{}", d.body);
    let resp = env
        .check(request(
            "api.openai.com",
            "POST",
            "/v1/chat",
            Some("writer"),
        ))
        .await;
    assert!(denied(&resp).body.contains("role writer may not call"));
    let resp = env
        .check(request("api.openai.com", "POST", "/v1/chat", None))
        .await;
    assert!(
        denied(&resp).body.contains("may not call"),
        "no role named: the policy denies"
    );
    let resp = env
        .check(request(
            "nowhere.example.com",
            "GET",
            "/",
            Some("researcher"),
        ))
        .await;
    assert!(denied(&resp)
        .body
        .contains("no route for host nowhere.example.com"));

    // A route without injection passes the request untouched.
    let resp = env
        .check(request(
            "plain.example.com:443",
            "GET",
            "/x?y=1",
            Some("writer"),
        ))
        .await;
    assert!(ok(&resp).headers.is_empty());

    // Audit: one envoy.check per Check (host only, injected paths, never the
    // value), and the read itself as the Envoy caller.
    let (status, audit) = env
        .as_uid(AUDITOR, Method::GET, "/v1/audit?limit=100", None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let items = audit["items"].as_array().unwrap();
    let checks: Vec<&Value> = items
        .iter()
        .filter(|e| e["event"] == "envoy.check")
        .collect();
    assert_eq!(checks.len(), 6, "{audit}");
    let injected_check = checks
        .iter()
        .find(|e| e["injected"] == json!(["envoy/openai/api-key"]))
        .unwrap_or_else(|| panic!("no check with an injection: {audit}"));
    assert_eq!(injected_check["path"], "api.openai.com");
    assert_eq!(injected_check["role"], "researcher");
    assert_eq!(injected_check["outcome"], "ok");
    assert_eq!(injected_check["action"], "post");
    assert_eq!(injected_check["request_id"], "req-envoy-1");
    assert!(checks
        .iter()
        .any(|e| e["outcome"] == "policy_denied" && e["path"] == "nowhere.example.com"));
    let read = items
        .iter()
        .find(|e| e["event"] == "vault.accessed" && e["path"] == "envoy/openai/api-key")
        .unwrap_or_else(|| panic!("the injection's read is audited: {audit}"));
    assert_eq!(read["role"], "envoy");

    let metrics = env.metrics().await;
    assert!(
        metrics.contains("agentvault_envoy_checks_total{decision=\"allowed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentvault_envoy_checks_total{decision=\"denied\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("agentvault_envoy_check_duration_seconds_count 6"));

    for (what, text) in [
        ("audit", audit.to_string()),
        ("metrics", metrics),
        ("logs", env.sidecar.logs()),
    ] {
        assert!(
            !text.contains(OPENAI_KEY),
            "the secret value leaked into {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_cannot_be_read_denies_the_request() {
    peers::assert_root();
    let env = Env::start(routes_policy(), 0, &[]);
    env.provision(
        "envoy/expired",
        json!({"value": EXPIRED_KEY, "scope": "envoy", "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    // Scoped to another role: the policy refuses it to the Envoy caller too.
    env.provision(
        "agent/own-key",
        json!({"value": SCOPED_AWAY, "scope": "researcher"}),
    )
    .await;

    let cases = [
        ("missing.example.com", "envoy/does-not-exist", "not_found"),
        ("expired.example.com", "envoy/expired", "expired"),
        // A secret the role may not read answers as a missing one.
        ("agent-only.example.com", "agent/own-key", "not_found"),
    ];
    for (host, path, code) in cases {
        let resp = env
            .check(request(host, "GET", "/", Some("researcher")))
            .await;
        let d = denied(&resp);
        assert_eq!(status_of(d), 403, "{host}");
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"]["code"], code, "{host}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("credential injection failed") && message.contains(path),
            "{host}: {message}"
        );
        assert_eq!(
            header(&d.headers, "content-type"),
            vec![("application/json", 0)]
        );
    }

    let (_, audit) = env
        .as_uid(AUDITOR, Method::GET, "/v1/audit?limit=100", None)
        .await;
    let text = audit.to_string();
    for value in [EXPIRED_KEY, SCOPED_AWAY] {
        assert!(!text.contains(value) && !env.sidecar.logs().contains(value));
    }
    let checks: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "envoy.check")
        .collect();
    assert_eq!(checks.len(), 3);
    assert!(
        checks.iter().all(|e| e.get("injected").is_none()),
        "nothing was injected"
    );
    assert!(checks.iter().any(|e| e["outcome"] == "expired"));
    assert!(env
        .metrics()
        .await
        .contains("agentvault_envoy_checks_total{decision=\"denied\"} 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_roles_and_malformed_requests_are_denied_with_a_reason() {
    peers::assert_root();
    let env = Env::start(routes_policy(), 0, &[]);

    for role in ["intruder", "envoy"] {
        let resp = env
            .check(request("plain.example.com", "GET", "/", Some(role)))
            .await;
        let d = denied(&resp);
        assert_eq!(status_of(d), 403);
        assert!(d.body.contains(&format!("role `{role}`")), "{}", d.body);
        assert!(
            d.body.contains("not a role this sidecar knows"),
            "{}",
            d.body
        );
    }

    let malformed = [
        CheckRequest { attributes: None },
        CheckRequest {
            attributes: Some(AttributeContext::default()),
        },
        request("plain.example.com", "GET", "/bad%zzescape", Some("writer")),
        request("plain.example.com", "GET", "/q?a=1;b=2", Some("writer")),
    ];
    for req in malformed {
        let resp = env.check(req).await;
        let d = denied(&resp);
        assert_eq!(status_of(d), 400, "{}", d.body);
        assert!(d.body.contains("malformed CheckRequest"), "{}", d.body);
    }

    // Health answers on the same socket.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(support::uds_channel(&env.envoy).await);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_envoy_uid_may_call() {
    peers::assert_root();
    // Envoy is uid 1002 here, so this process (uid 0) is not Envoy.
    let policies = routes_policy();
    let dir = peers::shared_dir();
    let envoy = dir.path().join("envoy.sock");
    let _sidecar = Sidecar::dev(
        dir.path(),
        &[
            "--envoy-socket",
            envoy.to_str().unwrap(),
            "--policy-dir",
            policies.path().to_str().unwrap(),
            "--role",
            "envoy=uid:1002",
        ],
    );
    let mut client = AuthorizationClient::new(support::uds_channel(&envoy).await);
    let err = client
        .check(request("plain.example.com", "GET", "/", None))
        .await
        .expect_err("a caller that is not Envoy is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("uid 0 is not the role `envoy`"),
        "{}",
        err.message()
    );
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(support::uds_channel(&envoy).await);
    let err = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("health is Envoy's too");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_style_policies_run_unchanged() {
    peers::assert_root();
    let env = Env::start(policy_dir(&[fixture("plugin/example.rego")]), 0, &[]);
    for (i, (req, allow)) in plugin_cases().into_iter().enumerate() {
        let resp = env.check(req).await;
        if allow {
            ok(&resp);
        } else {
            let d = denied(&resp);
            assert_eq!(
                (status_of(d), d.body.as_str()),
                (403, ""),
                "case {i}: a boolean denial"
            );
        }
    }
}

/// An OPA-Envoy policy that authorizes by the claims of a bearer JWT (signed
/// by a key of the JWK set in its bundle data, issuer, audience and validity
/// checked with `io.jwt.decode_verify`) runs unchanged behind ext_authz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_policy_authorizes_by_the_tokens_claims() {
    peers::assert_root();
    let key = TestKey::rsa("rsa_a.pem");
    let other_key = TestKey::rsa("rsa_b.pem");
    let policies = policy_dir(&[repo().join("tests/fixtures/policies/envoy_jwt.rego")]);
    let jwks = json!({"keys": [other_key.jwk_with("old", Some("RS256")), key.jwk_with("current", Some("RS256"))]});
    let data =
        json!({"envoy": {"authz": {"jwks": jwks.to_string(), "issuer": "https://issuer.example"}}});
    std::fs::write(policies.path().join("data.json"), data.to_string()).unwrap();
    let env = Env::start(policies, 0, &[]);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let bearer = |role: &str, exp: i64, signer: &TestKey| {
        let claims = json!({"sub": "alice", "role": role, "iss": "https://issuer.example",
                            "aud": "agentvault", "nbf": now - 60, "exp": exp});
        let header = json!({"kid": "current", "typ": "JWT"});
        format!("Bearer {}", token("RS256", header, claims, Some(signer)))
    };
    let check = |authorization: &str, method: &str, path: &str| {
        request_with(
            "api.example",
            method,
            path,
            None,
            &[("authorization", authorization)],
            "",
        )
    };
    let reader = bearer("reader", now + 600, &key);
    let writer = bearer("writer", now + 600, &key);
    ok(&env.check(check(&reader, "GET", "/v1/secrets/openai")).await);
    ok(&env
        .check(check(&writer, "PUT", "/v1/secrets/alice/key"))
        .await);
    for (why, authorization, method, path) in [
        (
            "a reader may not write",
            reader.as_str(),
            "PUT",
            "/v1/secrets/alice/key",
        ),
        (
            "only under its own sub",
            writer.as_str(),
            "PUT",
            "/v1/secrets/bob/key",
        ),
        (
            "expired",
            &bearer("writer", now - 10, &key),
            "GET",
            "/v1/secrets/openai",
        ),
        (
            "signed by another key",
            &bearer("writer", now + 600, &other_key),
            "GET",
            "/v1/secrets/openai",
        ),
        ("not a JWT", "Bearer not-a-jwt", "GET", "/v1/secrets/openai"),
    ] {
        let resp = env.check(check(authorization, method, path)).await;
        assert_eq!(status_of(denied(&resp)), 403, "{why}: {}", show(&resp));
    }
}

/// Requests for `plugin/example.rego` and whether it allows them.
fn plugin_cases() -> Vec<(CheckRequest, bool)> {
    let basic = |user: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"))
        )
    };
    let (alice, bob) = (basic("alice"), basic("bob"));
    vec![
        (
            request_with(
                "svc",
                "GET",
                "/people",
                None,
                &[("authorization", &bob)],
                "",
            ),
            true,
        ),
        (
            request_with(
                "svc",
                "GET",
                "/people7",
                None,
                &[("authorization", &alice)],
                "",
            ),
            true,
        ),
        (
            request_with(
                "svc",
                "GET",
                "/people/7",
                None,
                &[("authorization", &alice)],
                "",
            ),
            false,
        ),
        (
            request_with(
                "svc",
                "POST",
                "/people",
                None,
                &[("authorization", &alice)],
                "",
            ),
            true,
        ),
        (
            request_with(
                "svc",
                "POST",
                "/people",
                None,
                &[("authorization", &bob)],
                "",
            ),
            false,
        ),
        (request_with("svc", "GET", "/people", None, &[], ""), false),
        (
            request_with(
                "svc",
                "GET",
                "/search?q=books",
                None,
                &[("x-tenant", "acme")],
                "",
            ),
            true,
        ),
        (
            request_with(
                "svc",
                "GET",
                "/search?q=films",
                None,
                &[("x-tenant", "acme")],
                "",
            ),
            false,
        ),
        (
            request_with(
                "svc",
                "GET",
                "/search?q=books",
                None,
                &[("x-tenant", "other")],
                "",
            ),
            false,
        ),
    ]
}

/// A request whose `x-user` header `plugin/objects.rego` decides on.
fn as_user(user: &str) -> CheckRequest {
    request_with("svc", "GET", "/", None, &[("x-user", user)], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_results_set_headers_status_body_and_metadata() {
    peers::assert_root();
    let env = Env::start(
        policy_dir(&[fixture("plugin/objects.rego")]),
        0,
        &["--envoy-decision-rule", "data.envoy.objects.decision"],
    );
    let resp = env.check(as_user("alice")).await;
    let allowed = ok(&resp);
    assert_eq!(
        header(&allowed.headers, "x-ext-auth-allow"),
        vec![("yes", 0)]
    );
    assert_eq!(
        header(&allowed.headers, "x-multi"),
        vec![("a", 0), ("b", 0)]
    );
    assert_eq!(allowed.headers_to_remove, vec!["x-internal".to_string()]);
    assert_eq!(
        header(&allowed.response_headers_to_add, "x-served-by"),
        vec![("agentvault", 0)]
    );
    let metadata = resp.dynamic_metadata.as_ref().expect("dynamic metadata");
    assert_eq!(
        agentvault::envoy::struct_to_json(metadata),
        json!({"user": "alice", "level": 3.0})
    );

    let resp = env.check(as_user("bob")).await;
    let d = denied(&resp);
    assert_eq!((status_of(d), d.body.as_str()), (429, "slow down"));
    assert!(resp.dynamic_metadata.is_some());

    let resp = env.check(request("svc", "GET", "/", None)).await;
    let d = denied(&resp);
    assert_eq!((status_of(d), d.body.as_str()), (401, "who are you?"));
    assert_eq!(header(&d.headers, "www-authenticate"), vec![("Bearer", 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_failures_follow_on_error_and_bodies_parse_when_asked() {
    peers::assert_root();
    // A result of the wrong shape: denied by default, counted as an error.
    let env = Env::start(
        policy_dir(&[fixture("plugin/objects.rego")]),
        0,
        &["--envoy-decision-rule", "data.envoy.objects.broken"],
    );
    let resp = env.check(request("svc", "GET", "/", None)).await;
    let d = denied(&resp);
    assert_eq!(status_of(d), 403);
    assert!(d.body.contains("malformed decision"), "{}", d.body);
    assert!(env
        .metrics()
        .await
        .contains("agentvault_envoy_checks_total{decision=\"error\"} 1"));
    drop(env);

    let env = Env::start(
        policy_dir(&[fixture("plugin/objects.rego")]),
        0,
        &[
            "--envoy-decision-rule",
            "data.envoy.objects.broken",
            "--envoy-on-error",
            "allow",
        ],
    );
    ok(&env.check(request("svc", "GET", "/", None)).await);
    drop(env);

    let env = Env::start(
        policy_dir(&[fixture("plugin/objects.rego")]),
        0,
        &[
            "--envoy-decision-rule",
            "data.envoy.objects.body_decision",
            "--envoy-parse-body",
            "true",
        ],
    );
    let json_body = |body: &str, length: &str| {
        request_with(
            "svc",
            "POST",
            "/pay",
            None,
            &[
                ("content-type", "application/json"),
                ("content-length", length),
            ],
            body,
        )
    };
    ok(&env.check(json_body(r#"{"amount": 10}"#, "14")).await);
    denied(&env.check(json_body(r#"{"amount": 500}"#, "15")).await);
    let cut = env.check(json_body(r#"{"amount": 1"#, "40")).await;
    assert_eq!(denied(&cut).body, "the body was cut short");
    let bad = env.check(json_body("{not json", "9")).await;
    assert_eq!(status_of(denied(&bad)), 400);
}

#[test]
fn the_envoy_rule_is_required_only_when_envoy_is_on() {
    let dir = policy_dir(&[]);
    let config = PolicyConfig::default();
    PolicyEngine::load(dir.path(), config.clone()).expect("loads without an envoy rule");
    let err = PolicyEngine::load_with(
        Some(dir.path()),
        config,
        vec!["data.envoy.authz.allow".into()],
    )
    .expect_err("Envoy on, no rule");
    assert!(err.to_string().contains("data.envoy.authz.allow"), "{err}");
}

fn subject(role: Option<&str>) -> SubjectInput<'_> {
    SubjectInput {
        spiffe_id: "spiffe://dev.local/agent/dev/dev-agent",
        tenant: "dev",
        agent: "dev-agent",
        role,
    }
}

/// regorus's and OPA's answers to `rule` on `inputs`, which must agree.
fn same_as_opa(policies: &std::path::Path, rule: &str, inputs: &[Value]) -> Vec<Value> {
    let config = PolicyConfig::default();
    let engine =
        PolicyEngine::load_with(Some(policies), config.clone(), vec![rule.into()]).unwrap();
    let data = serde_json::json!({ "agentvault": { "config": config } });
    let opa = support::opa::run_opa(policies, Some(&data), rule, inputs);
    inputs
        .iter()
        .zip(&opa)
        .map(|(input, opa)| {
            let ours = engine.eval_rule(rule, input).unwrap();
            let ours = serde_json::to_value(&ours).unwrap();
            assert_eq!(
                Some(&ours),
                opa.get("result"),
                "input {input}: OPA said {opa}"
            );
            ours
        })
        .collect()
}

#[test]
fn plugin_style_policies_give_opas_answers() {
    let policies = policy_dir(&[fixture("plugin/example.rego")]);
    let (inputs, expected): (Vec<Value>, Vec<bool>) = plugin_cases()
        .into_iter()
        .map(|(req, allow)| (build_input(&req, &subject(None), false).unwrap(), allow))
        .unzip();
    let answers = same_as_opa(policies.path(), "data.envoy.authz.allow", &inputs);
    let answers: Vec<bool> = answers.iter().map(|a| a == &json!(true)).collect();
    assert_eq!(answers, expected);
}

/// The built-in envoy policy with the test routes gives the same answers
/// under regorus and real OPA, on the inputs agentvault builds.
#[test]
fn same_answers_as_opa() {
    let policies = routes_policy();
    let rule = "data.envoy.authz.allow";
    let mut inputs = Vec::new();
    for host in [
        "api.openai.com",
        "api.openai.com:443",
        "plain.example.com",
        "missing.example.com",
        "nowhere.example.com",
    ] {
        for (method, path) in [
            ("POST", "/v1/chat"),
            ("GET", "/v1/models?x=1"),
            ("DELETE", "/v1/x"),
            ("POST", "/admin"),
        ] {
            for role in [None, Some("researcher"), Some("writer")] {
                let req = request(host, method, path, role);
                inputs.push(build_input(&req, &subject(role), false).unwrap());
            }
        }
    }
    let answers = same_as_opa(policies.path(), rule, &inputs);
    let allowed = answers.iter().filter(|a| a["allowed"] == true).count();
    assert!(
        allowed > 10 && allowed < inputs.len() / 2,
        "both answers are covered: {allowed}"
    );
}

/// A policy that reads a header by a computed name, the query, the body and
/// the source address.
const WIDE_READS: &str = r#"package envoy.authz
import rego.v1
default allow := false
allow if {
    some name in ["x-team", "x-group"]
    input.attributes.request.http.headers[name] == "a"
}
allow if input.parsed_query.debug[0] == "1"
allow if input.parsed_body.ok == true
allow if input.attributes.source.address.socketAddress.portValue == 1
"#;

/// The Envoy front end builds only the parts of the input the policy can
/// read; on every request that input is decided exactly as the whole one.
#[test]
fn inputs_built_for_what_the_policy_reads_decide_as_the_whole_input() {
    let wide = peers::shared_dir();
    std::fs::write(wide.path().join("wide.rego"), WIDE_READS).unwrap();
    std::fs::copy(
        repo().join("policies/authz.rego"),
        wide.path().join("authz.rego"),
    )
    .unwrap();
    let rule = "data.envoy.authz.allow";
    let mut requests: Vec<(CheckRequest, Option<&str>)> = plugin_cases()
        .into_iter()
        .map(|(req, _)| (req, None))
        .collect();
    for (n, host) in ["api.openai.com", "api.openai.com:443", "plain.example.com"]
        .into_iter()
        .enumerate()
    {
        for role in [None, Some("researcher")] {
            for (path, headers, body) in [
                ("/v1/chat?debug=1", vec![("x-team", "a")], r#"{"ok": true}"#),
                (
                    "/v1/models",
                    vec![("x-group", "a"), ("content-type", "application/json")],
                    r#"{"ok": true}"#,
                ),
                (
                    "/admin?debug=0",
                    vec![("x-team", "b"), ("content-type", "application/json")],
                    r#"{"ok": false}"#,
                ),
            ] {
                let id = format!("req-{n}");
                let mut headers = headers.clone();
                headers.push(("x-request-id", id.as_str()));
                requests.push((request_with(host, "POST", path, role, &headers, body), role));
            }
        }
    }
    // Per policy: whether the built input holds the headers, and whether
    // its reads can be keyed from the request (the wide one reads a peer's
    // address, which is keyed by the built input instead).
    let dirs = [
        (routes_policy(), false, true),
        (policy_dir(&[fixture("plugin/example.rego")]), true, true),
        (wide, true, false),
    ];
    for parse_body in [true, false] {
        for (dir, expect_headers, keyed) in &dirs {
            let load = || {
                PolicyEngine::load_with(
                    Some(dir.path()),
                    PolicyConfig::default(),
                    vec![rule.into()],
                )
                .unwrap()
            };
            let (partial, whole) = (load(), load());
            let mut builds = 0;
            for (req, role) in &requests {
                let input = Recording::new(CheckInput {
                    request: req,
                    subject: subject(*role),
                    parse_body,
                });
                let full = build_input(req, &input.inner.subject, parse_body).unwrap();
                let expected = whole.eval_rule(rule, &full).unwrap();
                let ours = partial
                    .eval_rule_from::<_, Box<dyn std::error::Error>>(rule, &input)
                    .unwrap();
                assert_eq!(ours, expected, "{full}");
                // Built unless an earlier request had the same key.
                if let Some(built) = input.built.take() {
                    builds += 1;
                    let headers = &built["attributes"]["request"]["http"]["headers"];
                    assert_eq!(
                        !headers.is_null(),
                        *expect_headers,
                        "{}: {built}",
                        dir.path().display()
                    );
                }
                // The same request again is answered by its key when it has one.
                let again = partial
                    .eval_rule_from::<_, Box<dyn std::error::Error>>(rule, &input)
                    .unwrap();
                assert_eq!(again, expected, "{full}");
                assert_eq!(
                    input.built.take().is_none(),
                    *keyed && !parse_body,
                    "{}: {full}",
                    dir.path().display()
                );
                // And with a new request id, as Envoy sends each request.
                let mut renamed = req.clone();
                if let Some(http) = renamed
                    .attributes
                    .as_mut()
                    .and_then(|a| a.request.as_mut())
                    .and_then(|r| r.http.as_mut())
                {
                    http.headers.insert("x-request-id".into(), "another".into());
                }
                let input = CheckInput {
                    request: &renamed,
                    subject: subject(*role),
                    parse_body,
                };
                let full = build_input(&renamed, &input.subject, parse_body).unwrap();
                let ours = partial
                    .eval_rule_from::<_, Box<dyn std::error::Error>>(rule, &input)
                    .unwrap();
                assert_eq!(ours, whole.eval_rule(rule, &full).unwrap(), "{full}");
            }
            assert!(builds > 1, "{}", dir.path().display());
        }
    }
}

/// A [`CheckInput`] that remembers the last input it built.
struct Recording<'a> {
    inner: CheckInput<'a>,
    built: std::cell::RefCell<Option<Value>>,
}

impl<'a> Recording<'a> {
    fn new(inner: CheckInput<'a>) -> Self {
        Self {
            inner,
            built: std::cell::RefCell::new(None),
        }
    }
}

impl RuleInput for Recording<'_> {
    type Error = InputError;

    fn key(&self, paths: &[Vec<String>]) -> Option<Vec<u8>> {
        self.inner.key(paths)
    }

    fn build(&self, paths: Option<&[Vec<String>]>) -> Result<Value, InputError> {
        let input = self.inner.build(paths)?;
        *self.built.borrow_mut() = Some(input.clone());
        Ok(input)
    }
}
