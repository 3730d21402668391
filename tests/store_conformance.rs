//! One conformance suite, run against every `Store` implementation: the Redis
//! store on a real redis-server and the embedded store on a real file.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use agentvault::audit::{AuditEntry, AuditEvent, AuditId, EventKind};
use agentvault::crypto::Sealed;
use agentvault::identity::{Caller, Peer, PeerCred, RoleMap, WorkloadIdentity};
use agentvault::model::{SecretRecord, SecretType, Tier, VersionRecord};
use agentvault::store::{Commit, EmbeddedStore, RedisStore, RedisTarget, Store, StoreError};
use chrono::Utc;
use std::time::{Duration, Instant};

const T: &str = "acme";

fn record(path: &str, latest: u64, active: u64) -> SecretRecord {
    let now = Utc::now();
    SecretRecord {
        tenant: T.to_owned(),
        path: path.to_owned(),
        active_version: active,
        latest_version: latest,
        secret_type: SecretType::ApiKey,
        tier: Tier::Standard,
        description: Some("d".into()),
        tags: BTreeMap::from([("k".into(), "v".into())]),
        scope: None,
        owner: "spiffe://td/agent/acme/bot".into(),
        created_at: now,
        updated_at: now,
        expires_at: None,
        retired_expiry: BTreeMap::new(),
    }
}

fn version(n: u64) -> VersionRecord {
    VersionRecord {
        version: n,
        created_at: Utc::now(),
        sealed: Sealed {
            kek_id: "k1".into(),
            wrapped_dek: vec![n as u8; 60],
            ciphertext: vec![n as u8; 40],
        },
        expires_at: None,
    }
}

/// Writes version `n` of `path` on top of version `n - 1`.
async fn write(store: &dyn Store, tenant: &str, path: &str, n: u64) -> Result<(), StoreError> {
    let commit = Commit {
        record: record(path, n, n),
        versions: vec![version(n)],
        expected_latest: n - 1,
        prune: vec![],
    };
    store.commit(tenant, &commit).await
}

async fn reads_what_it_commits(store: Arc<dyn Store>) {
    assert!(store.read(T, "a", None).await.unwrap().is_none());
    write(&*store, T, "a", 1).await.unwrap();
    let (rec, ver) = store.read(T, "a", None).await.unwrap().unwrap();
    assert_eq!(rec, record_with_times(&rec, record("a", 1, 1)));
    assert_eq!(ver.unwrap().sealed, version(1).sealed);
    write(&*store, T, "a", 2).await.unwrap();
    let (_, v1) = store.read(T, "a", Some(1)).await.unwrap().unwrap();
    assert_eq!(v1.unwrap().version, 1);
    let (rec, none) = store.read(T, "a", Some(9)).await.unwrap().unwrap();
    assert_eq!(rec.active_version, 2);
    assert!(none.is_none(), "a missing version of an existing secret");
    let (_, meta_only) = store.read(T, "a", Some(0)).await.unwrap().unwrap();
    assert!(meta_only.is_none(), "version 0 never exists");
    let numbers: Vec<u64> = store
        .versions(T, "a")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(numbers, vec![1, 2]);
}

fn record_with_times(stored: &SecretRecord, mut want: SecretRecord) -> SecretRecord {
    want.created_at = stored.created_at;
    want.updated_at = stored.updated_at;
    want
}

async fn stale_writes_conflict_and_change_nothing(store: Arc<dyn Store>) {
    write(&*store, T, "c", 1).await.unwrap();
    // Expects absence, but the secret exists.
    assert!(matches!(
        write(&*store, T, "c", 1).await,
        Err(StoreError::Conflict)
    ));
    // Expects latest 2, but it is 1.
    assert!(matches!(
        write(&*store, T, "c", 3).await,
        Err(StoreError::Conflict)
    ));
    let (rec, ver) = store.read(T, "c", None).await.unwrap().unwrap();
    assert_eq!((rec.latest_version, ver.unwrap().version), (1, 1));
    assert_eq!(store.versions(T, "c").await.unwrap().len(), 1);
}

