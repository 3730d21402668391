//! A known secret value, written and read many ways, must not appear in any
//! file the sidecar or Redis writes, nor in the sidecar's logs at debug level.

mod support;

use std::path::Path;

use base64::Engine;
use hyper::Method;
use serde_json::json;
use support::{get, put, raw, send, Backend, TestEnv};

const CANARY: &str = "sk-canary-7f3e9a1b2c4d5e6f";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The needles: the value itself and its base64 forms (standard and URL-safe).
fn needles() -> Vec<Vec<u8>> {
    vec![
        CANARY.as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(CANARY)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(CANARY)
            .into_bytes(),
    ]
}

fn assert_absent(dirs: &[&Path]) -> usize {
    let mut files = Vec::new();
    for dir in dirs {
        files_under(dir, &mut files);
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        for needle in needles() {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "secret value found in {}",
                file.display()
            );
        }
    }
    files.len()
}

async fn exercise(env: &TestEnv) {
    let c = env.client();
    for i in 0..3 {
        let reply = put(
            &c,
            &format!("canary/{i}"),
            json!({"value": CANARY, "type": "api_key"}),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    for _ in 0..100 {
        assert_eq!(
            get(&c, "/v1/secrets/canary/0").await.json()["value"],
            CANARY
        );
    }
    assert_eq!(get(&c, "/v1/secrets/canary/1?version=1").await.status, 200);
    let batch = send(
        &c,
        Method::POST,
        "/v1/batch",
        json!({"paths": ["canary/0", "canary/2", "nope"]}),
    )
    .await;
    assert_eq!(batch.json()["secrets"]["canary/2"], CANARY);
    assert_eq!(get(&c, "/v1/secrets?prefix=canary/").await.status, 200);
    // Rejected writes that carry the value must not echo it anywhere either.
    let bad_tier = format!(r#"{{"value": "{CANARY}", "tier": "gold"}}"#);
    let reply = raw(
        &c,
        Method::PUT,
        "/v1/secrets/canary/bad",
        bad_tier.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(!String::from_utf8_lossy(&reply.body).contains(CANARY));
    let wrong_type = format!(r#"{{"value": "v", "cas": "{CANARY}"}}"#);
    let reply = raw(
        &c,
        Method::PUT,
        "/v1/secrets/canary/bad",
        wrong_type.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(!String::from_utf8_lossy(&reply.body).contains(CANARY));
    let reply = raw(
        &c,
        Method::PUT,
        "/v1/secrets/bad//path",
        bad_tier.as_bytes(),
    )
    .await;
    assert!(!String::from_utf8_lossy(&reply.body).contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_in_embedded_store_or_logs() {
    let mut env = TestEnv::start(Backend::Embedded);
    exercise(&env).await;
    env.sidecar.stop();
    assert!(
        env.sidecar.logs().contains("/v1/secrets/canary/0"),
        "logs were captured at debug level"
    );
    let scanned = assert_absent(&[env.dir.path()]);
    assert!(scanned >= 3, "store, keyring and log were scanned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_in_redis_files_keys_or_logs() {
    let mut env = TestEnv::start(Backend::Redis);
    exercise(&env).await;
    env.sidecar.stop();
    let redis = env.redis.as_ref().unwrap();
    let mut conn = redis.connection();
    // Every value Redis holds, as Redis returns it.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("av:{dev}:")), "{keys:?}");
    for key in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut conn).unwrap();
        for needle in needles() {
            assert!(
                !dump.windows(needle.len()).any(|w| w == needle.as_slice()),
                "value in {key}"
            );
        }
    }
    // And every file it persisted: the AOF, and an RDB snapshot forced now.
    let _: () = redis::cmd("SAVE").query(&mut conn).unwrap();
    let scanned = assert_absent(&[env.dir.path(), redis.dir.path()]);
    assert!(
        scanned >= 4,
        "AOF, RDB, sidecar log and keyring were scanned"
    );
    assert!(redis.dir.path().join("dump.rdb").exists());
}
