//! `agentvault policy eval|test|check|capabilities` through the real binary:
//! output, exit codes, file:line errors; OPA bundles (directory and
//! `.tar.gz`, data documents, manifest roots) for the tools and the engine;
//! and the OPA-Envoy-style JWT policy of `tests/fixtures/policies/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use agentvault::policy::{
    Action, PolicyConfig, PolicyEngine, PolicyError, PolicyInput, Resource, Subject,
};
use serde_json::{json, Value};
use support::jwt::{token, TestKey};
use support::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn av(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or_default().to_owned();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut pipe, input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn capabilities_list_regorus_and_agentvault_builtins() {
    let out = av(&["policy", "capabilities"], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "io.jwt.decode_verify\tagentvault",
        "io.jwt.verify_rs256\tagentvault",
        "crypto.x509.parse_and_verify_certificates\tagentvault",
        "crypto.hmac.sha256\tagentvault",
        "startswith\tregorus",
        "time.now_ns\tregorus",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    assert!(text.lines().count() > 100);

    let out = av(&["policy", "capabilities", "--json"], None);
    let entries: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        entries.contains(&json!({"name": "io.jwt.decode", "arity": 1, "provider": "agentvault"}))
    );
    assert_eq!(entries.len(), text.lines().count());
}

#[test]
fn test_runs_the_builtin_policies_tests() {
    let out = av(
        &["policy", "test", path_str(&repo().join("policies"))],
        None,
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let passed = text.lines().filter(|l| l.starts_with("PASS ")).count();
    let authz = text
        .lines()
        .filter(|l| l.starts_with("PASS data.agentvault.authz_test.test_"))
        .count();
    let envoy = text
        .lines()
        .filter(|l| l.starts_with("PASS data.envoy.authz_test.test_"))
        .count();
    assert!(authz >= 10 && envoy >= 1, "{text}");
    assert!(
        text.contains(&format!("{passed} passed, 0 failed")),
        "{text}"
    );
}

#[test]
fn test_fails_with_a_non_zero_exit_and_names_the_failing_rule() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "lib.rego",
        "package lib\nimport rego.v1\ndouble(x) := x * 2\n",
    );
    write(
        dir.path(),
        "lib_test.rego",
        "package lib_test\nimport rego.v1\nimport data.lib\n\
         test_doubles if lib.double(2) == 4\n\
         test_wrong if lib.double(2) == 5\n\
         test_hash if crypto.sha256(\"a\") == \"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"\n",
    );
    let out = av(&["policy", "test", path_str(dir.path())], None);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("PASS data.lib_test.test_doubles"), "{text}");
    assert!(text.contains("PASS data.lib_test.test_hash"), "{text}");
    assert!(text.contains("FAIL data.lib_test.test_wrong"), "{text}");
    assert!(text.contains("2 passed, 1 failed"), "{text}");
    assert!(
        stderr(&out).contains("1 of 3 tests failed"),
        "{}",
        stderr(&out)
    );

    let empty = tempfile::tempdir().unwrap();
    write(
        empty.path(),
        "a.rego",
        "package a\nimport rego.v1\nx := 1\n",
    );
    let out = av(&["policy", "test", path_str(empty.path())], None);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no test_ rules"), "{}", stderr(&out));
}

#[test]
fn check_reports_errors_with_file_and_line() {
    let out = av(
        &["policy", "check", path_str(&repo().join("policies"))],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // authz.rego, envoy.rego and their tests.
    assert!(stdout(&out).contains("4 files ok"), "{}", stdout(&out));

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ok.rego",
        "package ok\nimport rego.v1\nx := 1\n",
    );
    write(
        dir.path(),
        "sub/broken.rego",
        "package broken\nimport rego.v1\n\nx := {\n",
    );
    let out = av(&["policy", "check", path_str(dir.path())], None);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("sub/broken.rego:5:1: error:"), "{err}");

    std::fs::remove_file(dir.path().join("sub/broken.rego")).unwrap();
    write(
        dir.path(),
        "calls.rego",
        "package calls\nimport rego.v1\n\nallow if {\n  input.x\n  http.send({\"method\": \"get\", \"url\": input.url})\n}\n",
    );
    let out = av(&["policy", "check", path_str(dir.path())], None);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("calls.rego:6:3: unknown function `http.send`"),
        "{err}"
    );
}

