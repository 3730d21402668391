//! `.env` import through `POST /v1/import` and `agentvault import`, on the
//! embedded store and on real Redis: the parser's awkward corners, the modes
//! (dry run, skip, overwrite), tiers, and all-or-nothing rejection.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use agentvault::client::{Client, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::{assert_error, get, send, Backend, TestEnv, BIN};

// ---------------------------------------------------------------- helpers

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("fixture")
}

/// Every variable of `gnarly.env` and the exact value the import must store.
fn gnarly_expected() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("PLAIN", "gn-plain-value"),
        ("EXPORTED", "gn-exported-value"),
        ("INDENTED", "gn-indented-value"),
        ("SPACED", "gn spaced value"),
        ("INLINE", "gn-inline-value"),
        ("HASH_NO_SPACE", "gn-abc#def=ghi"),
        (
            "URL",
            "postgres://gn-user:p%40ss@db:5432/app?sslmode=require&opt=a=b#frag",
        ),
        ("SINGLE", "gn-single $HOME \\n kept # not a comment"),
        (
            "DOUBLE",
            "gn-tab\tnewline\nquote\"backslash\\dollar$HOME end",
        ),
        ("EMPTY", ""),
        ("EMPTY_QUOTED", ""),
        ("EMPTY_SINGLE", ""),
        (
            "PEM",
            "-----BEGIN PRIVATE KEY-----\nMIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9AgEAAkEAgnFAKE\n\
             line2/with+base64==\n-----END PRIVATE KEY-----",
        ),
        (
            "MULTI_SINGLE",
            "gn-first line\nsecond \"quoted\" line\n  third $NOT_EXPANDED \\n",
        ),
        ("WINDOWS", "gn-crlf-value"),
        ("WIN_QUOTED", "gn-crlf-quoted"),
        ("DUP", "gn-final-dup-value"),
        ("DUP_TAIL", "gn-dup-tail-value"),
        ("QUOTED_HASH", "gn-has # inside"),
        ("DOTTED.NAME-X", "gn-dotted-name-value"),
        ("LAST_NO_NEWLINE", "gn-no-newline-at-eof"),
    ])
}

/// tiers.env imported with `tier: standard` and `tier_prefix: {STRIPE_:
/// sensitive, STRIPE_LIVE_: critical, DB: critical}`: (name, tier, value).
const TIERS: [(&str, &str, &str); 5] = [
    ("STRIPE_LIVE_KEY", "critical", "tier-stripe-live"),
    ("STRIPE_TEST_KEY", "sensitive", "tier-stripe-test"),
    ("STRIPE", "standard", "tier-stripe-bare"),
    ("DB_PASSWORD", "critical", "tier-db-password"),
    ("OPENAI_API_KEY", "standard", "tier-openai"),
];

/// The lines of gnarly.env that assign DUP.
const DUP_LINES: [u64; 3] = [26, 29, 32];

fn gnarly_count() -> u64 {
    gnarly_expected().len() as u64
}

async fn import(c: &Client, body: Value) -> Reply {
    send(c, Method::POST, "/v1/import", body).await
}

