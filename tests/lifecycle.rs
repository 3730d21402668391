//! A secret's life after its first write, through the socket and the CLI:
//! versions, rollback, cas, rotation with a grace period, expiry and its
//! renewal, expiry warnings to a webhook, and concurrent writers on two
//! sidecars sharing one Redis.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentvault::client::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{
    assert_error, get, put, put_value, send, Backend, RedisServer, Sidecar, TestEnv, BIN,
};

// ---------------------------------------------------------------- helpers

fn at(v: &Value) -> DateTime<Utc> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a time, got {v}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Asserts `actual` lies in `[low - slack, high + slack]`.
fn assert_between(actual: DateTime<Utc>, low: DateTime<Utc>, high: DateTime<Utc>, what: &str) {
    let slack = chrono::Duration::milliseconds(20);
    assert!(
        actual >= low - slack && actual <= high + slack,
        "{what}: {actual} is not within [{low}, {high}]"
    );
}

fn message(reply: &agentvault::client::Reply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn versions(c: &Client, path: &str) -> Vec<Value> {
    let reply = get(c, &format!("/v1/versions/{path}")).await;
    assert_eq!(reply.status, 200, "versions of {path}: {:?}", reply.json());
    reply.json().as_array().expect("a versions array").clone()
}

fn version_numbers(list: &[Value]) -> Vec<u64> {
    list.iter()
        .map(|v| v["version"].as_u64().expect("version number"))
        .collect()
}

fn active_versions(list: &[Value]) -> Vec<u64> {
    list.iter()
        .filter(|v| v["active"] == json!(true))
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

async fn value_of(c: &Client, uri: &str) -> (String, u64) {
    let reply = get(c, uri).await;
    assert_eq!(reply.status, 200, "GET {uri}: {:?}", reply.json());
    let body = reply.json();
    (
        body["value"].as_str().expect("value").to_owned(),
        body["version"].as_u64().expect("version"),
    )
}

async fn head(c: &Client, path: &str) -> agentvault::client::Reply {
    c.request(Method::HEAD, &format!("/v1/secrets/{path}"), None)
        .await
        .expect("request")
}

fn keygen(dir: &Path) -> PathBuf {
    let keyring = dir.join("keyring.json");
    let out = Command::new(BIN)
        .arg("keygen")
        .arg(&keyring)
        .output()
        .expect("run agentvault keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    keyring
}

/// Two `agentvault dev` sidecars on one Redis with one keyring.
fn two_sidecars(redis: &RedisServer, dir: &Path, extra: &[&str]) -> (Sidecar, Sidecar) {
    let keyring = keygen(dir).display().to_string();
    let url = redis.url();
    let start = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut args = vec!["--redis-url", url.as_str(), "--keyring", keyring.as_str()];
        args.extend_from_slice(extra);
        Sidecar::dev(&d, &args)
    };
    (start("a"), start("b"))
}

/// Runs the real binary against `socket`, the way users do.
fn av(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("AGENTVAULT_SOCKET", socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run agentvault")
}

fn out_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    let (stdout, stderr) = out_text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {stdout:?}, stderr {stderr:?}"
    );
}

/// A tiny real HTTP server that records what is POSTed to it.
struct Webhook {
    addr: SocketAddr,
    /// (method, path, body) of every request, in arrival order.
    received: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl Webhook {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            log.lock().unwrap().push((
                                method,
                                path,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<(String, String, String)> {
        self.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- 1. versions

async fn versions_are_listed_and_readable_by_number(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    for (i, value) in ["value-one", "value-two", "value-three"].iter().enumerate() {
        assert_eq!(put_value(&c, "app/p", value).await, i as u64 + 1);
    }
    for (n, value) in [(1, "value-one"), (2, "value-two"), (3, "value-three")] {
        assert_eq!(
            value_of(&c, &format!("/v1/secrets/app/p?version={n}")).await,
            (value.to_owned(), n)
        );
    }
    assert_eq!(
        value_of(&c, "/v1/secrets/app/p").await,
        ("value-three".to_owned(), 3)
    );

    let list = versions(&c, "app/p").await;
    assert_eq!(version_numbers(&list), vec![1, 2, 3]);
    assert_eq!(active_versions(&list), vec![3], "{list:?}");
    for v in &list {
        assert!(v.get("value").is_none(), "versions never carry values");
        assert!(v["expires_at"].is_null(), "{v}");
        assert!(v["active"].is_boolean(), "{v}");
    }
    let created: Vec<_> = list.iter().map(|v| at(&v["created_at"])).collect();
    assert!(
        created.windows(2).all(|w| w[0] < w[1]),
        "created_at ascending: {created:?}"
    );

    assert_error(&get(&c, "/v1/versions/app/missing").await, 404, "not_found");
    assert_error(
        &get(&c, "/v1/secrets/app/p?version=4").await,
        404,
        "not_found",
    );
    assert_error(
        &get(&c, "/v1/secrets/app/p?version=0").await,
        400,
        "invalid_request",
    );
    assert_error(
        &get(&c, "/v1/secrets/app/missing?version=1").await,
        404,
        "not_found",
    );
    assert_error(
        &get(&c, "/v1/versions/bad//path").await,
        400,
        "invalid_request",
    );
    assert_error(
        &send(&c, Method::POST, "/v1/versions/app/p", json!({})).await,
        405,
        "method_not_allowed",
    );
}

// ---------------------------------------------------------------- 2. rollback

async fn rollback_reactivates_an_old_version(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    for value in ["roll-1", "roll-2", "roll-3"] {
        put_value(&c, "svc/key", value).await;
    }
    let reply = send(
        &c,
        Method::POST,
        "/v1/rollback/svc/key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json(), json!({"path": "svc/key", "version": 1}));

    assert_eq!(
        value_of(&c, "/v1/secrets/svc/key").await,
        ("roll-1".to_owned(), 1)
    );
    let list = versions(&c, "svc/key").await;
    assert_eq!(version_numbers(&list), vec![1, 2, 3], "nothing is dropped");
    assert_eq!(active_versions(&list), vec![1]);
    let listed = get(&c, "/v1/secrets?prefix=svc/").await.json();
    assert_eq!(
        listed["items"][0]["version"], 1,
        "list shows the active version"
    );
    // Other versions stay readable by number.
    assert_eq!(
        value_of(&c, "/v1/secrets/svc/key?version=3").await,
        ("roll-3".to_owned(), 3)
    );

    // Version numbers are never reused: the next write is 4, not 2.
    assert_eq!(put_value(&c, "svc/key", "roll-4").await, 4);
    assert_eq!(
        value_of(&c, "/v1/secrets/svc/key").await,
        ("roll-4".to_owned(), 4)
    );
    let list = versions(&c, "svc/key").await;
    assert_eq!(version_numbers(&list), vec![1, 2, 3, 4]);
    assert_eq!(active_versions(&list), vec![4]);

    // Rolling "forward" to a later inactive version works too.
    let reply = send(
        &c,
        Method::POST,
        "/v1/rollback/svc/key",
        json!({"version": 2}),
    )
    .await;
    assert_eq!(reply.json(), json!({"path": "svc/key", "version": 2}));
    assert_eq!(
        value_of(&c, "/v1/secrets/svc/key").await,
        ("roll-2".to_owned(), 2)
    );

    // Errors.
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rollback/svc/key",
            json!({"version": 9}),
        )
        .await,
        404,
        "not_found",
    );
    let zero = send(
        &c,
        Method::POST,
        "/v1/rollback/svc/key",
        json!({"version": 0}),
    )
    .await;
    assert_error(&zero, 400, "invalid_request");
    assert!(message(&zero).contains("version"), "{}", message(&zero));
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rollback/svc/none",
            json!({"version": 1}),
        )
        .await,
        404,
        "not_found",
    );
    let bad = send(
        &c,
        Method::POST,
        "/v1/rollback/svc/key",
        json!({"version": "one"}),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    assert!(message(&bad).contains("version"), "{}", message(&bad));
    assert_error(
        &send(&c, Method::POST, "/v1/rollback/svc/key", json!({})).await,
        400,
        "invalid_request",
    );
    // None of the failures changed anything.
    let list = versions(&c, "svc/key").await;
    assert_eq!(version_numbers(&list), vec![1, 2, 3, 4]);
    assert_eq!(active_versions(&list), vec![2]);
}

// ---------------------------------------------------------------- 3. cas

async fn cas_writes_only_on_the_active_version(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let created = put(&c, "cas/p", json!({"value": "c1", "cas": 0})).await;
    assert_eq!(created.status, 200, "{:?}", created.json());
    assert_eq!(created.json(), json!({"path": "cas/p", "version": 1}));

    let second = put(&c, "cas/p", json!({"value": "c2", "cas": 1})).await;
    assert_eq!(second.json(), json!({"path": "cas/p", "version": 2}));

    for stale in [1, 3, 0] {
        let reply = put(&c, "cas/p", json!({"value": "must-not-land", "cas": stale})).await;
        assert_error(&reply, 409, "conflict");
        assert!(!message(&reply).contains("must-not-land"));
    }
    assert_eq!(
        version_numbers(&versions(&c, "cas/p").await),
        vec![1, 2],
        "a failed cas writes nothing"
    );
    assert_eq!(
        value_of(&c, "/v1/secrets/cas/p").await,
        ("c2".to_owned(), 2)
    );

    // A cas on a secret that does not exist fails and creates nothing.
    assert_error(
        &put(&c, "cas/new", json!({"value": "x", "cas": 1})).await,
        409,
        "conflict",
    );
    assert_error(&get(&c, "/v1/secrets/cas/new").await, 404, "not_found");

    // After a rollback the current version is the active one, not the latest.
    send(
        &c,
        Method::POST,
        "/v1/rollback/cas/p",
        json!({"version": 1}),
    )
    .await;
    assert_error(
        &put(&c, "cas/p", json!({"value": "nope", "cas": 2})).await,
        409,
        "conflict",
    );
    let third = put(&c, "cas/p", json!({"value": "c3", "cas": 1})).await;
    assert_eq!(third.json(), json!({"path": "cas/p", "version": 3}));
    assert_eq!(
        value_of(&c, "/v1/secrets/cas/p").await,
        ("c3".to_owned(), 3)
    );
}

// ---------------------------------------------------------------- 5. rotation

async fn rotation_keeps_the_old_version_for_its_grace(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    put_value(&c, "rot/key", "rot-old-value").await;

    let before = Utc::now();
    let reply = send(
        &c,
        Method::POST,
        "/v1/rotate/rot/key",
        json!({"value": "rot-new-value", "grace_period_seconds": 2}),
    )
    .await;
    let after = Utc::now();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let body = reply.json();
    assert_eq!(body["new_version"], 2, "{body}");
    assert_eq!(body["old_version"], 1, "{body}");
    let old_expires = at(&body["old_expires_at"]);
    let grace = chrono::Duration::seconds(2);
    assert_between(old_expires, before + grace, after + grace, "old_expires_at");

    assert_eq!(
        value_of(&c, "/v1/secrets/rot/key").await,
        ("rot-new-value".to_owned(), 2)
    );
    assert_eq!(
        value_of(&c, "/v1/secrets/rot/key?version=1").await,
        ("rot-old-value".to_owned(), 1),
        "the old version reads during its grace"
    );
    let list = versions(&c, "rot/key").await;
    assert_eq!(version_numbers(&list), vec![1, 2]);
    assert_eq!(active_versions(&list), vec![2]);
    assert_eq!(at(&list[0]["expires_at"]), old_expires);
    assert!(list[1]["expires_at"].is_null());
    // The secret itself does not expire.
    assert!(get(&c, "/v1/secrets/rot/key").await.json()["expires_at"].is_null());

    let wait = (old_expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    let gone = get(&c, "/v1/secrets/rot/key?version=1").await;
    assert_error(&gone, 410, "expired");
    assert!(!message(&gone).contains("rot-old-value"));
    assert_eq!(
        value_of(&c, "/v1/secrets/rot/key").await,
        ("rot-new-value".to_owned(), 2),
        "the new version is unaffected"
    );
    let list = versions(&c, "rot/key").await;
    assert_eq!(
        version_numbers(&list),
        vec![1, 2],
        "an expired version stays listed"
    );
    assert_eq!(at(&list[0]["expires_at"]), old_expires);
    // An expired version cannot be made active again.
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rollback/rot/key",
            json!({"version": 1}),
        )
        .await,
        410,
        "expired",
    );
    assert_eq!(active_versions(&versions(&c, "rot/key").await), vec![2]);
}

async fn rotation_default_grace_and_bounds(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    put_value(&c, "rot/d", "d-1").await;

    // Omitted grace: one hour.
    let before = Utc::now();
    let reply = send(
        &c,
        Method::POST,
        "/v1/rotate/rot/d",
        json!({"value": "d-2"}),
    )
    .await;
    let after = Utc::now();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let body = reply.json();
    assert_eq!(
        (body["new_version"].as_u64(), body["old_version"].as_u64()),
        (Some(2), Some(1))
    );
    let hour = chrono::Duration::seconds(3600);
    assert_between(
        at(&body["old_expires_at"]),
        before + hour,
        after + hour,
        "default grace",
    );

    // Exactly one year is allowed; one second more is not.
    let year = 365 * 24 * 3600;
    let before = Utc::now();
    let reply = send(
        &c,
        Method::POST,
        "/v1/rotate/rot/d",
        json!({"value": "d-3", "grace_period_seconds": year}),
    )
    .await;
    let after = Utc::now();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let y = chrono::Duration::seconds(year);
    assert_eq!(reply.json()["old_version"], 2);
    assert_between(
        at(&reply.json()["old_expires_at"]),
        before + y,
        after + y,
        "one-year grace",
    );

    for bad in [json!(year + 1), json!(u64::MAX), json!(-1), json!("60")] {
        let reply = send(
            &c,
            Method::POST,
            "/v1/rotate/rot/d",
            json!({"value": "d-bad", "grace_period_seconds": bad}),
        )
        .await;
        assert_error(&reply, 400, "invalid_request");
        assert!(
            message(&reply).contains("grace_period_seconds"),
            "{bad}: {}",
            message(&reply)
        );
    }
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rotate/rot/d",
            json!({"grace_period_seconds": 5}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(
        version_numbers(&versions(&c, "rot/d").await),
        vec![1, 2, 3],
        "rejected rotations write nothing"
    );
    assert_eq!(
        value_of(&c, "/v1/secrets/rot/d").await,
        ("d-3".to_owned(), 3)
    );

    // A missing secret cannot be rotated (and is not created by trying).
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rotate/rot/missing",
            json!({"value": "x", "grace_period_seconds": 2}),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(&get(&c, "/v1/secrets/rot/missing").await, 404, "not_found");
}

// ---------------------------------------------------------------- 6. expiry

async fn expired_secrets_answer_410_until_renewed(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let expires = Utc::now() + chrono::Duration::milliseconds(1200);
    let reply = put(
        &c,
        "exp/key",
        json!({
            "value": "exp-secret-value", "type": "api_key", "tier": "critical",
            "tags": {"team": "ops"}, "description": "short-lived",
            "expires_at": expires.to_rfc3339()
        }),
    )
    .await;
    assert_eq!(reply.json(), json!({"path": "exp/key", "version": 1}));
    if Utc::now() + chrono::Duration::milliseconds(200) < expires {
        assert_eq!(get(&c, "/v1/secrets/exp/key").await.status, 200);
    }
    tokio::time::sleep(
        (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300),
    )
    .await;

    let gone = get(&c, "/v1/secrets/exp/key").await;
    assert_error(&gone, 410, "expired");
    assert!(!String::from_utf8_lossy(&gone.body).contains("exp-secret-value"));
    assert_error(
        &get(&c, "/v1/secrets/exp/key?version=1").await,
        410,
        "expired",
    );
    // Expired is not deleted: listed with its metadata, HEAD finds it.
    let list = get(&c, "/v1/secrets?prefix=exp/").await.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let item = &items[0];
    assert_eq!(item["path"], "exp/key");
    assert_eq!(item["version"], 1);
    assert_eq!(item["tier"], "critical");
    assert_eq!(item["type"], "api_key");
    assert_eq!(item["tags"], json!({"team": "ops"}));
    assert_eq!(item["description"], "short-lived");
    assert_eq!(at(&item["expires_at"]), expires);
    assert!(item.get("value").is_none());
    let h = head(&c, "exp/key").await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    let batch = send(&c, Method::POST, "/v1/batch", json!({"paths": ["exp/key"]})).await;
    assert_eq!(batch.json()["secrets"], json!({}));
    assert_eq!(batch.json()["errors"]["exp/key"]["code"], "expired");

    // PATCH renews it without a new version, keeping the other metadata.
    let renewed_to = Utc::now() + chrono::Duration::hours(1);
    let reply = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"expires_at": renewed_to.to_rfc3339()}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(at(&reply.json()["expires_at"]), renewed_to);
    assert!(reply.json().get("value").is_none());
    let secret = get(&c, "/v1/secrets/exp/key").await;
    assert_eq!(secret.status, 200, "{:?}", secret.json());
    let secret = secret.json();
    assert_eq!(
        (secret["value"].as_str(), secret["version"].as_u64()),
        (Some("exp-secret-value"), Some(1))
    );
    assert_eq!(at(&secret["expires_at"]), renewed_to);
    assert_eq!(
        (secret["tier"].as_str(), secret["type"].as_str()),
        (Some("critical"), Some("api_key"))
    );
    assert_eq!(secret["tags"], json!({"team": "ops"}));
    assert_eq!(version_numbers(&versions(&c, "exp/key").await), vec![1]);

    // `expires_at: null` removes the expiry; a PATCH without it leaves it alone.
    let reply = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"expires_at": null}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert!(reply.json()["expires_at"].is_null(), "{}", reply.json());
    assert!(get(&c, "/v1/secrets/exp/key").await.json()["expires_at"].is_null());
    let later = Utc::now() + chrono::Duration::days(2);
    send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"expires_at": later.to_rfc3339()}),
    )
    .await;
    let reply = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"description": "renewed"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(at(&reply.json()["expires_at"]), later);
    assert_eq!(reply.json()["description"], "renewed");

    // Expired again (a past expires_at), then a new PUT renews it.
    let past = Utc::now() - chrono::Duration::seconds(1);
    let reply = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"expires_at": past.to_rfc3339()}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_error(&get(&c, "/v1/secrets/exp/key").await, 410, "expired");
    assert_eq!(put_value(&c, "exp/key", "exp-secret-value-2").await, 2);
    let secret = get(&c, "/v1/secrets/exp/key").await.json();
    assert_eq!(secret["value"], "exp-secret-value-2");
    assert_eq!(secret["version"], 2);
    assert!(secret["expires_at"].is_null());
    assert_eq!(secret["tier"], "critical", "PUT keeps unnamed metadata");
    // The renewal is version 2's: version 1 keeps the expiry it was retired with.
    assert_error(
        &get(&c, "/v1/secrets/exp/key?version=1").await,
        410,
        "expired",
    );

    // PATCH errors.
    assert_error(
        &send(
            &c,
            Method::PATCH,
            "/v1/secrets/exp/none",
            json!({"expires_at": null}),
        )
        .await,
        404,
        "not_found",
    );
    let bad = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"expires_at": "tomorrow"}),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    assert!(message(&bad).contains("expires_at"), "{}", message(&bad));
    let bad = send(
        &c,
        Method::PATCH,
        "/v1/secrets/exp/key",
        json!({"value": "patch-cannot-write-values"}),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    assert_eq!(
        value_of(&c, "/v1/secrets/exp/key").await,
        ("exp-secret-value-2".to_owned(), 2)
    );
}

