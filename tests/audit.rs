//! The audit stream and the metrics, over real sockets: events in
//! `/v1/audit` and on the SSE stream of another sidecar of the tenant, resume
//! by `Last-Event-ID`, no value in any event, log line or metric, `/metrics`
//! parsed as Prometheus text, the `audit` policy decision, and
//! `audit.fail_closed` against a real Redis failure.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use agentvault::audit::AuditId;
use agentvault::client::{Client, Streaming};
use hyper::Method;
use serde_json::{json, Value};
use support::*;

const DEV_AGENT: &str = "spiffe://dev.local/agent/dev/dev-agent";

/// This test process's uid, to map it to a role.
fn my_uid() -> u32 {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    file.as_file().metadata().expect("metadata").uid()
}

async fn audit_log(client: &Client, limit: usize) -> Vec<Value> {
    let reply = get(client, &format!("/v1/audit?limit={limit}")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json()["items"].as_array().cloned().expect("items")
}

fn request_id(reply: &agentvault::client::Reply) -> String {
    reply
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

/// SSE events until `done` says the collected ones suffice (or 15 s pass).
async fn collect_events(stream: &mut Streaming, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out on the SSE stream; saw {seen:#?}"))
            .expect("stream read")
            .expect("stream open");
        let mut event: Value = serde_json::from_str(&next.data).expect("event JSON");
        assert_eq!(
            next.id.as_deref(),
            event["id"].as_str(),
            "`id:` is the event's stream id"
        );
        event["sse_id"] = json!(next.id);
        seen.push(event);
    }
    seen
}

fn id_of(event: &Value) -> AuditId {
    event["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("an audit id")
}

fn find<'a>(events: &'a [Value], event: &str, path: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == event && e["path"] == path)
}

async fn open_stream(client: &Client, last_event_id: Option<&str>) -> Streaming {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| vec![("last-event-id", id)])
        .unwrap_or_default();
    let stream = client
        .stream("/v1/audit/stream", &headers)
        .await
        .expect("open stream");
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    stream
}

/// A read and a denial reach the tenant's log and, through Redis, the stream
/// of an auditor on another sidecar; each caller's own view is scoped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_denials_reach_the_log_and_another_sidecars_stream() {
    let shared = Shared::new();
    let uid = my_uid();
    let owner = shared.sidecar("dev", "dev-agent", &[]);
    let watcher = shared.sidecar("dev", "watcher", &["--role", &format!("auditor=uid:{uid}")]);
    let prober = shared.sidecar("dev", "prober", &[]);
    let (owner_client, watcher_client, prober_client) =
        (owner.client(), watcher.client(), prober.client());
    let mut stream = open_stream(&watcher_client, None).await;

    put_value(&owner_client, "prod/api-key", "sk-not-in-audit").await;
    let read = get(&owner_client, "/v1/secrets/prod/api-key").await;
    assert_eq!(read.status, 200);
    let read_id = request_id(&read);
    // The prober may not read it, and is told what a missing path would tell it.
    let denied = get(&prober_client, "/v1/secrets/prod/api-key").await;
    assert_hidden(&denied, "prod/api-key");
    let denied_id = request_id(&denied);

    let check = |events: &[Value]| {
        let accessed = find(events, "vault.accessed", "prod/api-key").expect("the read");
        assert_eq!(accessed["spiffe_id"], DEV_AGENT);
        assert_eq!(accessed["request_id"], read_id.as_str());
        assert_eq!(accessed["action"], "read");
        assert_eq!(accessed["version"], 1);
        assert_eq!(accessed["outcome"], "ok");
        assert!(accessed["uid"].is_u64() && accessed["pid"].is_i64());
        let refused = find(events, "vault.denied", "prod/api-key").expect("the denial");
        assert_eq!(refused["spiffe_id"], "spiffe://dev.local/agent/dev/prober");
        assert_eq!(refused["request_id"], denied_id.as_str());
        assert_eq!(refused["outcome"], "policy_denied");
        assert!(!refused["reasons"].as_array().expect("reasons").is_empty());
    };
    // Both in the log of the owner (events about its secret) and of the
    // auditor (the whole tenant), each sidecar's own events at once, the
    // others' as soon as their writer stored them...
    let both = |log: &[Value]| {
        find(log, "vault.accessed", "prod/api-key").is_some()
            && find(log, "vault.denied", "prod/api-key").is_some()
    };
    let log = wait_for_log(&owner_client, "the read and the denial", both).await;
    check(&log);
    let ids: Vec<AuditId> = log.iter().map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    check(&wait_for_log(&watcher_client, "the read and the denial", both).await);
    // ...while the prober sees its own denial, never the owner's read.
    let probed = wait_for_log(&prober_client, "the denial", |log| {
        find(log, "vault.denied", "prod/api-key").is_some()
    })
    .await;
    assert!(find(&probed, "vault.accessed", "prod/api-key").is_none());
    assert!(find(&probed, "vault.written", "prod/api-key").is_none());
    // And on the auditor's stream, which the others' events reach through Redis.
    let streamed = collect_events(&mut stream, |seen| {
        find(seen, "vault.accessed", "prod/api-key").is_some()
            && find(seen, "vault.denied", "prod/api-key").is_some()
    })
    .await;
    check(&streamed);
    let written = find(&streamed, "vault.written", "prod/api-key").expect("the write");
    assert_eq!(written["version"], 1);
}