/// Imports and asserts a 200 with exactly these counts; returns the report.
async fn import_ok(c: &Client, body: Value, counts: (u64, u64, u64)) -> Value {
    let reply = import(c, body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let report = reply.json();
    assert_eq!(
        (
            report["created"].as_u64(),
            report["updated"].as_u64(),
            report["skipped"].as_u64()
        ),
        (Some(counts.0), Some(counts.1), Some(counts.2)),
        "{report:#}"
    );
    let listed = report["secrets"].as_array().expect("secrets").len() as u64;
    assert_eq!(listed, counts.0 + counts.1 + counts.2);
    report
}

/// `(path, tier, action)` of a report's `secrets`, sorted by path.
fn report_rows(report: &Value) -> BTreeSet<(String, String, String)> {
    report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let keys: BTreeSet<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["action", "path", "tier"]), "{s}");
            (
                s["path"].as_str().unwrap().to_owned(),
                s["tier"].as_str().unwrap().to_owned(),
                s["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rows(ns: &str, names: &[&str], tier: &str, action: &str) -> BTreeSet<(String, String, String)> {
    names
        .iter()
        .map(|n| (format!("{ns}/{n}"), tier.to_owned(), action.to_owned()))
        .collect()
}

async fn listed(c: &Client, prefix: &str) -> Vec<Value> {
    let reply = get(c, &format!("/v1/secrets?prefix={prefix}&limit=200")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert!(reply.json()["next_cursor"].is_null());
    reply.json()["items"].as_array().unwrap().clone()
}

async fn all_listed(c: &Client) -> Vec<Value> {
    listed(c, "").await
}

async fn secret(c: &Client, path: &str) -> Value {
    let reply = get(c, &format!("/v1/secrets/{path}")).await;
    assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.json());
    reply.json()
}

async fn version_count(c: &Client, path: &str) -> usize {
    let reply = get(c, &format!("/v1/versions/{path}")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json().as_array().unwrap().len()
}

/// Asserts every gnarly variable is stored under `ns` with its exact value,
/// at `version`.
async fn assert_gnarly_stored(c: &Client, ns: &str, version: u64) {
    for (name, value) in gnarly_expected() {
        let s = secret(c, &format!("{ns}/{name}")).await;
        assert_eq!(s["value"], value, "{ns}/{name}");
        assert_eq!(s["version"], version, "{ns}/{name}");
    }
    assert_eq!(
        listed(c, &format!("{ns}/")).await.len() as u64,
        gnarly_count()
    );
}

fn assert_no_values_logged(env: &TestEnv, values: &[&str]) {
    let logs = env.sidecar.logs();
    assert!(!logs.is_empty(), "the sidecar logs something");
    for value in values.iter().filter(|v| v.len() >= 6) {
        assert!(
            !logs.contains(value),
            "the sidecar log holds the value {value:?}"
        );
        // A multi-line value must not leak line by line either.
        for line in value.lines().filter(|l| l.len() >= 12) {
            assert!(!logs.contains(line), "the sidecar log holds {line:?}");
        }
    }
}

fn av(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run agentvault")
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    let (stdout, stderr) = texts(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {stdout:?}, stderr {stderr:?}"
    );
}

/// The per-secret lines `agentvault import` prints, as (action, path, tier).
/// The rows of the import table (under its `ACTION PATH TIER` header,
/// above the summary line) as (path, tier, action).
fn cli_rows(stdout: &str) -> BTreeSet<(String, String, String)> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines
            .first()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["ACTION", "PATH", "TIER"]),
        "{stdout}"
    );
    lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{l:?}");
            (f[1].to_owned(), f[2].to_owned(), f[0].to_owned())
        })
        .collect()
}

fn cli_summary(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

fn gnarly_names() -> Vec<&'static str> {
    gnarly_expected().keys().copied().collect()
}

// ---------------------------------------------------------------- the parser, end to end

