//! Safe retries on real Redis: racing writers never fail, and a write retried
//! under the same `Idempotency-Key` (on any sidecar, after any 503) is
//! written once and answered with its first answer.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agentvault::client::Client;
use hyper::Method;
use serde_json::json;
use support::{assert_error, get, RedisServer, Shared, Sidecar, BIN};

/// Two sidecars of the same agent on one Redis and one keyring.
fn two_sidecars(redis: &RedisServer, dir: &std::path::Path) -> (Sidecar, Sidecar) {
    let keyring = dir.join("keyring.json");
    let out = std::process::Command::new(BIN)
        .arg("keygen")
        .arg(&keyring)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    let (url, keyring) = (redis.url(), keyring.display().to_string());
    let start = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        Sidecar::dev(&d, &["--redis-url", &url, "--keyring", &keyring])
    };
    (start("a"), start("b"))
}

/// A PUT of `value` at `path` under `key`.
async fn keyed_put(
    client: &Client,
    path: &str,
    key: &str,
    value: &str,
) -> (u16, serde_json::Value) {
    let body = json!({ "value": value }).to_string().into_bytes();
    let reply = client
        .request_with(
            Method::PUT,
            &format!("/v1/secrets/{path}"),
            Some(body),
            &[("idempotency-key", key)],
        )
        .await
        .expect("request");
    (reply.status, reply.json())
}

/// The stored version numbers of `path`. A read may meet a connection that
/// Redis's restart broke (503, retried like any client would).
async fn version_numbers(client: &Client, path: &str) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let reply = get(client, &format!("/v1/versions/{path}")).await;
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let mut numbers: Vec<u64> = reply
        .json()
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_u64().expect("a number"))
        .collect();
    numbers.sort_unstable();
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writers_racing_on_one_path_on_two_sidecars_all_succeed_with_distinct_versions() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path());
    let clients = [a.client(), b.client()];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("racer-{i}");
            let reply = support::put(&client, "hot/key", json!({ "value": value })).await;
            (value, reply.status, reply.json())
        }));
    }
    let mut versions = BTreeSet::new();
    for task in tasks {
        let (value, status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{value}: {body}");
        let version = body["version"].as_u64().expect("a version");
        assert!(versions.insert(version), "version {version} given twice");
    }
    assert_eq!(versions, (1..=50).collect::<BTreeSet<u64>>());
    // History keeps the newest 20 (dev's default) of them.
    let kept = version_numbers(&clients[0], "hot/key").await;
    assert_eq!(kept.last(), Some(&50));
    assert!(
        kept.len() >= 20 && kept.iter().all(|v| versions.contains(v)),
        "{kept:?}"
    );
    let active = get(&clients[1], "/v1/secrets/hot/key").await.json();
    assert_eq!(
        active["version"], 50,
        "the highest number is the active one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_put_returns_the_first_answer_on_any_sidecar_and_writes_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path());
    let (ca, cb) = (a.client(), b.client());
    support::put_value(&ca, "idem/key", "before").await;

    let (status, first) = keyed_put(&ca, "idem/key", "op-1", "the-value").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["version"], 2);
    // The same request again, on this sidecar and on the other one.
    for client in [&ca, &cb] {
        let (status, again) = keyed_put(client, "idem/key", "op-1", "the-value").await;
        assert_eq!((status, &again), (200, &first));
    }
    assert_eq!(version_numbers(&ca, "idem/key").await, vec![1, 2]);
    // Later writes are not affected by the replay.
    assert_eq!(support::put_value(&cb, "idem/key", "after").await, 3);

    // The same key for a different body (or path) is refused, without echoing the value.
    let reply = ca
        .request_with(
            Method::PUT,
            "/v1/secrets/idem/key",
            Some(json!({ "value": "another-value" }).to_string().into_bytes()),
            &[("idempotency-key", "op-1")],
        )
        .await
        .unwrap();
    assert_error(&reply, 422, "idempotency_key_reused");
    assert!(!String::from_utf8_lossy(&reply.body).contains("another-value"));
    let (status, _) = keyed_put(&ca, "idem/other", "op-1", "the-value").await;
    assert_eq!(status, 422);
    assert_eq!(version_numbers(&ca, "idem/key").await, vec![1, 2, 3]);

    // A malformed key is a 400, and nothing is written.
    let (status, body) = keyed_put(&ca, "idem/key", "has space", "v").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(version_numbers(&ca, "idem/key").await, vec![1, 2, 3]);

    // No plain digest of the value is stored with the key.
    let mut redis = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("av:*:idem:*")
        .query(&mut redis)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(":idem:op-1"), "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut redis).unwrap();
    assert!(
        ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "ttl {ttl}"
    );
    let stored: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut redis).unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("the-value"));
}

