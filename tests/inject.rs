//! `agentvault inject` over multi-document manifests of every kind, and the
//! injected sidecar's own command line run as the kubelet would run it.

#[path = "support/k8s.rs"]
mod k8s;
mod support;
#[path = "support/workload_api.rs"]
mod workload_api;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s::{validate_strict, yaml_documents};
use serde_json::Value;
use support::{free_port, wait_for, RedisServer, BIN};
use workload_api::{TestCa, WorkloadApi};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .env_remove("AGENTVAULT_INJECTOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn by_name<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .flat_map(|d| match d["kind"].as_str() {
            Some("List") => d["items"].as_array().unwrap().iter().collect::<Vec<_>>(),
            _ => vec![d],
        })
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn template(object: &Value) -> &Value {
    match object["kind"].as_str().unwrap() {
        "Pod" => object,
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ => &object["spec"]["template"],
    }
}

fn is_injected(object: &Value) -> bool {
    template(object)["spec"]["initContainers"][0]["name"] == "agentvault"
}

#[test]
fn every_kind_is_injected_others_pass_verbatim_and_all_validates() {
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let config = fixture("injector-config.yaml");
    for args in [
        vec!["-f", "tests/fixtures/k8s/workloads.yaml"],
        vec!["-f", "-", "--config", config.to_str().unwrap()],
    ] {
        let out = stdout_of(&inject(&args, Some(&input)));
        let docs = yaml_documents(&out);
        for (kind, name) in [
            ("Deployment", "planner"),
            ("StatefulSet", "memory"),
            ("DaemonSet", "node-agent"),
            ("ReplicaSet", "scraper"),
            ("Job", "backfill"),
            ("CronJob", "nightly-report"),
            ("Pod", "one-off"),
        ] {
            assert!(is_injected(by_name(&docs, kind, name)), "{kind}/{name}");
        }
        assert!(!is_injected(by_name(&docs, "Deployment", "web")));
        assert!(!is_injected(by_name(&docs, "Deployment", "legacy")));
        // Documents without an injected template come back as written.
        assert!(out.starts_with(
            "# Every kind `agentvault inject` knows, and some it passes through.\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: agents   # left exactly as written\n---\n"
        ));
        assert!(out.contains("kind: Deployment\nmetadata: {name: web, namespace: agents}\n"));
        let daemonset = template(by_name(&docs, "DaemonSet", "node-agent"));
        assert!(daemonset["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "node-keyring"));
        validate_strict(&docs, "inject output");

        // Injecting the output again changes nothing.
        let again = stdout_of(&inject(&["-f", "-"], Some(&out)));
        assert_eq!(again, out);
    }
}

#[test]
fn all_injects_every_template_that_does_not_opt_out() {
    let output = inject(&["--all", "-f", "tests/fixtures/k8s/workloads.yaml"], None);
    let out = stdout_of(&output);
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("Deployment/web: injected"), "{summary}");
    assert!(
        summary.contains("Deployment/legacy: not injected: the pod opts out"),
        "{summary}"
    );
    let docs = yaml_documents(&out);
    assert!(is_injected(by_name(&docs, "Deployment", "web")));
    assert!(!is_injected(by_name(&docs, "Deployment", "legacy")));
    validate_strict(&docs, "inject --all output");
}

#[test]
fn a_bad_document_fails_the_whole_run_and_prints_nothing() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: fine, annotations: {agentvault.io/inject: \"true\"}}\n\
                 spec: {containers: [{name: app, image: busybox}]}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n  annotations:\n    agentvault.io/inject: \"true\"\n    \
                 agentvault.io/role.researcher: \"uid:alice\"\nspec: {containers: [{name: app, image: busybox}]}\n";
    let out = inject(&[], Some(input));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 1 (Pod/broken)"), "{stderr}");
    assert!(stderr.contains("agentvault.io/role.researcher"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "socketDir: /run/av\nimagePullPolcy: Always\n").unwrap();
    let out = inject(&["--config", config.to_str().unwrap()], Some(input));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imagePullPolcy"));
    let out = inject(&["-f", "/nonexistent/manifests.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
}

const PASSWORD: &str = "r3dis-pa55word-only-in-the-secret";
const ID: &str = "spiffe://example.org/agent/acme/planner";

/// Runs the injected sidecar exactly as its container spec says (args, env,
/// probe), with the pod's paths mapped into a temp dir and the Secret's
/// value given where the kubelet would resolve the `secretKeyRef`.
#[test]
fn the_injected_sidecar_runs_from_its_flags_and_its_startup_probe_waits_for_the_svid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The test's client runs as root: serve refuses callers no role maps
    // once roles are set, so root gets a role of its own.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: planner\n  annotations:\n    agentvault.io/inject: \"true\"\n    \
               agentvault.io/role.researcher: \"uid:1001\"\n    agentvault.io/role.app: \"uid:0\"\n\
               spec:\n  containers: [{name: app, image: python:3.12}]\n";
    let config = fixture("injector-config.yaml");
    let out = stdout_of(&inject(&["--config", config.to_str().unwrap()], Some(pod)));
    let pod = &yaml_documents(&out)[0];
    validate_strict(std::slice::from_ref(pod), "the injected pod");
    let sidecar = &pod["spec"]["initContainers"][0];

    let run_dir = root.join("run");
    let keyring_dir = root.join("keyring");
    let policies_dir = root.join("policies");
    let workload_dir = root.join("spiffe");
    for d in [&run_dir, &keyring_dir, &policies_dir, &workload_dir] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/authz.rego"),
        policies_dir.join("authz.rego"),
    )
    .unwrap();
    // What the keyring Secret of acme's namespace holds: acme's keys only.
    let master = root.join("master.json");
    support::security::keygen(&master, None);
    support::security::keygen(&keyring_dir.join("keyring.json"), Some(("acme", &master)));
    let metrics = format!("127.0.0.1:{}", free_port());
    let map = |s: &str| {
        s.replace("/run/agentvault", run_dir.to_str().unwrap())
            .replace("/etc/agentvault/keyring", keyring_dir.to_str().unwrap())
            .replace("/etc/agentvault/policies", policies_dir.to_str().unwrap())
            .replace("/spiffe-workload-api", workload_dir.to_str().unwrap())
            .replace("0.0.0.0:9464", &metrics)
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| map(a.as_str().unwrap()))
            .collect()
    };

    // The tenant's Redis ACL user, as `agentvault redis-acl` makes it; the
    // admin password stays with the operator.
    let redis = RedisServer::start_with_password(PASSWORD);
    let user = "acme-sidecar";
    let tenant_password =
        std::fs::read_to_string(support::security::acl_user(&redis, root, "acme", user)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(strings(&sidecar["args"]));
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTVAULT_") || key == "SPIFFE_ENDPOINT_SOCKET" {
            cmd.env_remove(key);
        }
    }
    for env in sidecar["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        let value = match name {
            "AGENTVAULT_REDIS_URL" => redis.url(),
            "AGENTVAULT_REDIS_USERNAME" => {
                assert_eq!(
                    env["valueFrom"]["secretKeyRef"],
                    serde_json::json!({"name": "agentvault-redis", "key": "username"})
                );
                user.to_owned()
            }
            "AGENTVAULT_REDIS_PASSWORD" => {
                assert_eq!(
                    env["valueFrom"]["secretKeyRef"],
                    serde_json::json!({"name": "agentvault-redis", "key": "password"})
                );
                tenant_password.clone()
            }
            _ => map(env["value"].as_str().unwrap()),
        };
        cmd.env(name, value);
    }
    let log_path = root.join("sidecar.log");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(root.join("sidecar.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let socket = run_dir.join("agentvault.sock");
    wait_for("the sidecar socket", Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "sidecar exited with {status}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let mut probe = strings(&sidecar["startupProbe"]["exec"]["command"]);
    assert_eq!(probe.remove(0), "agentvault");
    let run_probe = || {
        Command::new(BIN)
            .args(&probe)
            .env_remove("AGENTVAULT_SOCKET")
            .output()
            .unwrap()
    };
    // No SVID yet: the socket answers, but the probe fails (503: exit 5),
    // so the app containers do not start against a sidecar that cannot serve.
    let early = run_probe();
    assert_eq!(early.status.code(), Some(5), "{early:?}");

    let ca = TestCa::new("example.org");
    let _workload_api = WorkloadApi::start_at(
        &workload_dir.join("spire-agent.sock"),
        &ca,
        ID,
        Duration::from_secs(3600),
    );
    wait_for("the startup probe to pass", Duration::from_secs(30), || {
        run_probe().status.success()
    });

    // The app container reaches it through the env injection gave it.
    let app_socket = map(pod["spec"]["containers"][0]["env"][0]["value"]
        .as_str()
        .unwrap());
    let client = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("AGENTVAULT_SOCKET", &app_socket)
            .env_remove("AGENTVAULT_TOKEN")
            .output()
            .unwrap()
    };
    let put = client(&["put", "demo/openai-key", "sk-test-123"]);
    assert!(put.status.success(), "{put:?}");
    let get = client(&["get", "demo/openai-key"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "sk-test-123");
    // It is in the password-protected Redis, written as the tenant's ACL user.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("av:*")
        .query(&mut redis.connection())
        .unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("av:{acme}:")), "{keys:?}");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.connection())
        .unwrap();
    assert!(clients.contains(&format!("user={user}")), "{clients}");

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("sidecar started"), "{log}");
    assert!(
        !log.contains(tenant_password.trim()),
        "the Redis password was logged"
    );
    assert!(!log.contains("sk-test-123"));
}