#[test]
fn eval_prints_the_decision_of_the_builtin_policies() {
    let input = json!({
        "subject": {"spiffe_id": "spiffe://d/agent/t/a", "tenant": "t", "agent": "a",
                    "agent_id": "spiffe://d/agent/t/a", "role": null, "uid": 1, "pid": 2},
        "action": "read",
        "resource": {"path": "p", "exists": true, "owner": "spiffe://d/agent/t/a",
                     "owner_scope": null, "tier": "standard", "type": "custom", "tags": {}},
        "grants": [], "token": null
    });
    let out = av(
        &["policy", "eval", "--input", "-"],
        Some(&input.to_string()),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let decision: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(decision["allow"], json!(true), "{decision}");

    let mut other = input.clone();
    other["resource"]["owner"] = json!("spiffe://d/agent/t/someone-else");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "input.yaml",
        &serde_yaml_ng::to_string(&other).unwrap(),
    );
    let out = av(
        &[
            "policy",
            "eval",
            "--input",
            path_str(&dir.path().join("input.yaml")),
        ],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let decision: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(decision["allow"], json!(false), "{decision}");

    let out = av(
        &["policy", "eval", "data.agentvault.authz.nothing_here"],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("is undefined"), "{}", stderr(&out));
    let out = av(
        &["policy", "eval", "--input", "/nonexistent/input.json"],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("/nonexistent/input.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_takes_a_policy_dir_data_and_a_query() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.rego",
        "package p\nimport rego.v1\nlimit := data.limits[input.team]\nover if input.n > limit\n",
    );
    write(dir.path(), "limits.json", r#"{"limits": {"ml": 3}}"#);
    let args = |query: &'static str| {
        vec![
            "policy".to_owned(),
            "eval".into(),
            "--policy-dir".into(),
            path_str(dir.path()).into(),
            "--data".into(),
            path_str(&dir.path().join("limits.json")).into(),
            "--input".into(),
            "-".into(),
            query.into(),
        ]
    };
    let run = |query| {
        let args = args(query);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        av(&refs, Some(r#"{"team": "ml", "n": 5}"#))
    };
    let out = run("data.p.limit");
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "3"),
        "{}",
        stderr(&out)
    );
    let out = run("data.p.over");
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "true"),
        "{}",
        stderr(&out)
    );
}

fn envoy_input(authorization: Option<&str>, method: &str, path: &str) -> String {
    let mut headers = json!({":authority": "vault.local"});
    if let Some(value) = authorization {
        headers["authorization"] = json!(value);
    }
    json!({"attributes": {"request": {"http": {"method": method, "path": path, "headers": headers}}}})
        .to_string()
}