/// Writers keep retrying their own write under their own key while Redis is
/// killed (-9) and restarted under them: every write ends 200, and each
/// is stored exactly once whatever the 503s in between said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_retried_across_a_redis_kill_are_written_exactly_once() {
    let mut shared = Shared::new();
    let sidecar = shared.sidecar("acme", "bot", &[]);
    let client = sidecar.client();
    const WRITES: usize = 30;
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("write-{i}");
            let path = format!("kill/k{}", i % 5);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut unavailable = 0;
            loop {
                let (status, body) = keyed_put(&client, &path, &key, &format!("value-{i}")).await;
                match status {
                    200 => return (path, body["version"].as_u64().unwrap(), unavailable),
                    503 => unavailable += 1,
                    other => panic!("{key}: {other} {body}"),
                }
                assert!(Instant::now() < deadline, "{key} never succeeded");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }
    // Kill Redis while the writers are under way, then bring it back.
    support::wait_for("the first writes", Duration::from_secs(20), || {
        let mut c = shared.redis.connection();
        redis::cmd("EXISTS")
            .arg("av:{acme}:s:kill/k0")
            .query::<i64>(&mut c)
            .unwrap_or(0)
            == 1
    });
    shared.redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    shared.redis = shared.redis.restart();

    let mut answered = Vec::new();
    let mut retried_after_503 = 0;
    for task in tasks {
        let (path, version, unavailable) = task.await.unwrap();
        retried_after_503 += usize::from(unavailable > 0);
        answered.push((path, version));
    }
    // Every write's answer names a version that holds that write, and every
    // stored version belongs to exactly one write.
    let mut stored = 0;
    for k in 0..5 {
        let path = format!("kill/k{k}");
        let numbers = version_numbers(&client, &path).await;
        stored += numbers.len();
        let mut mine: Vec<u64> = answered
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, v)| *v)
            .collect();
        mine.sort_unstable();
        assert_eq!(numbers, mine, "{path}: stored versions vs. answered ones");
    }
    assert_eq!(stored, WRITES, "each write stored exactly once");
    eprintln!("{retried_after_503} of {WRITES} writes were retried after a 503");
}

/// A request under `key`: its status and JSON body (`null` for none).
async fn keyed(
    client: &Client,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
    key: &str,
) -> (u16, serde_json::Value) {
    let reply = client
        .request_with(
            method,
            uri,
            body.map(|b| b.to_string().into_bytes()),
            &[("idempotency-key", key)],
        )
        .await
        .expect("request");
    let json = match reply.body.is_empty() {
        true => serde_json::Value::Null,
        false => reply.json(),
    };
    (reply.status, json)
}

