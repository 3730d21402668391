//! The leak guard (`POST /v1/redact`, `agentvault redact`) against real
//! sidecars: every encoding is found, only what the caller may read is
//! redacted (so nothing else is confirmed), a rotation's grace version counts,
//! a write is seen without a restart, short values are ignored, and findings
//! reach the audit log, metrics and answers without any value, as do the logs.

mod support;

use std::process::Command;
use std::time::Duration;

use agentvault::client::Client;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::Method;
use serde_json::{json, Value};
use support::{
    assert_error, assert_success, free_port, get, put_value, raw, run_with_stdin, send, Shared,
    Sidecar, TestEnv, BIN,
};

/// A value whose encodings all differ from one another.
const VALUE: &str = "sk-live/4f9+Qx ?&\"é>>?!z";

async fn redact(c: &Client, text: &str) -> Value {
    let reply = send(c, Method::POST, "/v1/redact", json!({ "text": text })).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json()
}

fn paths(found: &Value) -> Vec<(String, u64)> {
    found["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_owned(),
                f["version"].as_u64().expect("version"),
            )
        })
        .collect()
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Every encoding the README promises, by the form name findings carry.
fn encodings(value: &str) -> Vec<(&'static str, String)> {
    let b = value.as_bytes();
    vec![
        ("raw", value.to_owned()),
        (
            "json",
            serde_json::to_string(value)
                .unwrap()
                .trim_matches('"')
                .to_owned(),
        ),
        ("url", {
            let mut s = String::new();
            for &c in b {
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    s.push(c as char);
                } else {
                    s.push_str(&format!("%{c:02X}"));
                }
            }
            s
        }),
        ("url_form", form_urlencoded::byte_serialize(b).collect()),
        ("hex", hex(b, false)),
        ("hex_upper", hex(b, true)),
        ("base64", STANDARD.encode(b)),
        ("base64_nopad", STANDARD_NO_PAD.encode(b)),
        ("base64url", URL_SAFE.encode(b)),
        ("base64url_nopad", URL_SAFE_NO_PAD.encode(b)),
    ]
}