async fn metadata_only_commits_and_pruning(store: Arc<dyn Store>) {
    for n in 1..=3 {
        write(&*store, T, "m", n).await.unwrap();
    }
    // Move the active version back to 1 without a new version.
    let rollback = Commit {
        record: record("m", 3, 1),
        versions: vec![],
        expected_latest: 3,
        prune: vec![2],
    };
    store.commit(T, &rollback).await.unwrap();
    let (rec, ver) = store.read(T, "m", None).await.unwrap().unwrap();
    assert_eq!((rec.active_version, rec.latest_version), (1, 3));
    assert_eq!(ver.unwrap().version, 1);
    let numbers: Vec<u64> = store
        .versions(T, "m")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        numbers,
        vec![1, 3],
        "version 2 was pruned in the same commit"
    );
}

async fn delete_removes_everything(store: Arc<dyn Store>) {
    write(&*store, T, "d/x", 1).await.unwrap();
    write(&*store, T, "d/x", 2).await.unwrap();
    assert!(store.delete(T, "d/x").await.unwrap());
    assert!(store.read(T, "d/x", None).await.unwrap().is_none());
    assert!(store.versions(T, "d/x").await.unwrap().is_empty());
    assert!(store.list(T, "d/", None, 10).await.unwrap().is_empty());
    assert!(!store.delete(T, "d/x").await.unwrap());
    // A fresh start at version 1 is possible again.
    write(&*store, T, "d/x", 1).await.unwrap();
}

async fn lists_by_prefix_in_order_after_a_cursor(store: Arc<dyn Store>) {
    for path in ["b/2", "a", "b/1", "b/10", "bb", "c/1", "b/3"] {
        write(&*store, T, path, 1).await.unwrap();
    }
    let paths =
        |records: Vec<SecretRecord>| records.into_iter().map(|r| r.path).collect::<Vec<_>>();
    assert_eq!(
        paths(store.list(T, "", None, 100).await.unwrap()),
        ["a", "b/1", "b/10", "b/2", "b/3", "bb", "c/1"]
    );
    assert_eq!(
        paths(store.list(T, "b/", None, 100).await.unwrap()),
        ["b/1", "b/10", "b/2", "b/3"]
    );
    assert_eq!(
        paths(store.list(T, "b/", None, 2).await.unwrap()),
        ["b/1", "b/10"]
    );
    assert_eq!(
        paths(store.list(T, "b/", Some("b/10"), 2).await.unwrap()),
        ["b/2", "b/3"]
    );
    assert_eq!(
        paths(store.list(T, "b/", Some("b/3"), 2).await.unwrap()),
        Vec::<String>::new()
    );
    // A cursor that no longer exists still positions the page.
    assert_eq!(
        paths(store.list(T, "b/", Some("b/15"), 5).await.unwrap()),
        ["b/2", "b/3"]
    );
    // A cursor before the prefix starts at the prefix.
    assert_eq!(
        paths(store.list(T, "c/", Some("a"), 5).await.unwrap()),
        ["c/1"]
    );
    assert_eq!(
        paths(store.list(T, "zzz", None, 5).await.unwrap()),
        Vec::<String>::new()
    );
}

async fn tenants_are_isolated(store: Arc<dyn Store>) {
    write(&*store, "t1", "shared/name", 1).await.unwrap();
    assert!(store
        .read("t2", "shared/name", None)
        .await
        .unwrap()
        .is_none());
    assert!(store.list("t2", "", None, 10).await.unwrap().is_empty());
    assert!(!store.delete("t2", "shared/name").await.unwrap());
    // The same path in another tenant is its own secret.
    write(&*store, "t2", "shared/name", 1).await.unwrap();
    assert!(store.delete("t2", "shared/name").await.unwrap());
    assert!(store
        .read("t1", "shared/name", None)
        .await
        .unwrap()
        .is_some());
}