async fn gnarly_file_imports_every_value_exactly(backend: Backend) {
    let text = fixture_text("gnarly.env");
    assert_eq!(
        text.matches("\r\n").count(),
        2,
        "gnarly.env must keep its two CRLF lines (check .gitattributes / core.autocrlf)"
    );
    assert!(!text.ends_with('\n'), "gnarly.env ends without a newline");
    let env = TestEnv::start(backend);
    let c = env.client();
    let report = import_ok(
        &c,
        json!({"dotenv": text, "namespace": "apps/gnarly"}),
        (gnarly_count(), 0, 0),
    )
    .await;
    assert_eq!(
        report_rows(&report),
        rows("apps/gnarly", &gnarly_names(), "sensitive", "created")
    );
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["duplicates"], json!({"DUP": DUP_LINES}));
    assert!(
        !report.to_string().contains("gn-"),
        "the report never carries a value: {report}"
    );

    assert_gnarly_stored(&c, "apps/gnarly", 1).await;
    // No `$VAR` interpolation anywhere: the sidecar's own $HOME stays out.
    if let Ok(home) = std::env::var("HOME") {
        let single = secret(&c, "apps/gnarly/SINGLE").await;
        assert!(!single["value"].as_str().unwrap().contains(&home));
    }
    let values: Vec<&str> = gnarly_expected().values().copied().collect();
    let mut all = values.clone();
    all.extend(["gn-first-dup-value", "gn-second-dup-value"]);
    assert_no_values_logged(&env, &all);
    // Superseded duplicate values were never stored anywhere.
    let dup = get(&c, "/v1/versions/apps/gnarly/DUP").await.json();
    assert_eq!(dup.as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------- modes

async fn import_modes_count_exactly(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let n = gnarly_count();
    let body = |extra: Value| {
        let mut b = json!({"dotenv": fixture_text("gnarly.env"), "namespace": "m"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let names = gnarly_names();

    // Dry run: reports every secret as created, writes nothing.
    let report = import_ok(&c, body(json!({"dry_run": true})), (n, 0, 0)).await;
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        report_rows(&report),
        rows("m", &names, "sensitive", "created")
    );
    assert_eq!(report["duplicates"], json!({"DUP": DUP_LINES}));
    assert_eq!(
        all_listed(&c).await,
        Vec::<Value>::new(),
        "a dry run writes nothing"
    );

    // Real run.
    let report = import_ok(&c, body(json!({})), (n, 0, 0)).await;
    assert_eq!(report["dry_run"], false);
    assert_gnarly_stored(&c, "m", 1).await;
    assert_eq!(all_listed(&c).await.len() as u64, n);

    // Re-run: everything skipped, no new versions.
    let report = import_ok(&c, body(json!({})), (0, 0, n)).await;
    assert_eq!(
        report_rows(&report),
        rows("m", &names, "sensitive", "skipped")
    );
    for name in &names {
        assert_eq!(version_count(&c, &format!("m/{name}")).await, 1, "{name}");
    }

    // Dry run with overwrite: would update all, writes nothing.
    let report = import_ok(
        &c,
        body(json!({"dry_run": true, "overwrite": true})),
        (0, n, 0),
    )
    .await;
    assert_eq!(
        report_rows(&report),
        rows("m", &names, "sensitive", "updated")
    );
    for name in &names {
        assert_eq!(version_count(&c, &format!("m/{name}")).await, 1, "{name}");
    }

    // Overwrite: every secret gets version 2 with the same value.
    let report = import_ok(&c, body(json!({"overwrite": true})), (0, n, 0)).await;
    assert_eq!(
        report_rows(&report),
        rows("m", &names, "sensitive", "updated")
    );
    for name in &names {
        assert_eq!(version_count(&c, &format!("m/{name}")).await, 2, "{name}");
    }
    assert_gnarly_stored(&c, "m", 2).await;

    // A mix of new and existing variables.
    let mixed = "PLAIN=gn-plain-changed\nBRAND_NEW=gn-brand-new\n";
    let report = import_ok(
        &c,
        json!({"dotenv": mixed, "namespace": "m", "dry_run": true}),
        (1, 0, 1),
    )
    .await;
    assert_eq!(
        report_rows(&report),
        BTreeSet::from([
            ("m/BRAND_NEW".into(), "sensitive".into(), "created".into()),
            ("m/PLAIN".into(), "sensitive".into(), "skipped".into()),
        ])
    );
    assert_eq!(report["duplicates"], json!({}));
    assert_error(&get(&c, "/v1/secrets/m/BRAND_NEW").await, 404, "not_found");
    import_ok(
        &c,
        json!({"dotenv": mixed, "namespace": "m", "overwrite": true}),
        (1, 1, 0),
    )
    .await;
    assert_eq!(secret(&c, "m/PLAIN").await["value"], "gn-plain-changed");
    assert_eq!(secret(&c, "m/PLAIN").await["version"], 3);
    assert_eq!(secret(&c, "m/BRAND_NEW").await["value"], "gn-brand-new");
    assert_eq!(all_listed(&c).await.len() as u64, n + 1);

    // An empty file imports nothing.
    import_ok(
        &c,
        json!({"dotenv": "# nothing\n\n", "namespace": "m"}),
        (0, 0, 0),
    )
    .await;
    assert_eq!(all_listed(&c).await.len() as u64, n + 1);
}

// ---------------------------------------------------------------- tiers

async fn import_tiers_longest_prefix_wins(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let text = fixture_text("tiers.env");
    let report = import_ok(
        &c,
        json!({
            "dotenv": text, "namespace": "t", "tier": "standard",
            "tier_prefix": {"STRIPE_": "sensitive", "STRIPE_LIVE_": "critical", "DB": "critical"}
        }),
        (5, 0, 0),
    )
    .await;
    let expected = TIERS;
    assert_eq!(
        report_rows(&report),
        expected
            .iter()
            .map(|(n, t, _)| (format!("t/{n}"), t.to_string(), "created".to_owned()))
            .collect()
    );
    for (name, tier, value) in expected {
        let s = secret(&c, &format!("t/{name}")).await;
        assert_eq!(s["tier"], tier, "{name}");
        assert_eq!(s["value"], value, "{name}");
    }
    let listed_tiers: BTreeMap<String, String> = listed(&c, "t/")
        .await
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_owned(),
                i["tier"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed_tiers,
        expected
            .iter()
            .map(|(n, t, _)| (format!("t/{n}"), t.to_string()))
            .collect()
    );

    // Only tier_prefix: unmatched names get the default tier.
    import_ok(
        &c,
        json!({"dotenv": text, "namespace": "t2", "tier_prefix": {"DB_": "critical"}}),
        (5, 0, 0),
    )
    .await;
    assert_eq!(secret(&c, "t2/DB_PASSWORD").await["tier"], "critical");
    assert_eq!(secret(&c, "t2/STRIPE").await["tier"], "sensitive");
    // Only tier.
    import_ok(
        &c,
        json!({"dotenv": text, "namespace": "t3", "tier": "critical"}),
        (5, 0, 0),
    )
    .await;
    for item in listed(&c, "t3/").await {
        assert_eq!(item["tier"], "critical", "{item}");
    }

    // Bad tiers are named and write nothing.
    for (body, field) in [
        (
            json!({"dotenv": text, "namespace": "t4", "tier": "gold"}),
            "tier",
        ),
        (
            json!({"dotenv": text, "namespace": "t4", "tier_prefix": {"DB_": "gold"}}),
            "tier_prefix",
        ),
        (
            json!({"dotenv": text, "namespace": "t4", "tier_prefix": {"": "critical"}}),
            "tier_prefix",
        ),
        (
            json!({"dotenv": text, "namespace": "t4", "colour": "red"}),
            "colour",
        ),
        (json!({"namespace": "t4"}), "dotenv"),
    ] {
        let reply = import(&c, body).await;
        assert_error(&reply, 400, "invalid_request");
        let msg = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains(field), "{field}: {msg}");
    }
    assert!(listed(&c, "t4/").await.is_empty());
}

/// An overwrite that names no tier must not silently change an existing
/// secret's tier (PUT keeps the metadata it does not name; a critical secret
/// quietly becoming `sensitive` would drop its approval requirement).
async fn import_overwrite_without_tier_keeps_existing_tier(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let text = "PAYMENT_KEY=ow-payment-value\n";
    import_ok(
        &c,
        json!({"dotenv": text, "namespace": "ow", "tier": "critical"}),
        (1, 0, 0),
    )
    .await;
    assert_eq!(secret(&c, "ow/PAYMENT_KEY").await["tier"], "critical");
    let report = import_ok(
        &c,
        json!({"dotenv": "PAYMENT_KEY=ow-payment-value-2\n", "namespace": "ow", "overwrite": true}),
        (0, 1, 0),
    )
    .await;
    let s = secret(&c, "ow/PAYMENT_KEY").await;
    assert_eq!(s["version"], 2);
    assert_eq!(
        s["tier"], "critical",
        "import --overwrite without a tier downgraded a critical secret; report: {report}"
    );
}

// ---------------------------------------------------------------- rejection

async fn malformed_file_is_rejected_whole(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let text = fixture_text("malformed.env");
    let values = [
        "mal-good-value-1",
        "mal-good-value-2",
        "mal-good-value-3",
        "mal-good-value-4",
        "mal-line-seven-secret-token",
        "mal-after-value-8",
    ];
    for extra in [
        json!({}),
        json!({"dry_run": true}),
        json!({"overwrite": true}),
    ] {
        let mut body = json!({"dotenv": text, "namespace": "bad"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let reply = import(&c, body).await;
        assert_error(&reply, 400, "invalid_request");
        let raw = String::from_utf8_lossy(&reply.body).into_owned();
        let msg = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains("line 7"), "{msg}");
        assert!(msg.contains("dotenv"), "{msg}");
        for v in values {
            assert!(!raw.contains(v), "the error quotes {v}: {raw}");
        }
    }
    assert!(all_listed(&c).await.is_empty(), "nothing is imported");

    // Other malformed shapes, each naming its (first) line.
    for (text, line) in [
        (
            "A=mal-a\nB=mal-b\nQ=\"mal-unterminated-secret\nC=mal-c\n",
            3,
        ),
        ("A=mal-a\n\n\nB='mal-quoted' mal-junk-after\n", 4),
        ("A=mal-a\n=mal-no-name\n", 2),
        ("A=mal-a\nPEM=\"x\ny\nz\"\n9BAD=mal-digit\n", 5),
    ] {
        let reply = import(&c, json!({"dotenv": text, "namespace": "bad"})).await;
        assert_error(&reply, 400, "invalid_request");
        let raw = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(raw.contains(&format!("line {line}")), "{text:?}: {raw}");
        assert!(!raw.contains("mal-"), "{text:?}: {raw}");
    }
    assert!(all_listed(&c).await.is_empty(), "nothing is imported");

    // One value over the limit stops the whole import too.
    let big = "x".repeat(70 * 1024);
    let reply = import(
        &c,
        json!({"dotenv": format!("SMALL=mal-small\nBIG={big}\n"), "namespace": "bad"}),
    )
    .await;
    assert_error(&reply, 413, "too_large");
    assert!(!String::from_utf8_lossy(&reply.body).contains("xxxxxxxx"));
    assert!(all_listed(&c).await.is_empty(), "nothing is imported");
    assert_no_values_logged(&env, &values);
}

async fn namespace_must_be_a_valid_path(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    for ns in [
        "", "bad//ns", "../up", "a/../b", "/lead", "trail/", "sp ace", "x/./y",
    ] {
        let reply = import(&c, json!({"dotenv": "A=ns-value-a\n", "namespace": ns})).await;
        assert_error(&reply, 400, "invalid_request");
        let msg = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains("namespace"), "{ns:?}: {msg}");
    }
    let reply = import(&c, json!({"dotenv": "A=ns-value-a\n", "namespace": 7})).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("namespace"));
    assert!(all_listed(&c).await.is_empty());
    // A nested namespace is fine.
    import_ok(
        &c,
        json!({"dotenv": "A=ns-value-a\n", "namespace": "x/y/z"}),
        (1, 0, 0),
    )
    .await;
    assert_eq!(secret(&c, "x/y/z/A").await["value"], "ns-value-a");
}

async fn import_has_an_entry_limit(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let file = |n: usize| -> String { (0..n).map(|i| format!("K{i:04}=lim-{i}\n")).collect() };
    let reply = import(&c, json!({"dotenv": file(1001), "namespace": "lim"})).await;
    assert_error(&reply, 400, "invalid_request");
    let msg = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("dotenv") && msg.contains("1000"), "{msg}");
    assert!(all_listed(&c).await.is_empty(), "nothing is imported");
    // Exactly the limit is fine, and lands whole.
    import_ok(
        &c,
        json!({"dotenv": file(1000), "namespace": "lim"}),
        (1000, 0, 0),
    )
    .await;
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(cur) => format!("/v1/secrets?prefix=lim/&limit=200&cursor={cur}"),
            None => "/v1/secrets?prefix=lim/&limit=200".to_owned(),
        };
        let page = get(&c, &uri).await.json();
        count += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(count, 1000);
    assert_eq!(secret(&c, "lim/K0999").await["value"], "lim-999");
}