#[test]
fn envoy_jwt_policy_authorizes_by_the_tokens_claims() {
    let key = TestKey::rsa("rsa_a.pem");
    let other_key = TestKey::rsa("rsa_b.pem");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/policies/envoy_jwt.rego"),
        dir.path().join("envoy_jwt.rego"),
    )
    .unwrap();
    let jwks = json!({"keys": [other_key.jwk_with("old", Some("RS256")), key.jwk_with("current", Some("RS256"))]});
    write(
        dir.path(),
        "data.json",
        &json!({"envoy": {"authz": {"jwks": jwks.to_string(), "issuer": "https://issuer.example"}}}).to_string(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |role: &str, exp: i64| {
        json!({"sub": "alice", "role": role, "iss": "https://issuer.example", "aud": "agentvault",
               "nbf": now - 60, "exp": exp})
    };
    let signed = |claims: Value, kid: &str, key: &TestKey| {
        format!(
            "Bearer {}",
            token(
                "RS256",
                json!({"kid": kid, "typ": "JWT"}),
                claims,
                Some(key)
            )
        )
    };
    let reader = signed(claims("reader", now + 600), "current", &key);
    let writer = signed(claims("writer", now + 600), "current", &key);
    let expired = signed(claims("writer", now - 10), "current", &key);
    let forged = signed(claims("writer", now + 600), "current", &other_key);
    let mut wrong_aud = claims("writer", now + 600);
    wrong_aud["aud"] = json!("someone-else");
    let wrong_aud = signed(wrong_aud, "current", &key);

    let asked = std::cell::RefCell::new(Vec::new());
    let decide = |authorization: Option<&str>, method: &str, path: &str| {
        let input = envoy_input(authorization, method, path);
        let out = av(
            &[
                "policy",
                "eval",
                "--policy-dir",
                path_str(dir.path()),
                "--input",
                "-",
                "data.envoy.authz",
            ],
            Some(&input),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let result: Value = serde_json::from_str(&stdout(&out)).unwrap();
        asked.borrow_mut().push((
            serde_json::from_str::<Value>(&input).unwrap(),
            result.clone(),
        ));
        (result["allow"].as_bool().unwrap(), result["reason"].clone())
    };
    assert!(decide(Some(&reader), "GET", "/v1/secrets/openai").0);
    assert_eq!(
        decide(Some(&reader), "PUT", "/v1/secrets/alice/key"),
        (
            false,
            json!("role reader may not PUT /v1/secrets/alice/key")
        )
    );
    assert!(decide(Some(&writer), "PUT", "/v1/secrets/alice/key").0);
    assert!(!decide(Some(&writer), "PUT", "/v1/secrets/bob/key").0);
    assert_eq!(
        decide(Some(&expired), "GET", "/v1/secrets/openai"),
        (false, json!("token rejected"))
    );
    assert_eq!(
        decide(Some(&forged), "GET", "/v1/secrets/openai"),
        (false, json!("token rejected"))
    );
    assert_eq!(
        decide(Some(&wrong_aud), "GET", "/v1/secrets/openai"),
        (false, json!("token rejected"))
    );
    assert!(!decide(Some("Bearer not-a-jwt"), "GET", "/v1/secrets/openai").0);
    assert_eq!(
        decide(None, "GET", "/v1/secrets/openai"),
        (false, json!("no bearer token"))
    );

    // Real OPA gives the same documents (allow, reason, token, claims) for every
    // request. opa-eval runs OPA with strict builtin errors, so where a builtin
    // errs (a bearer that is no JWT) it fails the query instead of leaving that
    // expression undefined; there we only learn that it was a builtin error.
    let asked = asked.into_inner();
    let inputs: Vec<Value> = asked.iter().map(|(input, _)| input.clone()).collect();
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data.json")).unwrap())
            .unwrap();
    let opa = support::opa::run_opa(dir.path(), Some(&data), "data.envoy.authz", &inputs);
    let mut compared = 0;
    for ((input, ours), theirs) in asked.iter().zip(&opa) {
        if let Some(error) = theirs.get("error") {
            assert!(
                error.to_string().contains("eval_builtin_error"),
                "{input}: {error}"
            );
            continue;
        }
        assert_eq!(Some(ours), theirs.get("result"), "{input}");
        compared += 1;
    }
    assert!(
        compared >= asked.len() - 1,
        "OPA failed on {} inputs",
        asked.len() - compared
    );
}

/// A bundle directory: policies in a sub-directory, data at the path of the
/// directory holding it, and a manifest whose roots cover both.
fn bundle_dir(dir: &Path) {
    write(
        dir,
        "policies/authz.rego",
        "package agentvault.authz\nimport rego.v1\n\
         decision := {\"allow\": input.subject.agent in data.agentvault.allowed.agents, \"reasons\": [\"bundle\"]}\n",
    );
    write(
        dir,
        "agentvault/allowed/data.json",
        r#"{"agents": ["bot"]}"#,
    );
    write(dir, "agentvault/extra/data.yaml", "note: from yaml\n");
    write(
        dir,
        ".manifest",
        r#"{"revision": "r1", "roots": ["agentvault"]}"#,
    );
}

/// Packs `dir` into a gzipped tarball, as `tar -czf archive -C dir .` would.
fn tar_gz(dir: &Path, archive: &Path) {
    let file = std::fs::File::create(archive).unwrap();
    let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    tar.append_dir_all(".", dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn bundles_give_data_and_enforce_manifest_roots() {
    let dir = tempfile::tempdir().unwrap();
    bundle_dir(dir.path());
    let input = r#"{"subject": {"agent": "bot"}}"#;
    let out = av(
        &[
            "policy",
            "eval",
            "--policy-dir",
            path_str(dir.path()),
            "--input",
            "-",
        ],
        Some(input),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["allow"],
        json!(true)
    );
    let out = av(
        &[
            "policy",
            "eval",
            "--policy-dir",
            path_str(dir.path()),
            "data.agentvault.extra.note",
        ],
        None,
    );
    assert_eq!(stdout(&out).trim(), "\"from yaml\"", "{}", stderr(&out));

    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("bundle.tar.gz");
    tar_gz(dir.path(), &archive);
    let out = av(
        &[
            "policy",
            "eval",
            "--policy-dir",
            path_str(&archive),
            "--input",
            "-",
        ],
        Some(input),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["allow"],
        json!(true)
    );
    let out = av(&["policy", "check", path_str(&archive)], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    write(dir.path(), "other/data.json", r#"{"x": 1}"#);
    let out = av(&["policy", "check", path_str(dir.path())], None);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("other/data.json")
            && stderr(&out).contains("outside the manifest's roots"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(dir.path().join("other/data.json")).unwrap();
    write(
        dir.path(),
        "policies/rogue.rego",
        "package rogue\nimport rego.v1\nx := 1\n",
    );
    let out = av(&["policy", "check", path_str(dir.path())], None);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("package rogue is outside"),
        "{}",
        stderr(&out)
    );
}

/// A read by agent `name` of tenant `t`, for bundle policies that look at the agent.
fn input_for(name: &str) -> PolicyInput {
    PolicyInput {
        subject: Subject {
            spiffe_id: format!("spiffe://d/agent/t/{name}"),
            tenant: "t".into(),
            agent: name.into(),
            agent_id: format!("spiffe://d/agent/t/{name}"),
            role: None,
            uid: 1,
            pid: None,
        },
        action: Action::Read,
        resource: Resource::missing("x"),
        grants: vec![],
        token: None,
        event: None,
    }
}

#[test]
fn the_engine_loads_a_bundle_archive_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    bundle_dir(dir.path());
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("bundle.tar.gz");
    tar_gz(dir.path(), &archive);
    let engine = PolicyEngine::load(&archive, PolicyConfig::default()).unwrap();
    assert!(engine.decide(&input_for("bot")).unwrap().allow);
    assert!(!engine.decide(&input_for("other")).unwrap().allow);

    // A new archive with other data is picked up.
    write(
        dir.path(),
        "agentvault/allowed/data.json",
        r#"{"agents": ["other"]}"#,
    );
    tar_gz(dir.path(), &archive);
    engine.reload().unwrap();
    assert!(engine.decide(&input_for("other")).unwrap().allow);

    // A broken archive is refused and the last good bundle stays.
    std::fs::write(&archive, b"not gzip").unwrap();
    assert!(matches!(engine.reload(), Err(PolicyError::Bundle { .. })));
    assert!(engine.decide(&input_for("other")).unwrap().allow);
}

#[test]
fn the_engine_reloads_a_bundle_directory_when_its_data_changes() {
    let dir = tempfile::tempdir().unwrap();
    bundle_dir(dir.path());
    let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
    assert!(!engine.decide(&input_for("carol")).unwrap().allow);
    write(
        dir.path(),
        "agentvault/allowed/data.json",
        r#"{"agents": ["carol"]}"#,
    );
    engine.reload().unwrap();
    assert!(engine.decide(&input_for("carol")).unwrap().allow);

    write(dir.path(), "agentvault/allowed/data.json", "{broken");
    assert!(matches!(engine.reload(), Err(PolicyError::Bundle { .. })));
    assert!(engine.decide(&input_for("carol")).unwrap().allow);
}