// ---------------------------------------------------------------- 8. CLI

async fn cli_lifecycle_commands(backend: Backend) {
    let env = TestEnv::start(backend);
    let s = env.sidecar.socket.clone();
    let run = |args: &[&str]| av(&s, args);

    for (value, n) in [("cli-v1", 1), ("cli-v2", 2)] {
        let out = run(&["put", "cli/key", value]);
        assert_exit(&out, 0, "put");
        assert_eq!(out_text(&out).0, format!("cli/key version {n}\n"));
    }
    let out = run(&["versions", "cli/key"]);
    assert_exit(&out, 0, "versions");
    let lines: Vec<Vec<String>> = out_text(&out)
        .0
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 3, "a header and two versions: {lines:?}");
    assert_eq!(lines[0], ["VERSION", "CREATED", "ACTIVE", "EXPIRES"]);
    assert_eq!((lines[1][0].as_str(), lines[1][2].as_str()), ("1", "no"));
    at(&json!(lines[1][1]));
    assert_eq!((lines[2][0].as_str(), lines[2][2].as_str()), ("2", "yes"));

    let out = run(&["get", "cli/key", "--version", "1"]);
    assert_exit(&out, 0, "get --version 1");
    assert_eq!(out_text(&out).0, "cli-v1\n");

    let out = run(&["rollback", "cli/key", "1"]);
    assert_exit(&out, 0, "rollback");
    assert_eq!(out_text(&out).0, "cli/key version 1 is active\n");
    assert_eq!(out_text(&run(&["get", "cli/key"])).0, "cli-v1\n");
    let out = run(&["rollback", "cli/key", "9"]);
    assert_exit(&out, 3, "rollback to a missing version");
    assert!(
        out_text(&out).1.contains("not_found"),
        "{}",
        out_text(&out).1
    );
    assert!(out_text(&out).0.is_empty());
    assert_exit(
        &run(&["rollback", "cli/key", "0"]),
        2,
        "rollback 0 (bad input)",
    );
    assert_exit(&run(&["rollback", "cli/key", "x"]), 2, "rollback x (usage)");

    let before = Utc::now();
    let out = run(&["rotate", "cli/key", "cli-v3", "--grace", "1h"]);
    let after = Utc::now();
    assert_exit(&out, 0, "rotate");
    let stdout = out_text(&out).0;
    let until = stdout
        .trim_end()
        .strip_prefix("cli/key version 3 is active; version 1 readable until ")
        .unwrap_or_else(|| panic!("rotate printed {stdout:?}"));
    let hour = chrono::Duration::hours(1);
    assert_between(
        at(&json!(until)),
        before + hour,
        after + hour,
        "rotate --grace 1h",
    );
    assert_eq!(out_text(&run(&["get", "cli/key"])).0, "cli-v3\n");
    assert_eq!(
        out_text(&run(&["get", "cli/key", "--version", "1"])).0,
        "cli-v1\n"
    );
    let versions_out = out_text(&run(&["versions", "cli/key"])).0;
    let row = |n: usize| -> Vec<&str> {
        versions_out
            .lines()
            .nth(n)
            .unwrap_or("")
            .split_whitespace()
            .collect()
    };
    assert_eq!(row(1)[0], "1", "{versions_out}");
    assert_eq!(row(1)[3], until, "{versions_out}");
    assert_eq!((row(3)[0], row(3)[2]), ("3", "yes"), "{versions_out}");
    assert_exit(
        &run(&["rotate", "cli/none", "x", "--grace", "1h"]),
        3,
        "rotate a missing secret",
    );
    assert_exit(
        &run(&["rotate", "cli/key", "x", "--grace", "400days"]),
        2,
        "rotate with a grace over a year (bad input)",
    );

    // put --expires-in, update --expires-in / --no-expiry.
    let out = run(&["put", "cli/exp", "cli-exp-value", "--expires-in", "30d"]);
    assert_exit(&out, 0, "put --expires-in");
    assert_eq!(out_text(&out).0, "cli/exp version 1\n");
    let secret: Value = serde_json::from_slice(&run(&["get", "cli/exp", "--json"]).stdout).unwrap();
    let in_30d = at(&secret["expires_at"]) - Utc::now();
    assert!(
        (in_30d - chrono::Duration::days(30)).num_seconds().abs() < 60,
        "{in_30d}"
    );
    let out = run(&["update", "cli/exp", "--expires-in", "7d"]);
    assert_exit(&out, 0, "update --expires-in");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("update prints JSON");
    let in_7d = at(&meta["expires_at"]) - Utc::now();
    assert!(
        (in_7d - chrono::Duration::days(7)).num_seconds().abs() < 60,
        "{in_7d}"
    );
    assert_eq!(meta["version"], 1);
    assert!(meta.get("value").is_none());
    let out = run(&["update", "cli/exp", "--no-expiry"]);
    assert_exit(&out, 0, "update --no-expiry");
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(meta["expires_at"].is_null(), "{meta}");
    assert_exit(
        &run(&["update", "cli/exp", "--no-expiry", "--expires-in", "1d"]),
        2,
        "--no-expiry conflicts with --expires-in",
    );
    assert_exit(
        &run(&["update", "cli/none", "--no-expiry"]),
        3,
        "update a missing secret",
    );

    // Expired: exit 7, and renewal brings it back.
    let out = run(&["put", "cli/gone", "cli-gone-value", "--expires-in", "1s"]);
    assert_exit(&out, 0, "put --expires-in 1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = run(&["get", "cli/gone"]);
    assert_exit(&out, 7, "get an expired secret");
    let (stdout, stderr) = out_text(&out);
    assert!(stdout.is_empty() && stderr.contains("expired"), "{stderr}");
    assert!(!stderr.contains("cli-gone-value"));
    assert_exit(
        &run(&["update", "cli/gone", "--expires-in", "1h"]),
        0,
        "renew",
    );
    assert_eq!(out_text(&run(&["get", "cli/gone"])).0, "cli-gone-value\n");

    assert_exit(&run(&["get", "cli/missing"]), 3, "get a missing secret");
    assert_exit(
        &run(&["get", "cli/key", "--version", "99"]),
        3,
        "get a missing version",
    );
    assert_exit(
        &run(&["versions", "cli/missing"]),
        3,
        "versions of a missing secret",
    );
    let out = run(&["put", "cli/key", "cas-fail", "--cas", "1"]);
    assert_exit(&out, 6, "put --cas mismatch");
}