/// Every write of the contract honours `Idempotency-Key` as PUT does: the
/// retry, on the same or another sidecar, answers the first answer (status
/// and body) and changes nothing, even after later writes changed the
/// secret; the key with another request answers 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_retried_under_its_key_answers_once_on_any_sidecar() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sidecars(&redis, dir.path());
    let (ca, cb) = (a.client(), b.client());
    support::put_value(&ca, "w/x", "v1").await;
    support::put_value(&ca, "w/x", "v2").await;

    // Rotate: a retry does not rotate again.
    let rotate = Some(json!({ "value": "v3", "grace_period_seconds": 60 }));
    let first = keyed(&ca, Method::POST, "/v1/rotate/w/x", rotate.clone(), "rot-1").await;
    assert_eq!(
        (first.0, &first.1["new_version"]),
        (200, &json!(3)),
        "{}",
        first.1
    );
    for client in [&ca, &cb] {
        let again = keyed(
            client,
            Method::POST,
            "/v1/rotate/w/x",
            rotate.clone(),
            "rot-1",
        )
        .await;
        assert_eq!(again, first);
    }
    assert_eq!(version_numbers(&ca, "w/x").await, vec![1, 2, 3]);
    let other = Some(json!({ "value": "v9" }));
    let (status, body) = keyed(&cb, Method::POST, "/v1/rotate/w/x", other, "rot-1").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");

    // Rollback, then a later write: the retry answers the rollback and
    // leaves the later write active.
    let rollback = Some(json!({ "version": 1 }));
    let first = keyed(
        &ca,
        Method::POST,
        "/v1/rollback/w/x",
        rollback.clone(),
        "rb-1",
    )
    .await;
    assert_eq!(first, (200, json!({ "path": "w/x", "version": 1 })));
    assert_eq!(support::put_value(&ca, "w/x", "v4").await, 4);
    let again = keyed(&cb, Method::POST, "/v1/rollback/w/x", rollback, "rb-1").await;
    assert_eq!(again, first);
    assert_eq!(get(&cb, "/v1/secrets/w/x").await.json()["version"], 4);

    // PATCH: the retry answers the first metadata, not today's.
    let patch = Some(json!({ "description": "first" }));
    let first = keyed(
        &ca,
        Method::PATCH,
        "/v1/secrets/w/x",
        patch.clone(),
        "patch-1",
    )
    .await;
    assert_eq!((first.0, &first.1["description"]), (200, &json!("first")));
    let later = support::send(
        &ca,
        Method::PATCH,
        "/v1/secrets/w/x",
        json!({ "description": "later" }),
    )
    .await;
    assert_eq!(later.status, 200);
    assert_eq!(
        keyed(&cb, Method::PATCH, "/v1/secrets/w/x", patch, "patch-1").await,
        first
    );
    assert_eq!(
        get(&ca, "/v1/secrets/w/x").await.json()["description"],
        "later"
    );
    // `null` and a field left out are different requests.
    let clear = Some(json!({ "expires_at": null }));
    let (status, _) = keyed(&ca, Method::PATCH, "/v1/secrets/w/x", clear, "patch-2").await;
    assert_eq!(status, 200);
    let (status, _) = keyed(
        &cb,
        Method::PATCH,
        "/v1/secrets/w/x",
        Some(json!({})),
        "patch-2",
    )
    .await;
    assert_eq!(status, 422);

    // Import: the retry reports what the first did (created, not skipped).
    let import = Some(json!({ "dotenv": "A=1\nB=2\n", "namespace": "imp" }));
    let first = keyed(&ca, Method::POST, "/v1/import", import.clone(), "imp-1").await;
    assert_eq!(
        (first.0, &first.1["created"]),
        (200, &json!(2)),
        "{}",
        first.1
    );
    assert_eq!(
        keyed(&cb, Method::POST, "/v1/import", import, "imp-1").await,
        first
    );
    assert_eq!(version_numbers(&cb, "imp/A").await, vec![1]);
    // A key is bound to its route too.
    let (status, _) = keyed(&ca, Method::DELETE, "/v1/secrets/imp/A", None, "imp-1").await;
    assert_eq!(status, 422);

    // DELETE: the retry answers 204 again (not 404), and deletes nothing
    // written since.
    let first = keyed(&ca, Method::DELETE, "/v1/secrets/w/x", None, "del-1").await;
    assert_eq!(first, (204, serde_json::Value::Null));
    assert_eq!(
        keyed(&cb, Method::DELETE, "/v1/secrets/w/x", None, "del-1").await,
        first
    );
    support::put_value(&cb, "w/x", "reborn").await;
    assert_eq!(
        keyed(&ca, Method::DELETE, "/v1/secrets/w/x", None, "del-1").await,
        first
    );
    assert_eq!(get(&ca, "/v1/secrets/w/x").await.json()["value"], "reborn");
    // A delete of nothing keeps no answer: the key is still free.
    let (status, _) = keyed(&ca, Method::DELETE, "/v1/secrets/none/here", None, "del-2").await;
    assert_eq!(status, 404);
    let (status, _) = keyed(&ca, Method::DELETE, "/v1/secrets/w/x", None, "del-2").await;
    assert_eq!(status, 204);

    // Twins racing on two sidecars: both answer 204, whichever commits first.
    support::put_value(&ca, "w/race", "v").await;
    let (one, two) = tokio::join!(
        keyed(&ca, Method::DELETE, "/v1/secrets/w/race", None, "del-race"),
        keyed(&cb, Method::DELETE, "/v1/secrets/w/race", None, "del-race"),
    );
    assert_eq!((one.0, two.0), (204, 204), "{one:?} {two:?}");
}