/// Every encoding of a value the caller may read is replaced, each finding
/// names its form and the byte range it covered in the original text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_of_a_readable_value_is_redacted() {
    let env = TestEnv::start(support::Backend::Embedded);
    let c = env.client();
    put_value(&c, "prod/api-key", VALUE).await;
    let forms = encodings(VALUE);
    let text: String = forms
        .iter()
        .map(|(form, encoded)| format!("{form}=<{encoded}>\n"))
        .collect();
    let found = redact(&c, &text).await;
    let expected: String = forms
        .iter()
        .map(|(form, _)| format!("{form}=<[REDACTED:prod/api-key]>\n"))
        .collect();
    assert_eq!(found["text"], expected.as_str());
    let findings = found["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), forms.len());
    for ((form, encoded), finding) in forms.iter().zip(findings) {
        assert_eq!(finding["form"], *form, "{finding}");
        assert_eq!(finding["path"], "prod/api-key");
        assert_eq!(finding["version"], 1);
        let (start, end) = (
            finding["start"].as_u64().unwrap() as usize,
            finding["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(&text[start..end], encoded.as_str(), "{form}");
    }

    // Inside a longer base64 string (Basic credentials), at any alignment.
    for user in ["u", "us", "usr"] {
        let basic = STANDARD.encode(format!("{user}:{VALUE}"));
        let found = redact(&c, &format!("Authorization: Basic {basic}")).await;
        assert_eq!(
            paths(&found),
            [("prod/api-key".to_owned(), 1)],
            "{user}: {found}"
        );
    }
    // Text without a value comes back as it was.
    let found = redact(&c, "nothing to see").await;
    assert_eq!(found, json!({"text": "nothing to see", "findings": []}));
}

/// Another agent's secret, and a secret scoped to another role, are not
/// redacted: the caller may not read them, so redaction must not confirm
/// them. A grant makes the other agent's secret readable, and then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_caller_may_read_is_redacted() {
    let shared = Shared::new();
    let a = shared.sidecar("acme", "a", &[]);
    let b = shared.sidecar("acme", "b", &[]);
    let (ca, cb) = (a.client(), b.client());
    put_value(&ca, "mine/key", "value-of-agent-a").await;
    put_value(&cb, "theirs/key", "value-of-agent-b").await;
    let scoped = send(
        &ca,
        Method::PUT,
        "/v1/secrets/billing/key",
        json!({"value": "value-of-billing-role", "scope": "billing"}),
    )
    .await;
    assert_eq!(scoped.status, 200, "{:?}", scoped.json());

    // The agent-level caller may not read a secret scoped to a role.
    let text = "a: value-of-agent-a b: value-of-agent-b billing: value-of-billing-role";
    // (answered as missing: no existence oracle)
    assert_error(&get(&ca, "/v1/secrets/theirs/key").await, 404, "not_found");
    assert_error(&get(&ca, "/v1/secrets/billing/key").await, 404, "not_found");
    let found = redact(&ca, text).await;
    assert_eq!(
        found["text"],
        "a: [REDACTED:mine/key] b: value-of-agent-b billing: value-of-billing-role"
    );
    assert_eq!(paths(&found), [("mine/key".to_owned(), 1)]);

    // The same agent, called by its `billing` role (this test's uid on a
    // second sidecar): the scoped secret is readable, so it is redacted.
    let billing_dir = tempfile::tempdir().expect("temp dir");
    let (url, keyring) = (shared.redis.url(), shared.keyring.display().to_string());
    let billing = Sidecar::dev(
        billing_dir.path(),
        &[
            "--redis-url",
            &url,
            "--keyring",
            &keyring,
            "--tenant",
            "acme",
            "--agent",
            "a",
            "--role",
            "billing=uid:0",
        ],
    );
    let read = get(&billing.client(), "/v1/secrets/billing/key").await;
    assert_eq!(read.status, 200, "{:?}", read.json()["error"]);
    let found = redact(&billing.client(), text).await;
    assert_eq!(
        found["text"],
        "a: [REDACTED:mine/key] b: value-of-agent-b billing: [REDACTED:billing/key]"
    );

    // B grants A its secret: A's next automaton includes it once the
    // grant's announcement reaches A (another sidecar's change).
    let granted = send(
        &cb,
        Method::POST,
        "/v1/grants",
        json!({"agent_id": "a", "path": "theirs/key"}),
    )
    .await;
    assert_eq!(granted.status, 201, "{:?}", granted.json());
    let mut last = Value::Null;
    for _ in 0..500 {
        last = redact(&ca, text).await;
        if paths(&last).contains(&("theirs/key".to_owned(), 1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last["text"],
        "a: [REDACTED:mine/key] b: [REDACTED:theirs/key] billing: value-of-billing-role"
    );
}

/// After a rotation, the old version stays redacted for its grace period
/// alongside the new one; a version merely replaced by a write is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotations_grace_version_is_redacted() {
    let env = TestEnv::start(support::Backend::Redis);
    let c = env.client();
    put_value(&c, "db/pw", "old-password-1").await;
    put_value(&c, "db/pw", "old-password-2").await;
    let rotated = send(
        &c,
        Method::POST,
        "/v1/rotate/db/pw",
        json!({"value": "new-password-3", "grace_period_seconds": 3600}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    let found = redact(&c, "old-password-1 old-password-2 new-password-3").await;
    assert_eq!(
        found["text"],
        "old-password-1 [REDACTED:db/pw] [REDACTED:db/pw]"
    );
    assert_eq!(
        paths(&found),
        [("db/pw".to_owned(), 2), ("db/pw".to_owned(), 3)]
    );
}

/// A write is redacted by the very next request, without a restart: the
/// automaton is rebuilt when the readable set changes, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automaton_is_rebuilt_after_a_write_and_only_then() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = TestEnv::start_with(support::Backend::Redis, &["--metrics-addr", &metrics]);
    let c = env.client();
    put_value(&c, "svc/token", "first-token-value").await;
    let text = "first-token-value second-token-value";
    // The first request may build before the change subscription is up;
    // wait until requests are answered from a cached automaton.
    let mut builds = counter(&metrics, "agentvault_redact_automaton_builds_total").await;
    for _ in 0..500 {
        redact(&c, text).await;
        let now = counter(&metrics, "agentvault_redact_automaton_builds_total").await;
        if now == builds {
            break;
        }
        builds = now;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let raw_found = "agentvault_redact_findings_total{form=\"raw\"}";
    let raw_before = counter(&metrics, raw_found).await;
    for _ in 0..20 {
        let found = redact(&c, text).await;
        assert_eq!(found["text"], "[REDACTED:svc/token] second-token-value");
    }
    let built = counter(&metrics, "agentvault_redact_automaton_builds_total").await - builds;
    // At most one rebuild: the first write's own announcement may arrive late.
    assert!(
        built <= 1,
        "20 requests of an unchanged readable set built {built} automata"
    );
    let builds = builds + built;

    // This sidecar's own write: the very next request sees it.
    put_value(&c, "svc/token", "second-token-value").await;
    let found = redact(&c, text).await;
    assert_eq!(found["text"], "first-token-value [REDACTED:svc/token]");
    assert_eq!(paths(&found), [("svc/token".to_owned(), 2)]);
    assert!(counter(&metrics, "agentvault_redact_automaton_builds_total").await > builds);
    assert_eq!(
        counter(&metrics, raw_found).await,
        raw_before + 21,
        "one raw finding counted per request"
    );
}

/// Values shorter than the minimum (8 bytes by default) are never matched;
/// `--redact-min-bytes` lowers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_values_are_ignored() {
    let env = TestEnv::start(support::Backend::Embedded);
    let c = env.client();
    put_value(&c, "pin", "1234567").await;
    put_value(&c, "key", "12345678").await;
    let found = redact(&c, "pin 1234567 key 12345678").await;
    assert_eq!(found["text"], "pin 1234567 key [REDACTED:key]");

    let low = TestEnv::start_with(support::Backend::Embedded, &["--redact-min-bytes", "4"]);
    put_value(&low.client(), "pin", "1234567").await;
    let found = redact(&low.client(), "pin 1234567").await;
    assert_eq!(found["text"], "pin [REDACTED:pin]");
}

/// Each secret version found is audited (path, version, forms) and no
/// value or encoding reaches the audit log, the logs, or an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_audited_and_no_value_is_logged() {
    let env = TestEnv::start(support::Backend::Redis);
    let c = env.client();
    put_value(&c, "prod/api-key", VALUE).await;
    let text: String = encodings(VALUE)
        .iter()
        .map(|(_, e)| format!("{e} "))
        .collect();
    redact(&c, &text).await;
    // Bad input answers 400 without echoing the text.
    let bad = raw(
        &c,
        Method::POST,
        "/v1/redact",
        format!("{{\"text\": \"{VALUE}").as_bytes(),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    let bad = send(&c, Method::POST, "/v1/redact", json!({"text": 5})).await;
    assert_error(&bad, 400, "invalid_request");
    let bad = send(
        &c,
        Method::POST,
        "/v1/redact",
        json!({"text": "x", "extra": VALUE}),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    assert!(!bad.json().to_string().contains(VALUE));
    let bad = send(&c, Method::GET, "/v1/redact", json!({})).await;
    assert_eq!(bad.status, 405);

    let audit = get(&c, "/v1/audit?limit=100").await;
    let items = audit.json()["items"].as_array().cloned().expect("items");
    let redacted: Vec<&Value> = items
        .iter()
        .filter(|e| e["event"] == "vault.redacted")
        .collect();
    assert_eq!(redacted.len(), 1, "{items:?}");
    assert_eq!(redacted[0]["path"], "prod/api-key");
    assert_eq!(redacted[0]["version"], 1);
    assert_eq!(redacted[0]["action"], "redact");
    let reasons = redacted[0]["reasons"].to_string();
    for (form, _) in encodings(VALUE) {
        assert!(reasons.contains(&format!("\"form {form}\"")), "{reasons}");
    }

    let audit_text = audit.json().to_string();
    let logs = env.sidecar.logs();
    for (form, encoded) in encodings(VALUE) {
        assert!(
            !audit_text.contains(&encoded),
            "audit holds the {form} form"
        );
        assert!(!logs.contains(&encoded), "logs hold the {form} form");
    }
}

/// A body over the limit is refused with 413 before it is scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused() {
    let env = TestEnv::start_with(support::Backend::Embedded, &["--max-body-bytes", "1024"]);
    let c = env.client();
    let reply = send(
        &c,
        Method::POST,
        "/v1/redact",
        json!({"text": "x".repeat(2000)}),
    )
    .await;
    assert_error(&reply, 413, "too_large");
}

/// `agentvault redact` filters stdin to stdout byte for byte, prints
/// findings on stderr with `--findings`, and fails with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_filters_stdin_to_stdout() {
    let env = TestEnv::start(support::Backend::Embedded);
    let c = env.client();
    put_value(&c, "prod/api-key", VALUE).await;
    let socket = env.sidecar.socket.display().to_string();
    let input = format!(
        "line 1 {VALUE}\nline 2 {}\nno newline",
        STANDARD.encode(VALUE)
    );
    let out = run_with_stdin(
        Command::new(BIN).args(["--socket", &socket, "redact", "--findings"]),
        input.as_bytes(),
    );
    assert_success("agentvault redact", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 1 [REDACTED:prod/api-key]\nline 2 [REDACTED:prod/api-key]\nno newline"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let findings: Value = serde_json::from_str(stderr.trim()).expect("findings JSON on stderr");
    assert_eq!(findings["findings"].as_array().map(Vec::len), Some(2));
    assert!(!stderr.contains(VALUE));

    // Line by line, each line answered as it comes.
    let out = run_with_stdin(
        Command::new(BIN).args(["--socket", &socket, "redact", "--lines"]),
        input.as_bytes(),
    );
    assert_success("agentvault redact --lines", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 1 [REDACTED:prod/api-key]\nline 2 [REDACTED:prod/api-key]\nno newline"
    );

    // Not UTF-8: a usage error; no sidecar: unavailable; nothing on stdout.
    let out = run_with_stdin(
        Command::new(BIN).args(["--socket", &socket, "redact"]),
        b"\xff\xfe",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let out = run_with_stdin(
        Command::new(BIN).args(["--socket", "/nonexistent.sock", "redact"]),
        b"text",
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(out.stdout.is_empty());
}

async fn counter(metrics: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}