/// A rotation never lets the version it replaces outlive the secret's own
/// `expires_at`: the grace is capped, as it already is by the version's own expiry.
async fn rotation_does_not_extend_an_expiring_secret(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let expires = Utc::now() + chrono::Duration::seconds(2);
    let reply = put(
        &c,
        "rx/key",
        json!({"value": "rx-old-value", "expires_at": expires.to_rfc3339()}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let reply = send(
        &c,
        Method::POST,
        "/v1/rotate/rx/key",
        json!({"value": "rx-new-value", "grace_period_seconds": 3600}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let body = reply.json();
    assert_eq!(
        (body["new_version"].as_u64(), body["old_version"].as_u64()),
        (Some(2), Some(1))
    );
    // The new write carries no expiry, so the secret itself is renewed.
    assert_eq!(
        value_of(&c, "/v1/secrets/rx/key").await,
        ("rx-new-value".to_owned(), 2)
    );
    tokio::time::sleep(
        (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500),
    )
    .await;
    let old = get(&c, "/v1/secrets/rx/key?version=1").await;
    assert_eq!(
        old.status,
        410,
        "version 1 was written to expire at {expires}, but after a rotation with a 1 h grace it \
         still reads (rotate answered old_expires_at {}): {:?}",
        body["old_expires_at"],
        old.json()
    );
    assert!(
        at(&body["old_expires_at"]) <= expires,
        "old_expires_at {} is later than the secret's expires_at {expires}",
        body["old_expires_at"]
    );
}

/// The expiry scan pages through every secret, not just the first page.
async fn expiry_scan_reaches_past_the_first_page(backend: Backend) {
    let hook = Webhook::start().await;
    let url = hook.url();
    let env = TestEnv::start_with(
        backend,
        &["--expiry-webhook", &url, "--expiry-check-interval", "200ms"],
    );
    let c = env.client();
    let dotenv: String = (0..450).map(|i| format!("V{i:03}=bulk-{i}\n")).collect();
    let reply = send(
        &c,
        Method::POST,
        "/v1/import",
        json!({"dotenv": dotenv, "namespace": "m/bulk"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["created"], 450);
    let expires = Utc::now() + chrono::Duration::days(2);
    for path in ["a/early", "zz/late"] {
        let reply = put(
            &c,
            path,
            json!({"value": "scan-value", "expires_at": expires.to_rfc3339()}),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hook.received().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paths: Vec<(String, String)> = hook
        .received()
        .iter()
        .map(|(_, _, body)| {
            let b: Value = serde_json::from_str(body).unwrap();
            (
                b["path"].as_str().unwrap().to_owned(),
                b["window"].as_str().unwrap().to_owned(),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        paths,
        vec![
            ("a/early".to_owned(), "7d".to_owned()),
            ("zz/late".to_owned(), "7d".to_owned())
        ]
    );
    assert_eq!(hook.received().len(), 2, "one warning each");
}

/// `expires_at` belongs to the write: a rollback brings back the expiry of
/// the version it activates, and an expired version cannot come back.
async fn rollback_keeps_each_versions_own_expiry(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    let t1 = Utc::now() + chrono::Duration::hours(1);
    put(
        &c,
        "rbx/key",
        json!({"value": "rbx-1", "expires_at": t1.to_rfc3339()}),
    )
    .await;
    assert_eq!(put_value(&c, "rbx/key", "rbx-2").await, 2);
    assert!(get(&c, "/v1/secrets/rbx/key").await.json()["expires_at"].is_null());
    assert_eq!(
        value_of(&c, "/v1/secrets/rbx/key?version=1").await,
        ("rbx-1".to_owned(), 1)
    );

    let rolled = send(
        &c,
        Method::POST,
        "/v1/rollback/rbx/key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(rolled.json(), json!({"path": "rbx/key", "version": 1}));
    let s = get(&c, "/v1/secrets/rbx/key").await.json();
    assert_eq!(s["version"], 1);
    assert_eq!(
        at(&s["expires_at"]),
        t1,
        "version 1 comes back with its expiry"
    );
    send(
        &c,
        Method::POST,
        "/v1/rollback/rbx/key",
        json!({"version": 2}),
    )
    .await;
    let s = get(&c, "/v1/secrets/rbx/key").await.json();
    assert_eq!(s["version"], 2);
    assert!(s["expires_at"].is_null(), "version 2 never expired: {s}");

    // A version whose expiry passed stays expired, by number and for rollback.
    let soon = Utc::now() + chrono::Duration::milliseconds(800);
    put(
        &c,
        "rbx/key",
        json!({"value": "rbx-3", "expires_at": soon.to_rfc3339()}),
    )
    .await;
    assert_eq!(put_value(&c, "rbx/key", "rbx-4").await, 4);
    tokio::time::sleep(
        (soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300),
    )
    .await;
    assert_error(
        &get(&c, "/v1/secrets/rbx/key?version=3").await,
        410,
        "expired",
    );
    assert_error(
        &send(
            &c,
            Method::POST,
            "/v1/rollback/rbx/key",
            json!({"version": 3}),
        )
        .await,
        410,
        "expired",
    );
    assert_eq!(
        value_of(&c, "/v1/secrets/rbx/key").await,
        ("rbx-4".to_owned(), 4)
    );

    // Rolling back to the version that is already active changes nothing.
    send(
        &c,
        Method::POST,
        "/v1/rollback/rbx/key",
        json!({"version": 1}),
    )
    .await;
    let reply = send(
        &c,
        Method::POST,
        "/v1/rollback/rbx/key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(reply.json(), json!({"path": "rbx/key", "version": 1}));
    let s = get(&c, "/v1/secrets/rbx/key").await.json();
    assert_eq!(
        (
            s["version"].as_u64(),
            s["expires_at"].as_str().map(|_| at(&s["expires_at"]))
        ),
        (Some(1), Some(t1)),
        "a rollback to the active version must keep its expiry: {s}"
    );
}

/// History retention (20 versions, `dev`'s default) drops the oldest
/// versions beyond the count, but never the one a write replaces nor one in a
/// rotation's grace, even when that one is the oldest of all.
async fn retention_drops_the_oldest_but_skips_a_version_in_its_grace(backend: Backend) {
    let env = TestEnv::start(backend);
    let c = env.client();
    for n in 1..=20 {
        assert_eq!(put_value(&c, "hist/key", &format!("hist-{n}")).await, n);
    }
    let rollback = send(
        &c,
        Method::POST,
        "/v1/rollback/hist/key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(rollback.status, 200, "{:?}", rollback.json());
    // Version 1 is replaced, so kept; 2 is the oldest that may go.
    let rotate = json!({"value": "hist-21", "grace_period_seconds": 3600});
    let rotated = send(&c, Method::POST, "/v1/rotate/hist/key", rotate).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    assert_eq!(
        version_numbers(&versions(&c, "hist/key").await),
        [1].into_iter().chain(3..=21).collect::<Vec<_>>()
    );
    // Version 1, the oldest, is in its grace: 3 and then 4 go instead.
    for n in 22..=23 {
        assert_eq!(put_value(&c, "hist/key", &format!("hist-{n}")).await, n);
    }
    assert_eq!(
        version_numbers(&versions(&c, "hist/key").await),
        [1].into_iter().chain(5..=23).collect::<Vec<_>>()
    );
    assert_eq!(
        value_of(&c, "/v1/secrets/hist/key?version=1").await,
        ("hist-1".to_owned(), 1)
    );
}

on_both_backends!(
    versions_are_listed_and_readable_by_number,
    retention_drops_the_oldest_but_skips_a_version_in_its_grace,
    rollback_reactivates_an_old_version,
    cas_writes_only_on_the_active_version,
    rotation_keeps_the_old_version_for_its_grace,
    rotation_default_grace_and_bounds,
    expired_secrets_answer_410_until_renewed,
    cli_lifecycle_commands,
    rotation_does_not_extend_an_expiring_secret,
    expiry_scan_reaches_past_the_first_page,
    rollback_keeps_each_versions_own_expiry,
);

// ---------------------------------------------------------------- 4. concurrency (Redis)

/// Two sidecars × 4 client tasks × 10 PUTs to one path: every PUT gets its
/// own version, 1..=80 with no gap or duplicate, and every kept version holds
/// the value whose PUT was given that number, read through either sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_sidecars_get_distinct_versions() {
    const SIDECARS: usize = 2;
    const TASKS: usize = 4;
    const PUTS: usize = 10;
    const TOTAL: u64 = (SIDECARS * TASKS * PUTS) as u64;
    // `dev` keeps the default history of 20 versions per secret.
    const KEPT: u64 = 20;

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path(), &[]);
    let clients = [a.client(), b.client()];

    let mut tasks = Vec::new();
    for (s, client) in clients.iter().enumerate() {
        for t in 0..TASKS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for i in 0..PUTS {
                    let value = format!("writer-{s}-{t}-{i}");
                    let reply = put(&client, "race/key", json!({ "value": value })).await;
                    results.push((value, reply.status, reply.json()));
                }
                results
            }));
        }
    }
    let mut by_version: BTreeMap<u64, String> = BTreeMap::new();
    let mut failures = Vec::new();
    for task in tasks {
        for (value, status, body) in task.await.unwrap() {
            match (status, body["version"].as_u64()) {
                (200, Some(v)) => {
                    assert_eq!(body["path"], "race/key");
                    if let Some(other) = by_version.insert(v, value.clone()) {
                        failures.push(format!("version {v} given to both {other} and {value}"));
                    }
                }
                _ => failures.push(format!("PUT of {value} answered {status} {body}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>()
    );

    // History keeps the newest KEPT versions; each holds its writer's value
    // through either sidecar, and the active one is the last.
    let list = versions(&clients[0], "race/key").await;
    assert_eq!(
        version_numbers(&list),
        (TOTAL - KEPT + 1..=TOTAL).collect::<Vec<_>>()
    );
    assert_eq!(active_versions(&list), vec![TOTAL]);
    for c in &clients {
        for (&v, value) in by_version.range(TOTAL - KEPT + 1..) {
            assert_eq!(
                value_of(c, &format!("/v1/secrets/race/key?version={v}")).await,
                (value.clone(), v)
            );
        }
        assert_eq!(
            value_of(c, "/v1/secrets/race/key").await,
            (by_version[&TOTAL].clone(), TOTAL)
        );
        for v in [1, TOTAL - KEPT] {
            assert_error(
                &get(c, &format!("/v1/secrets/race/key?version={v}")).await,
                404,
                "not_found",
            );
        }
    }
}

/// Below the history limit, every version written concurrently stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_every_version_below_the_history_limit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path(), &[]);
    let clients = [a.client(), b.client()];
    let mut tasks = Vec::new();
    for (s, client) in clients.iter().enumerate() {
        for t in 0..2 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..5 {
                    let value = format!("small-{s}-{t}-{i}");
                    let reply = put(&client, "race/small", json!({ "value": value })).await;
                    out.push((value, reply.status, reply.json()));
                }
                out
            }));
        }
    }
    let mut by_version = BTreeMap::new();
    for task in tasks {
        for (value, status, body) in task.await.unwrap() {
            assert_eq!(status, 200, "{value}: {body}");
            let v = body["version"].as_u64().unwrap();
            assert!(by_version.insert(v, value).is_none(), "version {v} twice");
        }
    }
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        version_numbers(&versions(&clients[1], "race/small").await),
        (1..=20).collect::<Vec<_>>()
    );
    for c in &clients {
        for (&v, value) in &by_version {
            assert_eq!(
                value_of(c, &format!("/v1/secrets/race/small?version={v}")).await,
                (value.clone(), v)
            );
        }
    }
}

/// Concurrent rotations from two sidecars: each gets its own new version, the
/// version it replaced is the one just before it, and every replaced version
/// keeps its grace (so history retention cannot drop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_two_sidecars() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path(), &[]);
    let clients = [a.client(), b.client()];
    put_value(&clients[0], "race/rot", "rot-0").await;
    let mut tasks = Vec::new();
    for (s, client) in clients.iter().enumerate() {
        for t in 0..2 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..5 {
                    let value = format!("rot-{s}-{t}-{i}");
                    let reply = send(
                        &client,
                        Method::POST,
                        "/v1/rotate/race/rot",
                        json!({"value": value, "grace_period_seconds": 3600}),
                    )
                    .await;
                    out.push((value, reply.status, reply.json()));
                }
                out
            }));
        }
    }
    let mut by_version = BTreeMap::new();
    for task in tasks {
        for (value, status, body) in task.await.unwrap() {
            assert_eq!(status, 200, "{value}: {body}");
            let new = body["new_version"].as_u64().unwrap();
            assert_eq!(body["old_version"].as_u64(), Some(new - 1), "{body}");
            assert!(
                by_version.insert(new, value).is_none(),
                "version {new} twice"
            );
        }
    }
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (2..=21).collect::<Vec<_>>()
    );
    let list = versions(&clients[1], "race/rot").await;
    assert_eq!(version_numbers(&list), (1..=21).collect::<Vec<_>>());
    assert_eq!(active_versions(&list), vec![21]);
    for v in &list[..20] {
        assert!(
            v["expires_at"].is_string(),
            "replaced versions keep a grace: {v}"
        );
    }
    for c in &clients {
        for (&v, value) in &by_version {
            assert_eq!(
                value_of(c, &format!("/v1/secrets/race/rot?version={v}")).await,
                (value.clone(), v)
            );
        }
        assert_eq!(
            value_of(c, "/v1/secrets/race/rot?version=1").await,
            ("rot-0".to_owned(), 1)
        );
    }
}

