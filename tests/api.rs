//! The socket API against the contract, on the embedded store and on real Redis.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use hyper::Method;
use serde_json::json;
use support::{
    assert_denial_audited, assert_error, assert_hidden, free_port, get, put, put_value, raw, send,
    Backend, TestEnv,
};

async fn put_get_round_trips_value_and_metadata(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let reply = put(
        &c,
        "prod/openai/api-key",
        json!({
            "value": "sk-live-abc", "type": "api_key", "tier": "critical",
            "description": "OpenAI production key", "tags": {"team": "research", "env": "prod"},
            "expires_at": expires
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(
        reply.json(),
        json!({"path": "prod/openai/api-key", "version": 1})
    );

    let secret = get(&c, "/v1/secrets/prod/openai/api-key").await.json();
    assert_eq!(secret["value"], "sk-live-abc");
    assert_eq!(secret["version"], 1);
    assert_eq!(secret["type"], "api_key");
    assert_eq!(secret["tier"], "critical");
    assert_eq!(secret["description"], "OpenAI production key");
    assert_eq!(secret["tags"], json!({"team": "research", "env": "prod"}));
    assert!(secret["scope"].is_null());
    let stored =
        chrono::DateTime::parse_from_rfc3339(secret["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored,
        chrono::DateTime::parse_from_rfc3339(&expires).unwrap()
    );
    for field in ["created_at", "updated_at"] {
        assert!(
            chrono::DateTime::parse_from_rfc3339(secret[field].as_str().unwrap()).is_ok(),
            "{field}"
        );
    }

    // A second write is version 2, keeps metadata it does not name, and version 1 stays readable.
    assert_eq!(put_value(&c, "prod/openai/api-key", "sk-live-def").await, 2);
    let secret = get(&c, "/v1/secrets/prod/openai/api-key").await.json();
    assert_eq!(
        (secret["value"].as_str(), secret["version"].as_u64()),
        (Some("sk-live-def"), Some(2))
    );
    assert_eq!(secret["type"], "api_key");
    assert_eq!(secret["tags"]["team"], "research");
    let old = get(&c, "/v1/secrets/prod/openai/api-key?version=1")
        .await
        .json();
    assert_eq!(old["value"], "sk-live-abc");
    assert_eq!(old["version"], 1);
    assert_error(
        &get(&c, "/v1/secrets/prod/openai/api-key?version=3").await,
        404,
        "not_found",
    );

    // Written scoped to a role, it is that role's alone: the agent-level caller
    // is told what a missing path tells it, and the audit keeps why.
    let scoped = put(&c, "scoped", json!({"value": "v", "scope": "researcher"})).await;
    assert_eq!(scoped.status, 200);
    let denied = get(&c, "/v1/secrets/scoped").await;
    assert_hidden(&denied, "scoped");
    assert_denial_audited(&c, "scoped", "scoped to role researcher").await;

    // Defaults for a secret written with a value only.
    put_value(&c, "plain", "v").await;
    let plain = get(&c, "/v1/secrets/plain").await.json();
    assert_eq!(
        (plain["type"].as_str(), plain["tier"].as_str()),
        (Some("custom"), Some("sensitive"))
    );
    assert_eq!(plain["tags"], json!({}));
    assert!(
        plain["expires_at"].is_null() && plain["scope"].is_null() && plain["description"].is_null()
    );
}

async fn head_and_delete(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    put_value(&c, "a/b", "one").await;
    put_value(&c, "a/b", "two").await;
    let head = c
        .request(Method::HEAD, "/v1/secrets/a/b", None)
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let missing = c
        .request(Method::HEAD, "/v1/secrets/a/nope", None)
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());

    let deleted = c
        .request(Method::DELETE, "/v1/secrets/a/b", None)
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    assert_error(&get(&c, "/v1/secrets/a/b").await, 404, "not_found");
    assert_error(
        &get(&c, "/v1/secrets/a/b?version=1").await,
        404,
        "not_found",
    );
    let again = c
        .request(Method::DELETE, "/v1/secrets/a/b", None)
        .await
        .unwrap();
    assert_error(&again, 404, "not_found");
    assert_eq!(get(&c, "/v1/secrets").await.json()["items"], json!([]));
    // Written again after a delete, a secret starts over at version 1.
    assert_eq!(put_value(&c, "a/b", "three").await, 1);
}

/// Lists every page of `prefix` with `limit`, running `between` after each page.
async fn list_all(
    c: &agentvault::client::Client,
    prefix: &str,
    limit: usize,
    mut between: impl FnMut(usize) -> Vec<(bool, String)>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page_no in 0.. {
        let mut uri = format!("/v1/secrets?prefix={prefix}&limit={limit}");
        if let Some(cur) = &cursor {
            uri.push_str(&format!("&cursor={cur}"));
        }
        let page = get(c, &uri).await;
        assert_eq!(page.status, 200, "{:?}", page.json());
        let page = page.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        for item in items {
            assert!(item.get("value").is_none(), "list never returns values");
            seen.push(item["path"].as_str().unwrap().to_owned());
        }
        for (add, path) in between(page_no) {
            if add {
                put_value(c, &path, "x").await;
            } else {
                c.request(Method::DELETE, &format!("/v1/secrets/{path}"), None)
                    .await
                    .unwrap();
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    seen
}

async fn list_paginates_correctly_while_secrets_change(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    for i in 0..25 {
        put_value(&c, &format!("app/k{i:02}"), "v").await;
    }
    put_value(&c, "other/k", "v").await;
    put_value(&c, "apple", "v").await;

    let all = list_all(&c, "app/", 200, |_| vec![]).await;
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted by path");

    // After page 0 (k00..k06): remove a seen one and an unseen one, add one
    // before the cursor and one after it.
    let seen = list_all(&c, "app/", 7, |page| match page {
        0 => vec![
            (false, "app/k03".into()),
            (false, "app/k20".into()),
            (true, "app/k00a".into()),
            (true, "app/k99".into()),
        ],
        _ => vec![],
    })
    .await;
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no path is listed twice: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    for i in 0..25 {
        let path = format!("app/k{i:02}");
        if path != "app/k20" {
            assert!(
                unique.contains(&path),
                "{path} was present throughout and must be listed"
            );
        }
    }
    assert!(
        !unique.contains("app/k20"),
        "deleted before its page was read"
    );
    assert!(
        unique.contains("app/k99"),
        "added after the cursor, so listed"
    );
    assert!(!unique.contains("other/k") && !unique.contains("apple"));

    let page = get(&c, "/v1/secrets?prefix=app/k0&limit=3").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["next_cursor"].is_string());
    let default = get(&c, "/v1/secrets").await.json();
    assert!(default["items"].as_array().unwrap().len() <= 50);

    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=%%%",
        "cursor=Li4",
        "prefix=a%20b",
    ] {
        let reply = get(&c, &format!("/v1/secrets?{bad}")).await;
        assert_error(&reply, 400, "invalid_request");
        let field = bad.split('=').next().unwrap();
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{bad}"
        );
    }
}

async fn batch_reads_each_path_on_its_own(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    put_value(&c, "openai/api-key", "sk-1").await;
    put_value(&c, "db/password", "pw").await;
    let reply = send(
        &c,
        Method::POST,
        "/v1/batch",
        json!({"paths": ["openai/api-key", "db/password", "missing", "bad//path", "db/password"]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(
        body["secrets"],
        json!({"openai/api-key": "sk-1", "db/password": "pw"})
    );
    assert_eq!(body["errors"]["missing"]["code"], "not_found");
    assert_eq!(body["errors"]["bad//path"]["code"], "invalid_request");
    assert_error(
        &send(&c, Method::POST, "/v1/batch", json!({"paths": []})).await,
        400,
        "invalid_request",
    );
    let many: Vec<String> = (0..101).map(|i| format!("p{i}")).collect();
    assert_error(
        &send(&c, Method::POST, "/v1/batch", json!({ "paths": many })).await,
        400,
        "invalid_request",
    );
    assert_error(
        &send(&c, Method::GET, "/v1/batch", json!({})).await,
        405,
        "method_not_allowed",
    );
}

/// Every client-error row of the contract's table that the core serves.
async fn errors_follow_the_contract(backend: Backend) {
    let env = TestEnv::start_with(
        backend,
        &["--max-value-bytes", "1024", "--max-body-bytes", "4096"],
    );
    let c = env.client();

    // 400: bad JSON, bad fields (named), bad paths.
    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "body"),
        (b"", "body"),
        (br#"{"value": 42}"#, "value"),
        (br#"{"value": "v", "tier": "gold"}"#, "tier"),
        (br#"{"value": "v", "type": 7}"#, "type"),
        (br#"{"value": "v", "tags": {"k": 1}}"#, "tags.k"),
        (br#"{"value": "v", "expires_at": "tomorrow"}"#, "expires_at"),
        (br#"{"value": "v", "cas": -1}"#, "cas"),
        (br#"{"value": "v", "colour": "red"}"#, "colour"),
        (br#"{"tier": "standard"}"#, "value"),
        (br#"{"value": "v", "scope": "bad scope"}"#, "scope"),
    ];
    for (body, field) in cases {
        let reply = raw(&c, Method::PUT, "/v1/secrets/x", body).await;
        assert_error(&reply, 400, "invalid_request");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(field),
            "{} -> {message}",
            String::from_utf8_lossy(body)
        );
    }
    for path in [
        "a//b",
        "a/../b",
        "a/./b",
        "a/",
        "sp%20ace",
        &"x".repeat(513),
    ] {
        let reply = put(&c, path, json!({"value": "v"})).await;
        assert_error(&reply, 400, "invalid_request");
        assert_error(
            &get(&c, &format!("/v1/secrets/{path}")).await,
            400,
            "invalid_request",
        );
    }
    assert_error(
        &get(&c, "/v1/secrets/x?version=abc").await,
        400,
        "invalid_request",
    );
    assert_error(
        &get(&c, "/v1/secrets/x?version=0").await,
        400,
        "invalid_request",
    );

    // 404: unknown secret, unknown route.
    assert_error(&get(&c, "/v1/secrets/nope").await, 404, "not_found");
    assert_error(&get(&c, "/v2/whatever").await, 404, "not_found");

    // 405 with Allow.
    let reply = c
        .request(Method::POST, "/v1/secrets/x", Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_error(&reply, 405, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "GET, HEAD, PUT, PATCH, DELETE");
    assert_error(
        &send(&c, Method::POST, "/v1/health", json!({})).await,
        405,
        "method_not_allowed",
    );

    // 409: cas mismatch writes nothing; a matching cas writes.
    assert_error(
        &put(&c, "c", json!({"value": "v", "cas": 1})).await,
        409,
        "conflict",
    );
    assert_error(&get(&c, "/v1/secrets/c").await, 404, "not_found");
    assert_eq!(
        put(&c, "c", json!({"value": "v1", "cas": 0})).await.status,
        200
    );
    assert_error(
        &put(&c, "c", json!({"value": "v2", "cas": 0})).await,
        409,
        "conflict",
    );
    assert_error(
        &put(&c, "c", json!({"value": "v2", "cas": 5})).await,
        409,
        "conflict",
    );
    assert_eq!(get(&c, "/v1/secrets/c").await.json()["value"], "v1");
    assert_eq!(
        put(&c, "c", json!({"value": "v2", "cas": 1})).await.json()["version"],
        2
    );

    // 410: expired secrets stay listed with their metadata; a new write renews them.
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(800)).to_rfc3339();
    assert_eq!(
        put(
            &c,
            "exp",
            json!({"value": "v", "expires_at": soon, "tier": "standard"})
        )
        .await
        .status,
        200
    );
    assert_eq!(get(&c, "/v1/secrets/exp").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_error(&get(&c, "/v1/secrets/exp").await, 410, "expired");
    let listed = get(&c, "/v1/secrets?prefix=exp").await.json();
    assert_eq!(listed["items"][0]["tier"], "standard");
    assert_eq!(
        c.request(Method::HEAD, "/v1/secrets/exp", None)
            .await
            .unwrap()
            .status,
        200
    );
    put_value(&c, "exp", "renewed").await;
    assert_eq!(get(&c, "/v1/secrets/exp").await.json()["value"], "renewed");

    // 413: value over its limit, body over its limit (declared and streamed); nothing written.
    let big_value = "v".repeat(1025);
    assert_error(
        &put(&c, "big", json!({ "value": big_value })).await,
        413,
        "too_large",
    );
    let big_body = format!(r#"{{"value": "v", "description": "{}"}}"#, "d".repeat(5000));
    assert_error(
        &raw(&c, Method::PUT, "/v1/secrets/big", big_body.as_bytes()).await,
        413,
        "too_large",
    );
    assert_error(&get(&c, "/v1/secrets/big").await, 404, "not_found");
    assert_eq!(
        put_value(&c, "big", &"v".repeat(1024)).await,
        1,
        "exactly at the limit is fine"
    );
}

async fn values_survive_a_restart(backend: Backend) {
    let mut env = TestEnv::start(backend);
    let c = env.client();
    put_value(&c, "keep/me", "first").await;
    put_value(&c, "keep/me", "second").await;
    env.sidecar.restart();
    let c = env.client();
    let secret = get(&c, "/v1/secrets/keep/me").await.json();
    assert_eq!(
        (secret["value"].as_str(), secret["version"].as_u64()),
        (Some("second"), Some(2))
    );
    assert_eq!(
        get(&c, "/v1/secrets/keep/me?version=1").await.json()["value"],
        "first"
    );
}

async fn health_reports_identity_and_storage(backend: Backend) {
    let env = TestEnv::start_with(backend, &["--tenant", "acme", "--agent", "bot"]);
    let health = get(&env.client(), "/v1/health").await;
    assert_eq!(health.status, 200);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["identity"], "spiffe://dev.local/agent/acme/bot");
    assert_eq!(body["tenant"], "acme");
    let storage = if backend == Backend::Redis {
        "redis"
    } else {
        "embedded"
    };
    assert_eq!(body["storage"], storage);
    assert!(health.headers.contains_key("x-request-id"));
}

on_both_backends!(
    put_get_round_trips_value_and_metadata,
    head_and_delete,
    list_paginates_correctly_while_secrets_change,
    batch_reads_each_path_on_its_own,
    errors_follow_the_contract,
    values_survive_a_restart,
    health_reports_identity_and_storage,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_unavailable_and_writes_nothing() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = TestEnv::start_with(Backend::Redis, &["--metrics-addr", &metrics]);
    let c = env.client();
    put_value(&c, "before", "v").await;
    let mut redis = env.redis.take().unwrap();
    redis.stop();
    assert_error(
        &put(&c, "during", json!({"value": "v"})).await,
        503,
        "unavailable",
    );
    assert_error(&get(&c, "/v1/secrets/before").await, 503, "unavailable");
    assert_error(&get(&c, "/v1/health").await, 503, "unavailable");
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.lines()
            .any(|l| l == "agentvault_storage_errors_total 3"),
        "the three failed requests count as storage errors:\n{text}"
    );
    let redis = redis.restart();
    // The sidecar reconnects by itself; the failed write left nothing behind.
    let mut healthy = false;
    for _ in 0..100 {
        if get(&c, "/v1/health").await.status == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "sidecar recovers when Redis returns");
    assert_error(&get(&c, "/v1/secrets/during").await, 404, "not_found");
    assert_eq!(get(&c, "/v1/secrets/before").await.json()["value"], "v");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made() {
    let env = TestEnv::start(Backend::Embedded);
    let c = env.client();
    let made = get(&c, "/v1/secrets/none").await;
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    assert!(
        env.sidecar.logs().contains(&id),
        "request id appears in the log"
    );
}

/// A caller over its rate gets 429 with `Retry-After`, and nothing it sent is
/// written; other callers and health are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_told_when_to_retry() {
    let env = TestEnv::start_with(Backend::Embedded, &["--rate-limit", "1"]);
    let c = env.client();
    // The burst (twice the rate, at least) goes through first.
    let mut limited = None;
    for n in 0..20 {
        let reply = put(&c, &format!("burst/{n}"), json!({"value": "v"})).await;
        if reply.status == 429 {
            limited = Some((n, reply));
            break;
        }
        assert_eq!(reply.status, 200, "{:?}", reply.json());
    }
    let (n, reply) = limited.expect("the burst ran out");
    assert_error(&reply, 429, "rate_limited");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        get(&c, "/v1/health").await.status,
        200,
        "health is not limited"
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let listed = get(&c, "/v1/secrets?prefix=burst").await;
    assert_eq!(listed.status, 200, "{:?}", listed.json());
    let body = listed.json();
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), n, "the limited write wrote nothing: {items:?}");
}