// ---------------------------------------------------------------- CLI

async fn cli_import_modes_tiers_and_errors(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let file = fixture("gnarly.env").display().to_string();
    let n = gnarly_count();
    let names = gnarly_names();

    let out = av(&env, &["import", &file, "--namespace", "cli", "--dry-run"]);
    assert_exit(&out, 0, "import --dry-run");
    let (stdout, stderr) = texts(&out);
    assert_eq!(
        cli_rows(&stdout),
        rows("cli", &names, "sensitive", "created")
    );
    assert_eq!(
        cli_summary(&stdout),
        format!("{n} created, 0 updated, 0 skipped (would be)")
    );
    assert!(
        stderr.contains("DUP") && stderr.contains("[26,29,32]"),
        "duplicates are reported: {stderr:?}"
    );
    assert!(all_listed(&c).await.is_empty(), "a dry run writes nothing");

    let out = av(&env, &["import", &file, "--namespace", "cli"]);
    assert_exit(&out, 0, "import");
    let stdout = texts(&out).0;
    assert_eq!(
        cli_rows(&stdout),
        rows("cli", &names, "sensitive", "created")
    );
    assert_eq!(
        cli_summary(&stdout),
        format!("{n} created, 0 updated, 0 skipped (were)")
    );
    assert_gnarly_stored(&c, "cli", 1).await;

    let out = av(&env, &["import", &file, "--namespace", "cli"]);
    assert_exit(&out, 0, "re-import");
    let stdout = texts(&out).0;
    assert_eq!(
        cli_rows(&stdout),
        rows("cli", &names, "sensitive", "skipped")
    );
    assert_eq!(
        cli_summary(&stdout),
        format!("0 created, 0 updated, {n} skipped (were)")
    );
    assert_gnarly_stored(&c, "cli", 1).await;

    let out = av(
        &env,
        &["import", &file, "--namespace", "cli", "--overwrite"],
    );
    assert_exit(&out, 0, "import --overwrite");
    let stdout = texts(&out).0;
    assert_eq!(
        cli_rows(&stdout),
        rows("cli", &names, "sensitive", "updated")
    );
    assert_eq!(
        cli_summary(&stdout),
        format!("0 created, {n} updated, 0 skipped (were)")
    );
    assert_gnarly_stored(&c, "cli", 2).await;
    for name in &names {
        assert_eq!(version_count(&c, &format!("cli/{name}")).await, 2, "{name}");
    }

    // Tiers.
    let tiers = fixture("tiers.env").display().to_string();
    let out = av(
        &env,
        &[
            "import",
            &tiers,
            "--namespace",
            "clit",
            "--tier",
            "standard",
            "--tier-prefix",
            "STRIPE_=sensitive",
            "--tier-prefix",
            "STRIPE_LIVE_=critical",
            "--tier-prefix",
            "DB=critical",
        ],
    );
    assert_exit(&out, 0, "import with tiers");
    let expected = TIERS;
    assert_eq!(
        cli_rows(&texts(&out).0),
        expected
            .iter()
            .map(|(n, t, _)| (format!("clit/{n}"), t.to_string(), "created".to_owned()))
            .collect()
    );
    for (name, tier, _) in expected {
        assert_eq!(
            secret(&c, &format!("clit/{name}")).await["tier"],
            tier,
            "{name}"
        );
    }
    assert_exit(
        &av(
            &env,
            &[
                "import",
                &tiers,
                "--namespace",
                "clit2",
                "--tier-prefix",
                "nonsense",
            ],
        ),
        2,
        "--tier-prefix without =",
    );

    // Malformed: non-zero exit, the line named on stderr, no value anywhere, nothing written.
    let before = all_listed(&c).await.len();
    let out = av(
        &env,
        &[
            "import",
            &fixture("malformed.env").display().to_string(),
            "--namespace",
            "clibad",
        ],
    );
    assert_exit(&out, 2, "import a malformed file (bad input)");
    let (stdout, stderr) = texts(&out);
    assert!(stderr.contains("line 7"), "{stderr:?}");
    assert!(stderr.contains("invalid_request"), "{stderr:?}");
    assert!(
        !stderr.contains("mal-") && !stdout.contains("mal-"),
        "{stdout:?} {stderr:?}"
    );
    assert!(listed(&c, "clibad/").await.is_empty());
    assert_eq!(all_listed(&c).await.len(), before);

    // Bad namespace; missing file; missing --namespace.
    let out = av(&env, &["import", &file, "--namespace", "bad//ns"]);
    assert_exit(&out, 2, "bad namespace (bad input)");
    assert!(texts(&out).1.contains("namespace"), "{:?}", texts(&out).1);
    let out = av(
        &env,
        &["import", "/nonexistent/agentvault.env", "--namespace", "x"],
    );
    assert_exit(&out, 1, "missing file");
    assert_exit(&av(&env, &["import", &file]), 2, "no --namespace");

    let mut values: Vec<&str> = gnarly_expected().values().copied().collect();
    values.extend(TIERS.iter().map(|t| t.2));
    assert_no_values_logged(&env, &values);
}

on_both_backends!(
    gnarly_file_imports_every_value_exactly,
    import_modes_count_exactly,
    import_tiers_longest_prefix_wins,
    import_overwrite_without_tier_keeps_existing_tier,
    malformed_file_is_rejected_whole,
    namespace_must_be_a_valid_path,
    import_has_an_entry_limit,
    cli_import_modes_tiers_and_errors,
);