async fn streams_resume_after_last_event_id(backend: Backend) {
    let env = TestEnv::start(backend);
    let client = env.client();
    for name in ["a", "b", "c"] {
        put_value(&client, &format!("resume/{name}"), "v").await;
    }
    let log = audit_log(&client, 10).await;
    let first = find(&log, "vault.written", "resume/a").expect("first write");
    let first_id = first["id"].as_str().expect("id").to_owned();

    let mut stream = open_stream(&client, Some(&first_id)).await;
    let resumed = collect_events(&mut stream, |seen| seen.len() >= 2).await;
    let paths: Vec<&str> = resumed[..2]
        .iter()
        .map(|e| e["path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(paths, ["resume/b", "resume/c"], "{resumed:#?}");

    // New events follow live, after what was replayed.
    put_value(&client, "resume/d", "v").await;
    let live = collect_events(&mut stream, |seen| {
        find(seen, "vault.written", "resume/d").is_some()
    })
    .await;
    assert!(live.iter().all(|e| id_of(e) > id_of(&resumed[1])));

    let bad = client
        .stream("/v1/audit/stream", &[("last-event-id", "yesterday")])
        .await
        .expect("request")
        .into_reply()
        .await
        .expect("reply");
    assert_error(&bad, 400, "invalid_request");
    assert_error(
        &get(&client, "/v1/audit?limit=0").await,
        400,
        "invalid_request",
    );
}

async fn values_and_tokens_never_reach_audit_logs_or_metrics(backend: Backend) {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::start_with(backend, &["--metrics-addr", &addr]);
    let client = env.client();
    let canary = "sk-live-CANARY-7f3a9c";
    for i in 0..100 {
        let written = put_value(&client, "prod/canary", &format!("{canary}-{i}")).await;
        assert_eq!(written, i + 1);
        let read = get(&client, "/v1/secrets/prod/canary").await;
        assert_eq!(read.json()["value"], format!("{canary}-{i}"));
    }
    let token = send(
        &client,
        Method::POST,
        "/v1/tokens",
        json!({"scope": "secrets:read:prod/canary", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(token.status, 201, "{:?}", token.json());
    let token = token.json()["token"].as_str().expect("token").to_owned();
    let with_token = client.clone().with_token(token.clone());
    assert_eq!(
        get(&with_token, "/v1/secrets/prod/canary").await.status,
        200
    );

    let log = audit_log(&client, 1000).await;
    let reads = log
        .iter()
        .filter(|e| e["event"] == "vault.accessed" && e["path"] == "prod/canary")
        .count();
    assert_eq!(reads, 101);
    assert_eq!(
        log.iter().filter(|e| e["event"] == "vault.written").count(),
        100
    );
    assert!(find(&log, "vault.token_issued", "secrets:read:prod/canary").is_some());
    let mut stream = open_stream(&client, Some("0-0")).await;
    let streamed = collect_events(&mut stream, |seen| seen.len() >= log.len()).await;

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let logs = env.sidecar.logs();
    let audit_lines = logs
        .lines()
        .filter(|l| l.contains("audit") && l.contains("\"event\":\"vault.accessed\""))
        .count();
    assert!(audit_lines >= 101, "events are mirrored on the log");
    for (what, text) in [
        ("the audit log", serde_json::to_string(&log).expect("json")),
        (
            "the SSE stream",
            serde_json::to_string(&streamed).expect("json"),
        ),
        ("the sidecar's log", logs),
        ("/metrics", metrics),
    ] {
        assert!(!text.contains("CANARY"), "a value leaked into {what}");
        assert!(!text.contains(&token), "the token leaked into {what}");
        assert!(
            !text.contains(&token[4..20]),
            "part of the token leaked into {what}"
        );
    }
}

fn sample<'a>(
    samples: &'a [prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(sample: Option<&prometheus_parse::Sample>) -> f64 {
    match sample.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            buckets.last().map_or(0.0, |b| b.count)
        }
        other => panic!("no such sample: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_requests() {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::start_with(Backend::Embedded, &["--metrics-addr", &addr]);
    let client = env.client();
    put_value(&client, "m/one", "v").await;
    for _ in 0..7 {
        assert_eq!(get(&client, "/v1/secrets/m/one").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&client, "/v1/secrets/m/missing").await.status, 404);
    }
    assert_eq!(get(&client, "/v1/audit?limit=5").await.status, 200);

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let s = &scrape.samples;
    let requests = "agentvault_requests_total";
    assert_eq!(
        value(sample(s, requests, &[("op", "get"), ("outcome", "ok")])),
        7.0
    );
    assert_eq!(
        value(sample(
            s,
            requests,
            &[("op", "get"), ("outcome", "not_found")]
        )),
        3.0
    );
    assert_eq!(
        value(sample(s, requests, &[("op", "put"), ("outcome", "ok")])),
        1.0
    );
    assert_eq!(
        value(sample(s, requests, &[("op", "audit"), ("outcome", "ok")])),
        1.0
    );
    assert_eq!(
        value(sample(
            s,
            "agentvault_request_duration_seconds",
            &[("op", "get")]
        )),
        10.0
    );
    assert!(value(sample(s, "agentvault_policy_eval_duration_seconds", &[])) >= 11.0);
    assert_eq!(
        value(sample(
            s,
            "agentvault_audit_events_total",
            &[("event", "vault.accessed")]
        )),
        7.0
    );
    assert_eq!(
        value(sample(
            s,
            "agentvault_audit_events_total",
            &[("event", "vault.written")]
        )),
        1.0
    );
    assert_eq!(
        value(sample(s, "agentvault_storage_errors_total", &[])),
        0.0
    );
    assert!(value(sample(s, "agentvault_svid_expiry_timestamp_seconds", &[])) > 1.0e9);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(sample(s, "agentvault_build_info", &[("version", version)])),
        1.0
    );
    // Bounded labels: no path, id or value anywhere.
    for sample in s {
        for (_, label) in sample.labels.iter() {
            assert!(
                !label.contains("m/one") && !label.contains("m/missing"),
                "{sample:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_audit_is_a_policy_decision() {
    let shared = Shared::new();
    let uid = my_uid();
    let writer = shared.sidecar(
        "dev",
        "dev-agent",
        &["--role", &format!("writer=uid:{uid}")],
    );
    let auditor = shared.sidecar(
        "dev",
        "auditing",
        &["--role", &format!("auditor=uid:{uid}")],
    );
    put_value(&auditor.client(), "audit-only/x", "v").await;
    put_value(&writer.client(), "team/w", "v").await;
    // Any caller reads the audit, scoped by the policy: its own events and
    // those about secrets it may read, never another agent's private paths.
    let scoped = wait_for_log(&writer.client(), "the writer's own write", |log| {
        find(log, "vault.written", "team/w").is_some()
    })
    .await;
    assert!(
        find(&scoped, "vault.written", "audit-only/x").is_none(),
        "{scoped:?}"
    );
    let stream = writer
        .client()
        .stream("/v1/audit/stream", &[])
        .await
        .expect("request");
    assert_eq!(stream.status, 200);
    drop(stream);

    // The operator's auditor role sees the tenant, the writer's reads of the log included.
    let log = wait_for_log(&auditor.client(), "the writer's audit read", |log| {
        find(log, "vault.audit_read", "audit").is_some()
            && find(log, "vault.written", "team/w").is_some()
    })
    .await;
    let read = find(&log, "vault.audit_read", "audit").expect("the writer's audit read");
    assert_eq!(
        read["spiffe_id"],
        "spiffe://dev.local/agent/dev/dev-agent/writer"
    );
    assert_eq!(read["role"], "writer");
    assert!(find(&log, "vault.written", "audit-only/x").is_some());
}

/// Breaks the tenant's audit stream with a real Redis error (the key holds a
/// string, so XADD fails with WRONGTYPE) while secrets stay reachable.
fn break_audit_stream(redis: &RedisServer) {
    let mut conn = redis.connection();
    redis::cmd("DEL")
        .arg("av:{dev}:audit")
        .query::<()>(&mut conn)
        .expect("DEL");
    redis::cmd("SET")
        .arg("av:{dev}:audit")
        .arg("not a stream")
        .query::<()>(&mut conn)
        .expect("SET");
}

fn repair_audit_stream(redis: &RedisServer) {
    redis::cmd("DEL")
        .arg("av:{dev}:audit")
        .query::<()>(&mut redis.connection())
        .expect("DEL");
}

async fn wait_for_log(client: &Client, what: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(client, "/v1/audit?limit=100").await;
        if reply.status == 200 {
            let items = reply.json()["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if found(&items) {
                return items;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_writes_and_critical_reads_while_audit_is_down() {
    let env = TestEnv::start(Backend::Redis);
    let client = env.client();
    let redis = env.redis.as_ref().expect("redis");
    put_value(&client, "std/key", "s").await;
    let critical = put(
        &client,
        "crit/key",
        json!({"value": "c", "tier": "critical"}),
    )
    .await;
    assert_eq!(critical.status, 200);

    break_audit_stream(redis);
    let read = get(&client, "/v1/secrets/std/key").await;
    assert_eq!(read.status, 200, "a standard read still answers");
    let read_id = request_id(&read);
    assert_error(
        &get(&client, "/v1/secrets/crit/key").await,
        503,
        "unavailable",
    );
    assert_error(
        &put(&client, "std/key", json!({"value": "x"})).await,
        503,
        "unavailable",
    );
    assert_error(
        &send(&client, Method::DELETE, "/v1/secrets/std/key", json!(null)).await,
        503,
        "unavailable",
    );
    // The refused write changed nothing.
    assert_eq!(
        get(&client, "/v1/versions/std/key")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    repair_audit_stream(redis);
    // The buffered events land, in order, and writes work again.
    let log = wait_for_log(&client, "the buffered events", |items| {
        items.iter().any(|e| e["request_id"] == read_id.as_str())
    })
    .await;
    let buffered = log
        .iter()
        .find(|e| e["request_id"] == read_id.as_str())
        .expect("buffered read");
    assert_eq!(buffered["event"], "vault.accessed");
    let refused = find(&log, "vault.denied", "crit/key").expect("refused critical read");
    assert_eq!(refused["outcome"], "unavailable");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = put(&client, "std/key", json!({"value": "y"})).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes stay refused: {:?}",
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&client, "/v1/secrets/crit/key").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_answers_and_buffers_until_redis_returns() {
    let mut env = TestEnv::start_with(Backend::Redis, &["--audit-fail-closed", "false"]);
    let client = env.client();
    let critical = put(
        &client,
        "crit/key",
        json!({"value": "c", "tier": "critical"}),
    )
    .await;
    assert_eq!(critical.status, 200);

    break_audit_stream(env.redis.as_ref().expect("redis"));
    let read = get(&client, "/v1/secrets/crit/key").await;
    assert_eq!(read.status, 200, "fail-open answers critical reads too");
    let read_id = request_id(&read);
    let write = put(&client, "crit/key", json!({"value": "d"})).await;
    assert_eq!(write.status, 200);
    let write_id = request_id(&write);

    // Redis itself goes away and comes back: the events wait and then land.
    let mut redis = env.redis.take().expect("redis");
    redis.stop();
    assert_error(
        &get(&client, "/v1/secrets/crit/key").await,
        503,
        "unavailable",
    );
    let redis = redis.restart();
    repair_audit_stream(&redis);
    let log = wait_for_log(&client, "the buffered events", |items| {
        items.iter().any(|e| e["request_id"] == write_id.as_str())
    })
    .await;
    let position = |id: &str| log.iter().position(|e| e["request_id"] == id);
    let (read_at, write_at) = (position(&read_id), position(&write_id));
    assert!(read_at.is_some() && write_at.is_some(), "{log:#?}");
    assert!(write_at < read_at, "kept in order (newest first)");
    env.redis = Some(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_the_audit_log() {
    let env = TestEnv::start(Backend::Embedded);
    put_value(&env.client(), "cli/one", "v").await;
    let out = Command::new(BIN)
        .args(["audit", "--limit", "5", "--json"])
        .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
        .output()
        .expect("run agentvault audit");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(
        find(&events, "vault.written", "cli/one").is_some(),
        "{stdout}"
    );
    let columns = Command::new(BIN)
        .args(["audit"])
        .env("AGENTVAULT_SOCKET", &env.sidecar.socket)
        .output()
        .expect("run agentvault audit");
    let text = String::from_utf8_lossy(&columns.stdout);
    assert!(text.starts_with("TIME "), "a header row: {text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" vault.written ") && l.contains(" cli/one ")),
        "{text}"
    );
}

on_both_backends!(
    streams_resume_after_last_event_id,
    values_and_tokens_never_reach_audit_logs_or_metrics,
);