/// Many writers race on one path; each commit that succeeds takes a distinct
/// version number and no version is lost.
async fn racing_writers_never_share_a_version(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            while won.len() < 5 {
                let (latest, _) = match store.read(T, "race", Some(0)).await.unwrap() {
                    Some((rec, _)) => (rec.latest_version, ()),
                    None => (0, ()),
                };
                match write(&*store, T, "race", latest + 1).await {
                    Ok(()) => won.push(latest + 1),
                    Err(StoreError::Conflict) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<u64>>());
    assert_eq!(store.versions(T, "race").await.unwrap().len(), 40);
}

async fn commit_all_is_all_or_nothing(store: Arc<dyn Store>) {
    write(&*store, T, "multi/b", 1).await.unwrap();
    let fresh = |path: &str, expected: u64| Commit {
        record: record(path, expected + 1, expected + 1),
        versions: vec![version(expected + 1)],
        expected_latest: expected,
        prune: vec![],
    };
    // The second commit's expectation is stale, so the first must not land either.
    let stale = [
        fresh("multi/a", 0),
        fresh("multi/b", 0),
        fresh("multi/c", 0),
    ];
    assert!(matches!(
        store.commit_all(T, &stale).await,
        Err(StoreError::Conflict)
    ));
    assert!(store.read(T, "multi/a", None).await.unwrap().is_none());
    assert!(store.read(T, "multi/c", None).await.unwrap().is_none());
    let good = [
        fresh("multi/a", 0),
        fresh("multi/b", 1),
        fresh("multi/c", 0),
    ];
    store.commit_all(T, &good).await.unwrap();
    let paths: Vec<String> = store
        .list(T, "multi/", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["multi/a", "multi/b", "multi/c"]);
    assert_eq!(
        store
            .read(T, "multi/b", None)
            .await
            .unwrap()
            .unwrap()
            .0
            .latest_version,
        2
    );
    store.commit_all(T, &[]).await.unwrap();
}

async fn claims_go_to_exactly_one_caller_until_they_lapse(store: Arc<dyn Store>) {
    let ttl = std::time::Duration::from_millis(300);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.claim(T, "warn:x", ttl).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    assert!(
        store.claim("other-tenant", "warn:x", ttl).await.unwrap(),
        "claims are per tenant"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        store.claim(T, "warn:x", ttl).await.unwrap(),
        "a lapsed claim can be taken again"
    );
}

fn audit_event(path: &str) -> AuditEvent {
    let workload = WorkloadIdentity::new("td", T, "bot").unwrap();
    let cred = PeerCred {
        pid: Some(7),
        uid: 1000,
        gid: 1000,
    };
    let caller = Caller::new(&workload, &Peer::identify(&RoleMap::default(), cred), None)
        .with_request_id("req-1");
    AuditEvent::new(EventKind::Accessed, &caller)
        .action("read")
        .path(path)
        .version(Some(1))
}

fn paths(entries: &[AuditEntry]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e.event.path.as_deref().unwrap_or_default())
        .collect()
}

async fn audit_appends_in_order_and_reads_newest_first(store: Arc<dyn Store>) {
    assert!(store.audit_newest(T, 10).await.unwrap().is_empty());
    let batch = [audit_event("a"), audit_event("b"), audit_event("c")];
    let ids = store.append_audit(T, &batch, 1000).await.unwrap();
    assert_eq!(ids.len(), 3);
    let more = store
        .append_audit(T, &[audit_event("d")], 1000)
        .await
        .unwrap();
    let all: Vec<AuditId> = ids.iter().chain(&more).copied().collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ids grow: {all:?}");

    let newest = store.audit_newest(T, 2).await.unwrap();
    assert_eq!(paths(&newest), ["d", "c"]);
    assert_eq!(newest[0].id, all[3]);
    let everything = store.audit_newest(T, 100).await.unwrap();
    assert_eq!(paths(&everything), ["d", "c", "b", "a"]);
    assert_eq!(everything[3].event, batch[0], "stored as appended");
    assert!(
        store.audit_newest("other", 10).await.unwrap().is_empty(),
        "tenants have their own streams"
    );
}