// ---------------------------------------------------------------- 7. expiry warnings (Redis)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warnings_go_out_once_per_window_across_sidecars() {
    let hook = Webhook::start().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = hook.url();
    let (a, b) = two_sidecars(
        &redis,
        dir.path(),
        &["--expiry-webhook", &url, "--expiry-check-interval", "200ms"],
    );
    let now = Utc::now();
    let secrets = [
        (
            "warn/six-days",
            "warn-value-6d-q8Zt",
            chrono::Duration::days(6),
        ),
        (
            "warn/twelve-hours",
            "warn-value-12h-K3pw",
            chrono::Duration::hours(12),
        ),
        (
            "warn/thirty-days",
            "warn-value-30d-Lm7x",
            chrono::Duration::days(30),
        ),
    ];
    let mut expiries = BTreeMap::new();
    for (i, (path, value, ttl)) in secrets.iter().enumerate() {
        let expires = now + *ttl;
        let c = if i % 2 == 0 { a.client() } else { b.client() };
        let reply = put(
            &c,
            path,
            json!({"value": value, "expires_at": expires.to_rfc3339()}),
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json());
        expiries.insert(path.to_string(), expires);
    }
    // An unexpiring secret and an already-expired one get no warning either.
    put_value(&a.client(), "warn/forever", "warn-value-forever").await;
    put(
        &a.client(),
        "warn/past",
        json!({"value": "warn-value-past", "expires_at": (now - chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await;

    // Wait for both warnings, then for many more check intervals on both sidecars.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hook.received().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let received = hook.received();
    let mut warnings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (method, path, body) in &received {
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/hook"));
        for (_, value, _) in &secrets {
            assert!(
                !body.contains(value),
                "webhook body carries a value: {body}"
            );
        }
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        warnings
            .entry(body["path"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(body);
    }
    assert_eq!(
        warnings.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["warn/six-days", "warn/twelve-hours"],
        "{received:#?}"
    );
    for (path, window) in [("warn/six-days", "7d"), ("warn/twelve-hours", "1d")] {
        let got = &warnings[path];
        assert_eq!(got.len(), 1, "exactly one warning for {path}: {got:#?}");
        let w = &got[0];
        assert_eq!(w["event"], "secret.expiring");
        assert_eq!(w["tenant"], "dev");
        assert_eq!(w["window"], window);
        assert_eq!(at(&w["expires_at"]), expiries[path]);
        let keys: BTreeSet<&str> = w.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["event", "tenant", "path", "expires_at", "window"])
        );
    }

    // The sidecars logged each warning once between them, and no value at all.
    let logs = [a.logs(), b.logs()];
    let logged = logs
        .iter()
        .map(|l| l.matches("secret expires soon").count())
        .sum::<usize>();
    assert_eq!(logged, 2, "one log line per warning across both sidecars");
    for log in &logs {
        for value in secrets
            .iter()
            .map(|s| s.1)
            .chain(["warn-value-forever", "warn-value-past"])
        {
            assert!(!log.contains(value), "a sidecar logged {value}");
        }
    }
}
