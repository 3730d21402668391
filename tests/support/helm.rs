//! The Helm chart's test tools (with `#[path]` next to `support/k8s.rs`, as
//! tests/helm.rs includes it): `helm` from the PATH, JSON-schema checks of
//! CRD kinds the Kubernetes schema does not know, and the two API reads of
//! `helm --dry-run=server` (for the chart's `lookup`). Kubernetes schema
//! validation itself is `k8s::validate_strict`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::k8s::validator;
use crate::support::tool_on_path;

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `helm` on the PATH.
pub fn helm() -> PathBuf {
    tool_on_path("helm")
}

/// Runs `program args…` with `stdin` as its standard input.
pub fn run(program: &Path, args: &[&str], stdin: &str) -> Output {
    run_with_env(program, args, &[], stdin)
}

/// [`run`] with extra environment variables.
pub fn run_with_env(program: &Path, args: &[&str], env: &[(&str, &Path)], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for the tool")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks `doc` against a JSON schema (draft-07) with the `jsonschema` package
/// of kubernetes-validate's own Python environment: for the CRD kinds the
/// Kubernetes schema does not know (cert-manager, Prometheus Operator, SPIRE).
pub fn assert_matches_schema(what: &str, doc: &Value, schema: &Path) {
    let validator = validator();
    let python = validator.with_file_name("python3");
    assert!(
        python.is_file(),
        "no python3 next to {} to run jsonschema with",
        validator.display()
    );
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft7Validator.check_schema(schema)\n\
                 errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(json.load(sys.stdin)), key=str)\n\
                 for e in errors: print('/'.join(map(str, e.absolute_path)) + ': ' + e.message)\n\
                 sys.exit(1 if errors else 0)\n";
    let schema = schema.to_str().expect("utf-8 path");
    let out = run(&python, &["-c", check, schema], &doc.to_string());
    assert!(
        out.status.success(),
        "{what} does not match {schema}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The two reads `helm … --dry-run=server` makes for a chart's
/// `lookup "v1" "Secret" NS NAME`: the v1 resource list and the Secret. No
/// cluster runs here, so this answers them over plain HTTP, from `secrets`
/// (404 for any other), to let the tests check what the chart does with what
/// it finds on an upgrade. Everything else is 404.
pub struct SecretsApi {
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl SecretsApi {
    pub fn serving(secrets: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &secrets);
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        );
        std::fs::write(&kubeconfig, config).expect("write kubeconfig");
        Self {
            kubeconfig,
            _dir: dir,
        }
    }
}

fn answer(mut stream: TcpStream, secrets: &[Value]) {
    let mut request_line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let found = match path.strip_prefix("/api/v1/namespaces/") {
        None if path == "/api/v1" => Some(serde_json::json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{"name": "secrets", "singularName": "secret", "namespaced": true,
                           "kind": "Secret", "verbs": ["get", "list"]}]})),
        None => None,
        Some(rest) => secrets
            .iter()
            .find(|s| {
                let meta = &s["metadata"];
                let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str())
                else {
                    return false;
                };
                rest == format!("{ns}/secrets/{name}")
            })
            .cloned(),
    };
    let (status, body) = match found {
        Some(body) => ("200 OK", body),
        None => (
            "404 Not Found",
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404}),
        ),
    };
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
