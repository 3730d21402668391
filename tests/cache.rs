//! The sealed-record cache: warm reads cost Redis nothing but the audit
//! append, a change on one sidecar is seen by another's next read once the
//! announcement arrived, a lost subscription never serves a stale record, and
//! the bounds hold. Store-level tests use `CachedStore` over real stores;
//! sidecar-level ones run real sidecars on one Redis (`support::Shared`).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentvault::crypto::Sealed;
use agentvault::model::{Grant, SecretRecord, SecretType, Tier, VersionRecord};
use agentvault::store::{
    CacheSettings, CacheTelemetry, CachedStore, Commit, EmbeddedStore, RedisStore, RedisTarget,
    Store,
};
use chrono::Utc;
use serde_json::json;
use support::{get, put_value, send, Shared};

const T: &str = "acme";

#[derive(Default)]
struct Counts {
    hits: AtomicUsize,
    misses: AtomicUsize,
    invalidations: AtomicUsize,
    evictions: AtomicUsize,
    resyncs: AtomicUsize,
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

impl CacheTelemetry for Counts {
    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }
    fn miss(&self) {
        self.misses.fetch_add(1, Ordering::SeqCst);
    }
    fn invalidated(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }
    fn evicted(&self, entries: usize) {
        self.evictions.fetch_add(entries, Ordering::SeqCst);
    }
    fn resynced(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
    fn size(&self, entries: usize, bytes: usize) {
        self.entries.store(entries, Ordering::SeqCst);
        self.bytes.store(bytes, Ordering::SeqCst);
    }
}

impl Counts {
    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

fn record(path: &str, n: u64) -> SecretRecord {
    let now = Utc::now();
    SecretRecord {
        tenant: T.to_owned(),
        path: path.to_owned(),
        active_version: n,
        latest_version: n,
        secret_type: SecretType::ApiKey,
        tier: Tier::Standard,
        description: None,
        tags: BTreeMap::new(),
        scope: None,
        owner: "spiffe://td/agent/acme/bot".into(),
        created_at: now,
        updated_at: now,
        expires_at: None,
        retired_expiry: BTreeMap::new(),
        revision: String::new(),
    }
}

fn version(n: u64, size: usize) -> VersionRecord {
    VersionRecord {
        version: n,
        created_at: Utc::now(),
        sealed: Sealed {
            kek_id: "k1".into(),
            wrapped_dek: vec![n as u8; 60],
            ciphertext: vec![n as u8; size],
        },
        expires_at: None,
    }
}

async fn write(store: &dyn Store, path: &str, n: u64) {
    let commit = Commit {
        record: record(path, n),
        versions: vec![version(n, 40)],
        expected_latest: n - 1,
        prune: vec![],
    };
    store.commit(T, &commit).await.unwrap();
}

async fn active(store: &dyn Store, path: &str) -> Option<u64> {
    store
        .read(T, path, None)
        .await
        .unwrap()
        .and_then(|(_, v)| v.map(|v| v.version))
}

/// Waits until `ready` holds, failing after 10 s.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn cached(inner: Arc<dyn Store>, settings: CacheSettings) -> (CachedStore, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let cache = CachedStore::new(inner, settings, counts.clone());
    cache.watch(T);
    (cache, counts)
}

/// Another writer's change is invisible to the cache until announced, then
/// the very next read sees it.
async fn another_writers_change_reaches_the_next_read(
    inner: Arc<dyn Store>,
    writer: Arc<dyn Store>,
) {
    let (cache, counts) = cached(inner, CacheSettings::default());
    until("the subscription", || cache.is_live(T)).await;
    let seen = Counts::get(&counts.invalidations);
    write(&*writer, "p", 1).await;
    // The first write's announcement arrives on its own time; once it has,
    // nothing else can invalidate what the next read caches.
    until("the announcement", || {
        Counts::get(&counts.invalidations) > seen
    })
    .await;
    assert_eq!(active(&cache, "p").await, Some(1));
    let misses = Counts::get(&counts.misses);
    for _ in 0..10 {
        assert_eq!(active(&cache, "p").await, Some(1));
    }
    assert_eq!(
        Counts::get(&counts.misses),
        misses,
        "warm reads stay in memory"
    );
    assert_eq!(Counts::get(&counts.hits), 10);

    for n in 2..=4 {
        let seen = Counts::get(&counts.invalidations);
        write(&*writer, "p", n).await;
        until("the announcement", || {
            Counts::get(&counts.invalidations) > seen
        })
        .await;
        assert_eq!(
            active(&cache, "p").await,
            Some(n),
            "the next read sees version {n}"
        );
    }
    let seen = Counts::get(&counts.invalidations);
    assert!(writer.delete(T, "p").await.unwrap());
    until("the announcement", || {
        Counts::get(&counts.invalidations) > seen
    })
    .await;
    assert_eq!(active(&cache, "p").await, None, "a deleted secret is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_another_sidecars_change_reaches_the_next_read() {
    let server = support::RedisServer::start();
    let target = RedisTarget::Standalone(server.url());
    another_writers_change_reaches_the_next_read(
        Arc::new(RedisStore::new(target.clone())),
        Arc::new(RedisStore::new(target)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_another_writers_change_reaches_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    another_writers_change_reaches_the_next_read(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_seen_at_once_and_grants_are_cached_until_changed() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let (cache, counts) = cached(inner, CacheSettings::default());
    until("the subscription", || cache.is_live(T)).await;
    let start = Counts::get(&counts.invalidations);
    for n in 1..=3 {
        write(&cache, "own", n).await;
        assert_eq!(active(&cache, "own").await, Some(n));
        assert_eq!(active(&cache, "own").await, Some(n));
    }
    // Each write invalidates at once and again when its announcement comes
    // back; a late announcement of these would also drop the grants below.
    until("the writes' announcements", || {
        Counts::get(&counts.invalidations) >= start + 6
    })
    .await;
    let grant = Grant {
        grant_id: "g1".into(),
        agent_id: "spiffe://td/agent/acme/other".into(),
        path: "own".into(),
        created_at: Utc::now(),
        created_by: "spiffe://td/agent/acme/bot".into(),
        role: None,
    };
    assert!(cache.grants(T).await.unwrap().is_empty());
    let seen = Counts::get(&counts.invalidations);
    cache.put_grant(T, &grant).await.unwrap();
    // The write invalidates at once, and again when its own announcement
    // comes back; only after both is the next fill safe from being dropped.
    until("the grant's announcement", || {
        Counts::get(&counts.invalidations) >= seen + 2
    })
    .await;
    assert_eq!(cache.grants(T).await.unwrap(), std::slice::from_ref(&grant));
    let hits = Counts::get(&counts.hits);
    assert_eq!(cache.grants(T).await.unwrap(), [grant]);
    assert_eq!(
        Counts::get(&counts.hits),
        hits + 1,
        "grants come from memory"
    );
    assert!(cache.delete(T, "own").await.unwrap());
    assert!(
        cache.grants(T).await.unwrap().is_empty(),
        "grants go with their secret"
    );
    assert_eq!(active(&cache, "own").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_never_serves_a_stale_record() {
    let server = support::RedisServer::start();
    let inner: Arc<dyn Store> = Arc::new(RedisStore::new(RedisTarget::Standalone(server.url())));
    let (cache, counts) = cached(inner.clone(), CacheSettings::default());
    until("the subscription", || cache.is_live(T)).await;
    let seen = Counts::get(&counts.invalidations);
    write(&*inner, "s", 1).await;
    until("the announcement", || {
        Counts::get(&counts.invalidations) > seen
    })
    .await;
    assert_eq!(active(&cache, "s").await, Some(1));
    assert_eq!(active(&cache, "s").await, Some(1));
    assert_eq!(Counts::get(&counts.hits), 1);

    // The subscription drops, and a change lands whose announcement nobody
    // hears: a raw write of the record, as if the announcement were lost.
    let mut redis = server.connection();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut redis)
        .unwrap();
    assert_eq!(killed, 1);
    let mut changed = record("s", 1);
    changed.description = Some("changed without an announcement".into());
    let _: () = redis::cmd("HSET")
        .arg("av:{acme}:s:s")
        .arg("record")
        .arg(serde_json::to_vec(&changed).unwrap())
        .query(&mut redis)
        .unwrap();
    until("the loss to be noticed", || {
        Counts::get(&counts.resyncs) >= 1
    })
    .await;
    until("the subscription to return", || cache.is_live(T)).await;
    let (seen, _) = cache.read(T, "s", None).await.unwrap().unwrap();
    assert_eq!(
        seen.description, changed.description,
        "after a lost subscription the cache starts empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_hold_by_entries_and_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    for i in 0..8 {
        write(&*inner, &format!("e{i}"), 1).await;
    }
    let (cache, counts) = cached(
        inner.clone(),
        CacheSettings {
            max_entries: 3,
            max_bytes: 1 << 20,
        },
    );
    until("the subscription", || cache.is_live(T)).await;
    for i in 0..8 {
        assert_eq!(active(&cache, &format!("e{i}")).await, Some(1));
        assert!(Counts::get(&counts.entries) <= 3);
    }
    assert_eq!(Counts::get(&counts.entries), 3);
    assert_eq!(Counts::get(&counts.evictions), 5);

    let big = 4096;
    for i in 0..8 {
        let commit = Commit {
            record: record(&format!("b{i}"), 1),
            versions: vec![version(1, big)],
            expected_latest: 0,
            prune: vec![],
        };
        inner.commit(T, &commit).await.unwrap();
    }
    let (cache, counts) = cached(
        inner,
        CacheSettings {
            max_entries: 1000,
            max_bytes: 3 * big,
        },
    );
    until("the subscription", || cache.is_live(T)).await;
    for i in 0..8 {
        assert_eq!(active(&cache, &format!("b{i}")).await, Some(1));
        assert!(Counts::get(&counts.bytes) <= 3 * big);
    }
    assert!(Counts::get(&counts.entries) >= 2, "as many as fit");
    assert!(Counts::get(&counts.evictions) >= 5);
}

/// The commands a read of a secret may send.
const READS: &[&str] = &["evalsha", "hmget", "hget"];

/// `INFO commandstats` calls per command, from a raw connection.
fn command_calls(redis: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(redis).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn audit_len(redis: &mut redis::Connection) -> u64 {
    redis::cmd("XLEN")
        .arg("av:{acme}:audit")
        .query(redis)
        .unwrap()
}

fn reset_stats(redis: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(redis).unwrap();
}

/// Subscribers of the tenant's change channel, as Redis counts them.
fn subscribers(redis: &mut redis::Connection, tenant: &str) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("av:{{{tenant}}}:changes"))
        .query(redis)
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reads_cost_redis_nothing_but_batched_audit_appends() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "a", &["--expiry-check-interval", "1h"]);
    let client = sidecar.client();
    let mut redis = shared.redis.connection();
    put_value(&client, "hot/key", "hot-value-1").await;
    until("the sidecar's subscription", || {
        subscribers(&mut redis, "acme") == 1
    })
    .await;
    // Warm up: until one read costs no read command.
    let mut warm = false;
    for _ in 0..100 {
        reset_stats(&mut redis);
        assert_eq!(get(&client, "/v1/secrets/hot/key").await.status, 200);
        let calls = command_calls(&mut redis);
        if !READS.iter().any(|read| calls.contains_key(*read)) {
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(warm, "a read is answered from memory");

    // Let the warm-up's audit events land before counting.
    let mut before = audit_len(&mut redis);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = audit_len(&mut redis);
        if now == before {
            break;
        }
        before = now;
    }

    const N: u64 = 200;
    reset_stats(&mut redis);
    let reads = (0..N).map(|_| {
        let client = client.clone();
        async move { get(&client, "/v1/secrets/hot/key").await }
    });
    for reply in futures_util::future::join_all(reads).await {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["value"], "hot-value-1");
    }
    for _ in 0..500 {
        if audit_len(&mut redis) >= before + N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        audit_len(&mut redis),
        before + N,
        "every read has its event"
    );
    // Everything those reads did to Redis, less this test's own commands.
    let mut calls = command_calls(&mut redis);
    calls.remove("info");
    calls.remove("config|resetstat");
    calls.remove("ping");
    calls.remove("xlen");
    let xadds = calls.remove("xadd").unwrap_or(0);
    let multis = calls.remove("multi").unwrap_or(0);
    let execs = calls.remove("exec").unwrap_or(0);
    assert!(
        calls.is_empty(),
        "warm reads sent Redis more than audit appends: {calls:?}"
    );
    // Every read is audited, in batches: fewer transactions than reads.
    assert_eq!(xadds, N, "one XADD per event");
    assert_eq!(multis, execs);
    assert!(
        multis < N,
        "{N} concurrent reads were appended in {multis} batches"
    );
}

/// Without the cache, each read is one plain command (no script): the
/// record and the active version's copy beside it, in one `HMGET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_read_is_one_hmget() {
    let shared = Shared::new();
    let sidecar = shared.sidecar(
        "acme",
        "a",
        &["--expiry-check-interval", "1h", "--cache-max-entries", "0"],
    );
    let client = sidecar.client();
    let mut redis = shared.redis.connection();
    put_value(&client, "cold/key", "cold-value-1").await;
    put_value(&client, "cold/key", "cold-value-2").await;

    const N: u64 = 20;
    reset_stats(&mut redis);
    for _ in 0..N {
        let reply = get(&client, "/v1/secrets/cold/key").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["value"], "cold-value-2");
    }
    let calls = command_calls(&mut redis);
    let reads: BTreeMap<&str, u64> = READS
        .iter()
        .filter_map(|read| Some((*read, *calls.get(*read)?)))
        .collect();
    assert_eq!(reads, BTreeMap::from([("hmget", N)]), "{calls:?}");
}

/// `agentvault_cache_invalidations_total` on a sidecar's `/metrics`.
async fn invalidations(metrics: &str) -> u64 {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("agentvault_cache_invalidations_total "))
        .and_then(|v| v.parse().ok())
        .expect("the invalidation counter")
}

/// Waits until sidecar B has applied one more invalidation than `seen`.
async fn announced(metrics: &str, seen: u64) -> u64 {
    for _ in 0..500 {
        let now = invalidations(metrics).await;
        if now > seen {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sidecar B never heard of the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_sidecar_reaches_the_next_read_on_another() {
    let shared = Shared::new();
    let a = shared.sidecar("acme", "a", &[]);
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let b = shared.sidecar("acme", "b", &["--metrics-addr", &metrics]);
    let (ca, cb) = (a.client(), b.client());
    let uri = "/v1/secrets/shared/key";
    put_value(&ca, "shared/key", "one").await;
    let granted = send(
        &ca,
        hyper::Method::POST,
        "/v1/grants",
        json!({"agent_id": "b", "path": "shared/key"}),
    )
    .await;
    assert_eq!(granted.status, 201, "{:?}", granted.json());
    let value = |reply: agentvault::client::Reply| (reply.status, reply.json()["value"].clone());
    let warm = || async {
        // Twice: the second read is answered from B's memory.
        get(&cb, uri).await;
        value(get(&cb, uri).await)
    };
    assert_eq!(warm().await, (200, json!("one")));

    let mut seen = invalidations(&metrics).await;
    put_value(&ca, "shared/key", "two").await;
    seen = announced(&metrics, seen).await;
    assert_eq!(value(get(&cb, uri).await), (200, json!("two")), "after PUT");
    assert_eq!(warm().await, (200, json!("two")));

    let rotated = send(
        &ca,
        hyper::Method::POST,
        "/v1/rotate/shared/key",
        json!({"value": "three", "grace_period_seconds": 60}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    seen = announced(&metrics, seen).await;
    assert_eq!(
        value(get(&cb, uri).await),
        (200, json!("three")),
        "after rotate"
    );
    assert_eq!(warm().await, (200, json!("three")));

    let rolled = send(
        &ca,
        hyper::Method::POST,
        "/v1/rollback/shared/key",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(rolled.status, 200, "{:?}", rolled.json());
    seen = announced(&metrics, seen).await;
    assert_eq!(
        value(get(&cb, uri).await),
        (200, json!("one")),
        "after rollback"
    );
    assert_eq!(warm().await, (200, json!("one")));

    let deleted = support::raw(&ca, hyper::Method::DELETE, uri, b"").await;
    assert_eq!(deleted.status, 204);
    announced(&metrics, seen).await;
    let gone = get(&cb, uri).await;
    assert!(
        gone.status == 404 || gone.status == 403,
        "after delete: {} {:?}",
        gone.status,
        gone.json()
    );
}

/// A secret written again by the sidecar that wrote it last is written in
/// one round trip: its write script, planned on what the last write left,
/// with nothing read back. A write from another sidecar in between makes
/// that plan stale: the write is planned again on what Redis holds, and
/// history retention still keeps the count and the version in its grace
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecars_rewrite_of_its_own_secret_is_one_command() {
    let shared = Shared::new();
    let a = shared.sidecar("acme", "a", &["--expiry-check-interval", "1h"]);
    let ca = a.client();
    let mut redis = shared.redis.connection();
    assert_eq!(put_value(&ca, "own/key", "v1").await, 1);
    assert_eq!(put_value(&ca, "own/key", "v2").await, 2);
    // Nothing of the sidecar's start-up left to send.
    until("the sidecar's subscription", || {
        subscribers(&mut redis, "acme") == 1
    })
    .await;
    reset_stats(&mut redis);
    assert_eq!(put_value(&ca, "own/key", "v3").await, 3);
    let mut calls = command_calls(&mut redis);
    for ours in ["info", "config|resetstat", "ping"] {
        calls.remove(ours);
    }
    // Redis counts the commands a script runs too: these are the write
    // script's own. Reading the record back would add an `HMGET`, the
    // version numbers an `HKEYS`.
    let script = [
        ("evalsha", 1),
        ("hget", 1),
        ("hmget", 1),
        ("hset", 2),
        ("publish", 1),
        ("xadd", 1),
    ];
    assert_eq!(
        calls,
        script.map(|(c, n)| (c.to_owned(), n)).into(),
        "a rewrite sends its write script and nothing else"
    );

    // Another sidecar's rotation: version 3 stays readable for an hour.
    let b = shared.sidecar("acme", "a", &["--expiry-check-interval", "1h"]);
    let cb = b.client();
    let rotated = send(
        &cb,
        hyper::Method::POST,
        "/v1/rotate/own/key",
        json!({"value": "v4", "grace_period_seconds": 3600}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    for n in 5..=30 {
        assert_eq!(put_value(&ca, "own/key", &format!("v{n}")).await, n);
    }
    let read = get(&cb, "/v1/secrets/own/key").await;
    assert_eq!(read.json()["value"], "v30");
    let versions = get(&ca, "/v1/versions/own/key").await;
    let numbers: Vec<u64> = versions
        .json()
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_u64().expect("number"))
        .collect();
    let mut expected = vec![3];
    expected.extend(12..=30);
    assert_eq!(
        numbers, expected,
        "20 kept, the version in its grace period among them"
    );
}
