//! `agentvault webhook` over real TLS, fed AdmissionReviews shaped like the
//! API server's (tests/fixtures/k8s/review-*.json): the patch it returns,
//! applied to the pod, gives exactly what `agentvault inject` gives for the
//! same pod, and validates strictly against Kubernetes 1.29 and 1.37.

#[path = "support/k8s.rs"]
mod k8s;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::Method;
use k8s::{validate_strict, yaml_documents, TestPki, TlsConn, Webhook};
use serde_json::{json, Value};
use support::BIN;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

fn review(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

async fn post(conn: &mut TlsConn, path: &str, review: &Value) -> (u16, Value) {
    conn.send(Method::POST, path, serde_json::to_vec(review).unwrap())
        .await
}

/// The JSONPatch in an answer, decoded (None when there is none).
fn patch_of(answer: &Value) -> Option<json_patch::Patch> {
    let response = &answer["response"];
    let encoded = response.get("patch")?.as_str().unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// `agentvault inject -f` on one object, with the given injector config.
fn inject_cli(object: &Value, config: Option<&Path>, dir: &Path) -> Value {
    let file = dir.join("pod.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(object).unwrap()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("inject").arg("-f").arg(&file);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut docs = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

struct Running {
    _dir: tempfile::TempDir,
    pki: TestPki,
    webhook: Webhook,
}

fn start(config: Option<&Path>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let webhook = Webhook::start(dir.path(), &pki.serving_cert(), config);
    Running {
        _dir: dir,
        pki,
        webhook,
    }
}

/// What injection added holds references only: env values that are paths
/// or a credential-free URL, the password through a `secretKeyRef`, and
/// volumes that name a Secret, a ConfigMap, a CSI driver or an `emptyDir`.
fn assert_only_references(original: &Value, patched: &Value) {
    let added = |v: &Value| -> Vec<Value> { v.as_array().cloned().unwrap_or_default() };
    let before = original.to_string();
    for container in added(&patched["spec"]["initContainers"])
        .into_iter()
        .chain(added(&patched["spec"]["containers"]))
    {
        for env in added(&container["env"]) {
            if before.contains(&env.to_string()) {
                continue;
            }
            match env["name"].as_str().unwrap() {
                "AGENTVAULT_SOCKET" | "SPIFFE_ENDPOINT_SOCKET" => {
                    assert!(env["value"].as_str().unwrap().contains("/"), "{env}")
                }
                "AGENTVAULT_REDIS_URL" => {
                    assert!(!env["value"].as_str().unwrap().contains('@'), "{env}")
                }
                "AGENTVAULT_REDIS_USERNAME" | "AGENTVAULT_REDIS_PASSWORD" => {
                    assert!(env.get("value").is_none(), "{env}");
                    assert!(
                        env["valueFrom"]["secretKeyRef"]["name"].is_string(),
                        "{env}"
                    );
                }
                other => panic!("injection added env {other}"),
            }
        }
    }
    for volume in added(&patched["spec"]["volumes"]) {
        if before.contains(&volume.to_string()) {
            continue;
        }
        let source: Vec<&String> = volume
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        assert!(
            matches!(source[..], [k] if ["secret", "configMap", "csi", "emptyDir"].contains(&k.as_str())),
            "{volume}"
        );
        if let Some(secret) = volume.get("secret") {
            assert_eq!(secret.as_object().unwrap().len(), 1, "{volume}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patched_pods_equal_inject_output_and_validate_strictly() {
    for config in [None, Some(fixture("injector-config.yaml"))] {
        let running = start(config.as_deref());
        let mut conn = TlsConn::connect(running.webhook.addr, &running.pki.ca_der).await;
        for name in ["review-generate-name.json", "review-init-containers.json"] {
            let review = review(name);
            let (status, answer) = post(&mut conn, "/mutate", &review).await;
            assert_eq!(status, 200, "{name}: {answer}");
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(answer["kind"], "AdmissionReview");
            assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
            assert_eq!(answer["response"]["allowed"], true);
            let patch = patch_of(&answer).unwrap_or_else(|| panic!("{name}: no patch"));
            let original = review["request"]["object"].clone();
            let mut patched = original.clone();
            json_patch::patch(&mut patched, &patch).unwrap();

            let from_cli = inject_cli(&original, config.as_deref(), running._dir.path());
            assert_eq!(patched, from_cli, "{name}: webhook and inject disagree");
            assert_eq!(patched["spec"]["initContainers"][0]["name"], "agentvault");
            assert_eq!(
                patched["metadata"]["annotations"]["agentvault.io/status"],
                "injected"
            );
            assert_only_references(&original, &patched);
            validate_strict(&[patched.clone()], name);

            // The API server calls again (reinvocationPolicy: IfNeeded): a no-op.
            let mut again = review.clone();
            again["request"]["object"] = patched;
            let (status, answer) = post(&mut conn, "/mutate", &again).await;
            assert_eq!(status, 200);
            assert_eq!(answer["response"]["allowed"], true);
            assert!(patch_of(&answer).is_none(), "{name}: re-injection patched");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_do_not_opt_in_and_other_kinds_pass_unpatched() {
    let running = start(None);
    let mut conn = TlsConn::connect(running.webhook.addr, &running.pki.ca_der).await;
    for name in [
        "review-not-opted-in.json",
        "review-opted-out.json",
        "review-service.json",
    ] {
        let review = review(name);
        let (status, answer) = post(&mut conn, "/mutate", &review).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            answer["response"],
            json!({"uid": review["request"]["uid"], "allowed": true}),
            "{name}"
        );
    }
    // A namespace that opts in: every pod is injected unless it opts out.
    let (_, answer) = post(
        &mut conn,
        "/mutate/namespace",
        &review("review-not-opted-in.json"),
    )
    .await;
    assert!(patch_of(&answer).is_some(), "{answer}");
    let (_, answer) = post(
        &mut conn,
        "/mutate/namespace",
        &review("review-opted-out.json"),
    )
    .await;
    assert!(patch_of(&answer).is_none(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_role_annotation_refuses_the_pod_with_the_reason() {
    let running = start(None);
    let mut conn = TlsConn::connect(running.webhook.addr, &running.pki.ca_der).await;
    let review = review("review-bad-role.json");
    let (status, answer) = post(&mut conn, "/mutate", &review).await;
    assert_eq!(status, 200);
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("agentvault.io/role.researcher"),
        "{message}"
    );
    assert!(message.contains("uid:N"), "{message}");
    assert!(response.get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_probes_answer() {
    let running = start(None);
    let mut conn = TlsConn::connect(running.webhook.addr, &running.pki.ca_der).await;
    for (body, needle) in [
        (b"{\"apiVersion\": ".to_vec(), "not JSON"),
        (
            br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {}}"#.to_vec(),
            "AdmissionReview",
        ),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#.to_vec(),
            "request",
        ),
    ] {
        let (status, answer) = conn.send(Method::POST, "/mutate", body).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    assert_eq!(conn.send(Method::GET, "/healthz", vec![]).await.0, 200);
    assert_eq!(conn.send(Method::GET, "/readyz", vec![]).await.0, 200);
    assert_eq!(conn.send(Method::GET, "/mutate", vec![]).await.0, 405);
    assert_eq!(conn.send(Method::POST, "/nope", vec![]).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_stops_cleanly_on_sigterm_and_refuses_a_bad_certificate_at_start() {
    let mut running = start(None);
    assert!(running.webhook.stop().success());
    assert!(running.webhook.logs().contains("admission webhook stopped"));

    let dir = tempfile::tempdir().unwrap();
    let cert = running.pki.serving_cert();
    let key = Webhook::key_path(dir.path());
    std::fs::write(Webhook::cert_path(dir.path()), &cert.cert_pem).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let out = Command::new(BIN)
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(Webhook::cert_path(dir.path()))
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no PEM private key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let first = pki.serving_cert();
    let webhook = Webhook::start(dir.path(), &first, None);
    let mut open = TlsConn::connect(webhook.addr, &pki.ca_der).await;
    assert_eq!(open.server_cert, first.leaf_der);

    let second = pki.serving_cert();
    Webhook::install(dir.path(), &second);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = TlsConn::connect(webhook.addr, &pki.ca_der).await;
        if fresh.server_cert == second.leaf_der {
            break;
        }
        assert_eq!(fresh.server_cert, first.leaf_der);
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the rotation still answers.
    let (status, answer) = post(&mut open, "/mutate", &review("review-generate-name.json")).await;
    assert_eq!(status, 200);
    assert!(patch_of(&answer).is_some());

    // A key that does not match its certificate is not taken into service.
    let third = pki.serving_cert();
    std::fs::write(Webhook::key_path(dir.path()), &third.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !webhook.logs().contains("does not load") {
        assert!(Instant::now() < deadline, "no warning:\n{}", webhook.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = TlsConn::connect(webhook.addr, &pki.ca_der).await;
    assert_eq!(fresh.server_cert, second.leaf_der);
    assert!(!webhook.logs().contains("PRIVATE KEY"));
}