async fn audit_followers_wait_for_new_events_and_resume(store: Arc<dyn Store>) {
    let ids = store
        .append_audit(T, &[audit_event("a"), audit_event("b")], 1000)
        .await
        .unwrap();
    let mut follower = store.audit_follower(T).await.unwrap();
    let from_start = follower
        .after(AuditId::START, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(paths(&from_start), ["a", "b"]);
    let resumed = follower.after(ids[0], 10, Duration::ZERO).await.unwrap();
    assert_eq!(paths(&resumed), ["b"], "resumes after the id given");

    let started = Instant::now();
    let nothing = follower
        .after(ids[1], 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(nothing.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");

    let writer = store.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .append_audit(T, &[audit_event("c")], 1000)
            .await
            .unwrap()
    });
    let started = Instant::now();
    let woke = follower
        .after(ids[1], 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(paths(&woke), ["c"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the append"
    );
    assert_eq!(woke[0].id, append.await.unwrap()[0]);
    let other = store
        .audit_follower("other")
        .await
        .unwrap()
        .after(AuditId::START, 10, Duration::ZERO)
        .await
        .unwrap();
    assert!(other.is_empty(), "a follower sees only its tenant");
}

async fn audit_is_trimmed_to_about_max_len(store: Arc<dyn Store>) {
    let mut last = None;
    for round in 0..6 {
        let batch: Vec<AuditEvent> = (0..50)
            .map(|i| audit_event(&format!("p{}", round * 50 + i)))
            .collect();
        last = store.append_audit(T, &batch, 10).await.unwrap().pop();
    }
    let kept = store.audit_newest(T, 1000).await.unwrap();
    assert!(
        kept.len() >= 10 && kept.len() < 300,
        "kept {} of 300",
        kept.len()
    );
    assert_eq!(kept[0].id, last.unwrap(), "the newest are kept");
    assert_eq!(paths(&kept[..1]), ["p299"]);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = crate::support::RedisServer::start();
                    let store = agentvault_store_redis(&server);
                    super::$name(store).await;
                }
            )*
            fn agentvault_store_redis(server: &crate::support::RedisServer) -> std::sync::Arc<dyn super::Store> {
                std::sync::Arc::new(super::RedisStore::new(super::RedisTarget::Standalone(server.url())))
            }
        }
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance!(
    reads_what_it_commits,
    stale_writes_conflict_and_change_nothing,
    metadata_only_commits_and_pruning,
    delete_removes_everything,
    lists_by_prefix_in_order_after_a_cursor,
    tenants_are_isolated,
    racing_writers_never_share_a_version,
    commit_all_is_all_or_nothing,
    claims_go_to_exactly_one_caller_until_they_lapse,
    audit_appends_in_order_and_reads_newest_first,
    audit_followers_wait_for_new_events_and_resume,
    audit_is_trimmed_to_about_max_len,
);

#[tokio::test]
async fn redis_store_reports_unavailable_when_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = RedisStore::new(RedisTarget::Standalone(format!(
        "redis://127.0.0.1:{port}/"
    )));
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        write(&store, T, "x", 1).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn embedded_store_survives_reopen_and_is_locked_to_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        write(&store, T, "p", 1).await.unwrap();
        assert!(
            EmbeddedStore::open(&path).is_err(),
            "a second opener is refused"
        );
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store
            .read(T, "p", None)
            .await
            .unwrap()
            .unwrap()
            .0
            .latest_version,
        1
    );
}
