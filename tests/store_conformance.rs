//! One conformance suite, run against every `Store` implementation: the Redis
//! store on a real redis-server and the embedded store on a real file.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use agentvault::audit::{AuditEntry, AuditEvent, AuditId, EventKind};
use agentvault::crypto::Sealed;
use agentvault::identity::{Caller, Peer, PeerCred, RoleMap, WorkloadIdentity};
use agentvault::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, SecretType, Tier, TokenRecord,
    VersionRecord,
};
use agentvault::store::{
    acl_setuser, AuditAppend, Change, ChangeStream, Commit, EmbeddedStore, Guard,
    IdempotencyRecord, RecordPatch, RedisPassword, RedisSecurity, RedisStore, RedisTarget, Store,
    StoreError, VersionWrite, WriteOutcome,
};
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
        revision: String::new(),
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
    assert_eq!(rec, as_stored(&rec, record("a", 1, 1)));
    assert_eq!(ver.unwrap().sealed, version(1).sealed);
    write(&*store, T, "a", 2).await.unwrap();
    let (_, v1) = store.read(T, "a", Some(1)).await.unwrap().unwrap();
    assert_eq!(v1.unwrap().version, 1);
    let (rec, none) = store.read(T, "a", Some(9)).await.unwrap().unwrap();
    assert_eq!(rec.active_version, 2);
    assert!(none.is_none(), "a missing version of an existing secret");
    let (_, meta_only) = store.read(T, "a", Some(0)).await.unwrap().unwrap();
    assert!(meta_only.is_none(), "version 0 never exists");
    let numbers = version_numbers(store.as_ref(), "a").await;
    assert_eq!(numbers, vec![1, 2]);
    let full = store.versions(T, "a").await.unwrap();
    assert_eq!(
        store.version_stamps(T, "a").await.unwrap(),
        full.iter().map(VersionRecord::stamp).collect::<Vec<_>>(),
        "stamps are the versions without their sealed values"
    );
}

/// `want` with what the store sets itself: times and revision.
fn as_stored(stored: &SecretRecord, mut want: SecretRecord) -> SecretRecord {
    want.created_at = stored.created_at;
    want.updated_at = stored.updated_at;
    want.revision.clone_from(&stored.revision);
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
    let numbers = version_numbers(store.as_ref(), "m").await;
    assert_eq!(
        numbers,
        vec![1, 3],
        "version 2 was pruned in the same commit"
    );
}

/// What history retention reads: the stored versions' numbers, ascending as
/// numbers (10 after 9), and the stamps of those asked for that are stored,
/// in the order asked.
async fn retention_reads_version_numbers_and_the_stamps_asked_for(store: Arc<dyn Store>) {
    for n in 1..=12 {
        write(&*store, T, "r", n).await.unwrap();
    }
    let prune = Commit {
        record: record("r", 12, 12),
        versions: vec![],
        expected_latest: 12,
        prune: vec![2, 5],
    };
    store.commit(T, &prune).await.unwrap();
    assert_eq!(
        store.version_numbers(T, "r").await.unwrap(),
        vec![1, 3, 4, 6, 7, 8, 9, 10, 11, 12]
    );
    let all = store.version_stamps(T, "r").await.unwrap();
    let stamp = |n: u64| *all.iter().find(|v| v.version == n).unwrap();
    assert_eq!(
        store.stamps_of(T, "r", &[11, 2, 1]).await.unwrap(),
        vec![stamp(11), stamp(1)],
        "a pruned version is skipped"
    );
    assert!(store.stamps_of(T, "r", &[]).await.unwrap().is_empty());
    assert!(store.version_numbers(T, "none").await.unwrap().is_empty());
    assert!(store.stamps_of(T, "none", &[1]).await.unwrap().is_empty());
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

/// The numbers of the versions stored for `path`, in order.
async fn version_numbers(store: &dyn Store, path: &str) -> Vec<u64> {
    let versions = store.versions(T, path).await.unwrap();
    versions.iter().map(|v| v.version).collect()
}

/// A write of a reserved version `n` of `path` that sets the tag `by` to `who`.
fn version_write(path: &str, n: u64, who: &str) -> VersionWrite {
    let mut initial = record(path, n, n);
    initial.tags = BTreeMap::from([("by".into(), who.into())]);
    VersionWrite {
        version: version(n),
        reserved: true,
        guard: Guard::of(&initial),
        initial,
        base: None,
        base_only: false,
        patch: RecordPatch {
            updated_at: Utc::now(),
            expires_at: None,
            secret_type: None,
            tier: None,
            description: None,
            tags: Some(BTreeMap::from([("by".into(), who.into())])),
            scope: None,
        },
        prune: vec![],
        idempotency: None,
        audit: None,
    }
}

async fn fifty_reserved_writers_all_succeed_with_distinct_versions(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let n = store.reserve_version(T, "hot").await.unwrap();
            let outcome = store
                .write_version(T, &version_write("hot", n, &i.to_string()))
                .await
                .unwrap();
            assert!(outcome.applied(), "{outcome:?}");
            n
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=50).collect::<Vec<u64>>());
    let stored = version_numbers(store.as_ref(), "hot").await;
    assert_eq!(stored, numbers);
    let (rec, active) = store.read(T, "hot", None).await.unwrap().unwrap();
    assert_eq!((rec.latest_version, rec.active_version), (50, 50));
    assert_eq!(active.unwrap().version, 50);
    // The tag is some writer's, and the record is still the one it was created as.
    assert!(rec.tags.contains_key("by"));
    assert_eq!(rec.owner, record("hot", 1, 1).owner);
    // The numbering continues above every reservation.
    assert_eq!(store.reserve_version(T, "hot").await.unwrap(), 51);
}

/// A write whose number was not reserved takes the next free number, and
/// only that: never one reserved by another writer, nor one further on.
async fn an_unreserved_write_takes_only_the_next_free_number(store: Arc<dyn Store>) {
    let unreserved = |n: u64, who: &str| VersionWrite {
        reserved: false,
        ..version_write("claim", n, who)
    };
    for n in [1, 2] {
        let outcome = store.write_version(T, &unreserved(n, "a")).await.unwrap();
        assert!(outcome.applied(), "{outcome:?}");
    }
    let taken = store.reserve_version(T, "claim").await.unwrap();
    assert_eq!(taken, 3);
    for (n, why) in [
        (3, "reserved by another"),
        (5, "not the next"),
        (2, "written"),
    ] {
        let refused = store.write_version(T, &unreserved(n, "b")).await;
        assert!(matches!(refused, Err(StoreError::Conflict)), "{n}: {why}");
    }
    let (rec, _) = store.read(T, "claim", None).await.unwrap().unwrap();
    assert_eq!((rec.latest_version, rec.tags["by"].as_str()), (2, "a"));
    store
        .write_version(T, &version_write("claim", taken, "c"))
        .await
        .unwrap();
    let outcome = store.write_version(T, &unreserved(4, "d")).await.unwrap();
    assert!(outcome.applied(), "{outcome:?}");
    assert_eq!(store.reserve_version(T, "claim").await.unwrap(), 5);
    let stored = version_numbers(store.as_ref(), "claim").await;
    assert_eq!(stored, [1, 2, 3, 4]);
}

async fn a_write_that_commits_after_a_higher_number_stays_inactive(store: Arc<dyn Store>) {
    let low = store.reserve_version(T, "late").await.unwrap();
    let high = store.reserve_version(T, "late").await.unwrap();
    assert!(high > low);
    store
        .write_version(T, &version_write("late", high, "high"))
        .await
        .unwrap();
    let mut late = version_write("late", low, "low");
    let at = Utc::now() + chrono::Duration::hours(1);
    late.patch.expires_at = Some(at);
    store.write_version(T, &late).await.unwrap();
    let (rec, active) = store.read(T, "late", None).await.unwrap().unwrap();
    assert_eq!((rec.active_version, rec.latest_version), (high, high));
    assert_eq!(active.unwrap().version, high);
    assert_eq!(
        rec.tags["by"], "high",
        "the lower number changes no metadata"
    );
    assert_eq!(rec.expires_at, None);
    let retired = rec.retired_expiry[&low];
    assert_eq!(retired.timestamp_millis(), at.timestamp_millis());
    let (_, old) = store.read(T, "late", Some(low)).await.unwrap().unwrap();
    assert_eq!(old.unwrap().version, low);

    // A third write retires the active version and applies every patched field.
    let next = store.reserve_version(T, "late").await.unwrap();
    let mut third = version_write("late", next, "third");
    third.prune = vec![low, next];
    third.patch.description = Some("new".into());
    store.write_version(T, &third).await.unwrap();
    let (rec, _) = store.read(T, "late", None).await.unwrap().unwrap();
    assert_eq!(rec.active_version, next);
    assert_eq!(rec.description.as_deref(), Some("new"));
    assert_eq!(rec.tags["by"], "third");
    assert!(!rec.retired_expiry.contains_key(&low), "pruned");
    let kept = version_numbers(store.as_ref(), "late").await;
    assert_eq!(
        kept,
        vec![high, next],
        "prune never drops the version it writes"
    );
}

async fn guarded_writes_refuse_a_changed_record_and_write_nothing(store: Arc<dyn Store>) {
    let n = store.reserve_version(T, "g").await.unwrap();
    store
        .write_version(T, &version_write("g", n, "a"))
        .await
        .unwrap();

    let mut other_owner = version_write("g", store.reserve_version(T, "g").await.unwrap(), "b");
    other_owner.guard.owner = "spiffe://td/agent/acme/other".into();
    assert!(matches!(
        store.write_version(T, &other_owner).await,
        Err(StoreError::Conflict)
    ));
    let mut stale_cas = version_write("g", store.reserve_version(T, "g").await.unwrap(), "c");
    stale_cas.guard.active = Some(n + 7);
    assert!(matches!(
        store.write_version(T, &stale_cas).await,
        Err(StoreError::Conflict)
    ));
    let mut fresh_cas = version_write("g", store.reserve_version(T, "g").await.unwrap(), "d");
    fresh_cas.guard.active = Some(n);
    store.write_version(T, &fresh_cas).await.unwrap();
    assert_eq!(store.versions(T, "g").await.unwrap().len(), 2);

    // Creating requires absence when the guard says "active 0".
    let mut create = version_write("g2", store.reserve_version(T, "g2").await.unwrap(), "e");
    create.guard.active = Some(0);
    store.write_version(T, &create).await.unwrap();
    let mut again = version_write("g2", store.reserve_version(T, "g2").await.unwrap(), "f");
    again.guard.active = Some(0);
    assert!(matches!(
        store.write_version(T, &again).await,
        Err(StoreError::Conflict)
    ));

    // The same write sent twice (a client library's resend) is one write.
    let resent = version_write("g", store.reserve_version(T, "g").await.unwrap(), "r");
    store.write_version(T, &resent).await.unwrap();
    store.write_version(T, &resent).await.unwrap();
    assert_eq!(store.versions(T, "g").await.unwrap().len(), 3);
}

/// A write that hands back the record it read (its base) leaves what it
/// would leave on that record while it is current, and is rebased onto the
/// current record when another write, commit or delete came between: it
/// never undoes a change it did not see.
async fn a_write_on_a_stale_base_is_rebased_onto_the_current_record(store: Arc<dyn Store>) {
    let read = |store: Arc<dyn Store>| async move {
        let (record, _) = store.read(T, "base", None).await.unwrap().unwrap();
        record
    };
    let described = |n: u64, who: &str, description: &str, base: Option<SecretRecord>| {
        let mut write = version_write("base", n, who);
        write.initial.description = Some(description.into());
        write.patch.description = Some(description.into());
        write.base = base;
        write
    };
    store
        .write_version(T, &described(1, "a", "first", None))
        .await
        .unwrap();
    let first = read(store.clone()).await;
    assert_eq!(first.description.as_deref(), Some("first"));

    store
        .write_version(T, &described(2, "b", "second", Some(first.clone())))
        .await
        .unwrap();
    let second = read(store.clone()).await;
    assert_eq!(
        (second.latest_version, second.tags["by"].as_str()),
        (2, "b")
    );
    assert_eq!(second.description.as_deref(), Some("second"));
    if !first.revision.is_empty() {
        assert_ne!(
            second.revision, first.revision,
            "a write changes the revision"
        );
    }

    // On `first`, which version 2 replaced: only the tag is this write's.
    let mut stale = version_write("base", 3, "c");
    stale.base = Some(first.clone());
    store.write_version(T, &stale).await.unwrap();
    let third = read(store.clone()).await;
    assert_eq!((third.latest_version, third.tags["by"].as_str()), (3, "c"));
    assert_eq!(third.description.as_deref(), Some("second"), "rebased");

    // A commit between the read and the write.
    let mut committed = third.clone();
    committed.description = Some("committed".into());
    let commit = Commit {
        record: committed,
        versions: vec![],
        expected_latest: 3,
        prune: vec![],
    };
    store.commit(T, &commit).await.unwrap();
    let mut after_commit = version_write("base", 4, "d");
    after_commit.base = Some(third);
    store.write_version(T, &after_commit).await.unwrap();
    let fourth = read(store.clone()).await;
    assert_eq!(fourth.description.as_deref(), Some("committed"), "rebased");

    // A delete and a new secret under the same path.
    assert!(store.delete(T, "base").await.unwrap());
    store
        .write_version(T, &described(1, "e", "recreated", None))
        .await
        .unwrap();
    let mut after_delete = version_write("base", 2, "f");
    after_delete.base = Some(fourth);
    store.write_version(T, &after_delete).await.unwrap();
    let recreated = read(store.clone()).await;
    assert_eq!(
        recreated.description.as_deref(),
        Some("recreated"),
        "rebased"
    );
    assert_eq!(version_numbers(store.as_ref(), "base").await, [1, 2]);
}

/// A base-only write commits only on its base: on a base another write
/// replaced it writes nothing (no version, no audit event, the record as it
/// was) and says so; on the current one it commits, and a store that reports
/// the commit as planned on its base holds exactly the planned record.
async fn a_base_only_write_never_commits_on_a_replaced_base(store: Arc<dyn Store>) {
    let read = |store: Arc<dyn Store>| async move {
        let (record, _) = store.read(T, "only", None).await.unwrap().unwrap();
        record
    };
    let on = |n: u64, who: &str, base: SecretRecord| {
        let mut write = version_write("only", n, who);
        write.reserved = false;
        write.base = Some(base);
        write.base_only = true;
        write.audit = Some(AuditAppend {
            event: audit_event("only"),
            max_len: 100,
        });
        write
    };
    let mut first = version_write("only", 1, "a");
    first.reserved = false;
    store.write_version(T, &first).await.unwrap();
    let base = read(store.clone()).await;

    let second = on(2, "b", base.clone());
    let outcome = store.write_version(T, &second).await.unwrap();
    assert!(outcome.applied(), "{outcome:?}");
    let stored = read(store.clone()).await;
    if let WriteOutcome::AppliedOnBase(committed) = &outcome {
        let (mut planned, _) = second.outcome(Some(base.clone()));
        assert_ne!(committed.revision, base.revision, "a new revision");
        planned.revision.clone_from(&committed.revision);
        assert_eq!(**committed, planned, "the planned record");
        assert_eq!(stored, planned, "stored as planned");
    }
    assert_eq!(store.audit_newest(T, 10).await.unwrap().len(), 1);

    // `base` was replaced by version 2's write.
    let outcome = store.write_version(T, &on(3, "c", base)).await.unwrap();
    assert_eq!(outcome, WriteOutcome::Stale);
    assert_eq!(read(store.clone()).await, stored, "the record as it was");
    assert_eq!(version_numbers(store.as_ref(), "only").await, [1, 2]);
    assert_eq!(
        store.audit_newest(T, 10).await.unwrap().len(),
        1,
        "no event"
    );
}

async fn an_idempotency_key_replays_the_first_answer_and_writes_nothing(store: Arc<dyn Store>) {
    assert_eq!(store.idempotent_answer(T, "k1").await.unwrap(), None);
    let keyed = |n: u64, answer: &[u8], ttl: Duration| {
        let mut w = version_write("idem", n, "x");
        w.idempotency = Some(IdempotencyRecord {
            key: "k1".into(),
            answer: answer.to_vec(),
            ttl,
        });
        w
    };
    let day = Duration::from_secs(24 * 3600);
    let first = store.reserve_version(T, "idem").await.unwrap();
    let outcome = store
        .write_version(T, &keyed(first, b"first answer", day))
        .await
        .unwrap();
    assert!(outcome.applied(), "{outcome:?}");
    let retry = store.reserve_version(T, "idem").await.unwrap();
    let outcome = store
        .write_version(T, &keyed(retry, b"second answer", day))
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Replayed(b"first answer".to_vec()));
    assert_eq!(store.versions(T, "idem").await.unwrap().len(), 1);
    assert_eq!(
        store.idempotent_answer(T, "k1").await.unwrap().as_deref(),
        Some(&b"first answer"[..])
    );
    // Keys are per tenant.
    assert_eq!(store.idempotent_answer("other", "k1").await.unwrap(), None);

    // A record lapses after its window.
    let mut short = keyed(store.reserve_version(T, "idem").await.unwrap(), b"s", day);
    short.idempotency.as_mut().unwrap().key = "short".into();
    short.idempotency.as_mut().unwrap().ttl = Duration::from_millis(50);
    store.write_version(T, &short).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.idempotent_answer(T, "short").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the idempotency record never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_writes_audit_event_is_stored_with_it_or_not_at_all(store: Arc<dyn Store>) {
    let audited = |n: u64, key: &str| {
        let mut w = version_write("aud", n, "x");
        w.audit = Some(AuditAppend {
            event: audit_event(&format!("aud@{n}")),
            max_len: 1000,
        });
        w.idempotency = Some(IdempotencyRecord {
            key: key.into(),
            answer: b"a".to_vec(),
            ttl: Duration::from_secs(60),
        });
        w
    };
    let n = store.reserve_version(T, "aud").await.unwrap();
    store.write_version(T, &audited(n, "k")).await.unwrap();
    let newest = store.audit_newest(T, 10).await.unwrap();
    assert_eq!(paths(&newest), vec![format!("aud@{n}").as_str()]);
    // A replayed write and a refused one append nothing.
    let replay = audited(store.reserve_version(T, "aud").await.unwrap(), "k");
    store.write_version(T, &replay).await.unwrap();
    let mut refused = audited(store.reserve_version(T, "aud").await.unwrap(), "k2");
    refused.guard.owner = "spiffe://td/agent/acme/other".into();
    assert!(store.write_version(T, &refused).await.is_err());
    assert_eq!(store.audit_newest(T, 10).await.unwrap().len(), 1);
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

/// Re-sealing a DEK is a compare-and-set on exactly the DEK: it changes the
/// key id and wrapped DEK and nothing else, and only over the DEK it expects.
async fn reseal_swaps_only_the_expected_dek(store: Arc<dyn Store>) {
    write(&*store, T, "p", 1).await.unwrap();
    let mut graced = version(2);
    graced.expires_at = Some(Utc::now());
    let commit = Commit {
        record: record("p", 2, 2),
        versions: vec![graced.clone()],
        expected_latest: 1,
        prune: vec![],
    };
    store.commit(T, &commit).await.unwrap();
    let before = store.versions(T, "p").await.unwrap();
    let expected = before[1].sealed.clone();
    let rewrapped = Sealed {
        kek_id: "k2".into(),
        // All ones: base64 `////…`, which Lua's cjson writes escaped.
        wrapped_dek: vec![0xFF; 60],
        ciphertext: vec![0xCD; 40],
    };
    assert!(store
        .reseal(T, "p", 2, &expected, &rewrapped)
        .await
        .unwrap());
    let after = store.versions(T, "p").await.unwrap();
    assert_eq!(after[0], before[0], "other versions are untouched");
    let v2 = &after[1];
    assert_eq!(v2.sealed.kek_id, "k2");
    assert_eq!(v2.sealed.wrapped_dek, rewrapped.wrapped_dek);
    assert_eq!(
        v2.sealed.ciphertext, expected.ciphertext,
        "ciphertext untouched"
    );
    assert_eq!(v2.expires_at, before[1].expires_at);
    assert_eq!(v2.created_at, before[1].created_at);
    let (_, active) = store.read(T, "p", None).await.unwrap().unwrap();
    assert_eq!(active.unwrap().sealed, v2.sealed, "a read sees the new DEK");
    // The DEK moved on: a second reseal from the old one changes nothing.
    let stale = Sealed {
        kek_id: "k3".into(),
        ..rewrapped.clone()
    };
    assert!(!store.reseal(T, "p", 2, &expected, &stale).await.unwrap());
    assert_eq!(store.versions(T, "p").await.unwrap(), after);
    assert!(!store.reseal(T, "p", 9, &expected, &stale).await.unwrap());
    assert!(!store
        .reseal("other", "p", 2, &rewrapped, &stale)
        .await
        .unwrap());
    assert!(store.versions("other", "p").await.unwrap().is_empty());
}

/// The next announcement, failing the test if none comes within 5 s.
async fn next_change(changes: &mut ChangeStream) -> Change {
    tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("an announcement within 5 s")
        .expect("the subscription is still alive")
}

/// Asserts nothing more is announced for a little while.
async fn no_more_changes(changes: &mut ChangeStream) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(200), changes.next()).await {
        panic!("unexpected announcement {extra:?}");
    }
}

fn grant(id: &str, path: &str) -> Grant {
    Grant {
        grant_id: id.into(),
        agent_id: "spiffe://td/agent/acme/other".into(),
        path: path.into(),
        created_at: Utc::now(),
        created_by: "spiffe://td/agent/acme/bot".into(),
        role: None,
    }
}

fn token_and_approval() -> (TokenRecord, ApprovalRecord) {
    let now = Utc::now();
    let token = TokenRecord {
        hash: "ab".repeat(32),
        scope: "secrets:read:a".into(),
        expires_at: now + chrono::Duration::minutes(5),
        max_uses: Some(2),
        approval_id: Some("ap_1".into()),
        description: None,
        created_at: now,
        created_by: "spiffe://td/agent/acme/bot".into(),
        agent_id: "spiffe://td/agent/acme/bot".into(),
        role: None,
        tier: Tier::Critical,
    };
    let approval = ApprovalRecord {
        approval_id: "ap_1".into(),
        token_hash: token.hash.clone(),
        scope: token.scope.clone(),
        tier: Tier::Critical,
        requested_by: token.created_by.clone(),
        created_at: now,
        status: ApprovalStatus::Pending,
        decided_by: None,
        decided_at: None,
    };
    (token, approval)
}

async fn every_write_announces_what_it_changed(store: Arc<dyn Store>) {
    let mut changes = store.changes(T).await.unwrap();
    let mut elsewhere = store.changes("other").await.unwrap();

    write(&*store, T, "a", 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Secret("a".into()));
    let both = [
        Commit {
            record: record("b", 1, 1),
            versions: vec![version(1)],
            expected_latest: 0,
            prune: vec![],
        },
        Commit {
            record: record("a", 2, 1),
            versions: vec![],
            expected_latest: 1,
            prune: vec![],
        },
    ];
    store.commit_all(T, &both).await.unwrap();
    let mut got = vec![
        next_change(&mut changes).await,
        next_change(&mut changes).await,
    ];
    got.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        got,
        [Change::Secret("a".into()), Change::Secret("b".into())]
    );
    // A commit that conflicts changes nothing and announces nothing.
    assert!(write(&*store, T, "a", 1).await.is_err());
    no_more_changes(&mut changes).await;

    store.put_grant(T, &grant("g1", "a")).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Grants);
    store.put_grant(T, &grant("g2", "b")).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Grants);
    assert!(store.delete_grant(T, "g2").await.unwrap());
    assert_eq!(next_change(&mut changes).await, Change::Grants);
    assert!(!store.delete_grant(T, "g2").await.unwrap());
    no_more_changes(&mut changes).await;

    // Deleting a secret also drops its grants, and says so.
    assert!(store.delete(T, "a").await.unwrap());
    assert_eq!(next_change(&mut changes).await, Change::Secret("a".into()));
    assert_eq!(next_change(&mut changes).await, Change::Grants);
    assert!(store.delete(T, "b").await.unwrap());
    assert_eq!(next_change(&mut changes).await, Change::Secret("b".into()));
    no_more_changes(&mut changes).await;

    let (token, approval) = token_and_approval();
    store
        .create_token(T, &token, Some(&approval))
        .await
        .unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Tokens);
    let approved = ApprovalRecord {
        status: ApprovalStatus::Approved,
        ..approval
    };
    assert!(store.decide_approval(T, &approved).await.unwrap());
    assert_eq!(next_change(&mut changes).await, Change::Tokens);
    // Spending a use is not announced; token checks always ask the store.
    store.use_token(T, &token.hash, Utc::now()).await.unwrap();
    no_more_changes(&mut changes).await;

    // Nothing of this tenant reached the other tenant's subscriber.
    no_more_changes(&mut elsewhere).await;
    write(&*store, "other", "a", 1).await.unwrap();
    assert_eq!(
        next_change(&mut elsewhere).await,
        Change::Secret("a".into())
    );
    no_more_changes(&mut changes).await;
}

async fn every_subscriber_hears_every_change(store: Arc<dyn Store>) {
    let mut first = store.changes(T).await.unwrap();
    let mut second = store.changes(T).await.unwrap();
    for n in 1..=20 {
        write(&*store, T, "p", n).await.unwrap();
    }
    for changes in [&mut first, &mut second] {
        for _ in 1..=20 {
            assert_eq!(next_change(changes).await, Change::Secret("p".into()));
        }
    }
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
        /// Every test again as the ACL user `agentvault redis-acl` defines,
        /// for each tenant the suite uses: any command the store sends that
        /// is not in `SIDECAR_COMMANDS` fails here with NOPERM.
        mod redis_acl_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = crate::support::RedisServer::start();
                    let store = super::acl_store(&server);
                    super::$name(store).await;
                }
            )*
        }
        /// And as that ACL user on a three-node Redis Cluster.
        mod redis_cluster_acl_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let cluster = crate::support::cluster::RedisCluster::start();
                    let store = super::cluster_acl_store(&cluster);
                    super::$name(store).await;
                }
            )*
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

const ACL_PASSWORD: &str = "conformance-password";

/// The `ACL SETUSER` line of a user confined to the suite's tenants.
fn suite_acl_line() -> String {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(ACL_PASSWORD.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    acl_setuser("suite", &[T, "t1", "t2", "other", "other-tenant"], &digest)
}

fn acl_security() -> RedisSecurity {
    RedisSecurity {
        password: Some(RedisPassword::new(ACL_PASSWORD.into())),
        ..RedisSecurity::default()
    }
}

/// A Redis store that connects as an ACL user confined to the suite's tenants.
fn acl_store(server: &support::RedisServer) -> Arc<dyn Store> {
    support::security::run_acl_line(server, &suite_acl_line());
    Arc::new(RedisStore::with_security(
        RedisTarget::Standalone(server.user_url("suite")),
        acl_security(),
    ))
}

fn cluster_acl_store(cluster: &support::cluster::RedisCluster) -> Arc<dyn Store> {
    cluster.acl(&suite_acl_line());
    Arc::new(RedisStore::with_security(
        RedisTarget::Cluster(cluster.urls(Some("suite"))),
        acl_security(),
    ))
}

conformance!(
    reseal_swaps_only_the_expected_dek,
    reads_what_it_commits,
    stale_writes_conflict_and_change_nothing,
    metadata_only_commits_and_pruning,
    retention_reads_version_numbers_and_the_stamps_asked_for,
    delete_removes_everything,
    lists_by_prefix_in_order_after_a_cursor,
    tenants_are_isolated,
    racing_writers_never_share_a_version,
    fifty_reserved_writers_all_succeed_with_distinct_versions,
    an_unreserved_write_takes_only_the_next_free_number,
    a_write_that_commits_after_a_higher_number_stays_inactive,
    guarded_writes_refuse_a_changed_record_and_write_nothing,
    a_write_on_a_stale_base_is_rebased_onto_the_current_record,
    a_base_only_write_never_commits_on_a_replaced_base,
    an_idempotency_key_replays_the_first_answer_and_writes_nothing,
    a_writes_audit_event_is_stored_with_it_or_not_at_all,
    commit_all_is_all_or_nothing,
    claims_go_to_exactly_one_caller_until_they_lapse,
    audit_appends_in_order_and_reads_newest_first,
    audit_followers_wait_for_new_events_and_resume,
    audit_is_trimmed_to_about_max_len,
    every_write_announces_what_it_changed,
    every_subscriber_hears_every_change,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_change_stream_ends_when_its_connection_is_lost() {
    let server = support::RedisServer::start();
    let store = RedisStore::new(RedisTarget::Standalone(server.url()));
    let mut changes = store.changes(T).await.unwrap();
    write(&store, T, "a", 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Secret("a".into()));
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(killed, 1);
    let ended = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .expect("the stream notices the lost connection at once");
    assert_eq!(ended, None, "a lost subscription ends the stream");
    // A new subscription hears changes again.
    let mut again = store.changes(T).await.unwrap();
    write(&store, T, "a", 2).await.unwrap();
    assert_eq!(next_change(&mut again).await, Change::Secret("a".into()));
}

/// Redis forgets loaded scripts when it restarts or a replica takes over; a
/// write then finds its script unknown (`NOSCRIPT`), loads it and is applied
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_writes_reload_scripts_the_server_forgot() {
    let server = support::RedisServer::start();
    let store = RedisStore::new(RedisTarget::Standalone(server.url()));
    for n in 1..=2 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut server.connection())
            .unwrap();
        let write = version_write(
            "flushed",
            store.reserve_version(T, "flushed").await.unwrap(),
            "a",
        );
        assert!(store.write_version(T, &write).await.unwrap().applied());
        let (record, _) = store.read(T, "flushed", None).await.unwrap().unwrap();
        assert_eq!(record.latest_version, write.version.version, "write {n}");
    }
    assert_eq!(store.versions(T, "flushed").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_announces_every_tenants_changes_to_a_subscriber_on_any_node() {
    let cluster = support::cluster::RedisCluster::start();
    let store = RedisStore::new(RedisTarget::Cluster(cluster.urls(None)));
    // Tenants whose slots live on different nodes; the subscriber talks to one node.
    let tenants = ["acme", "globex", "initech", "umbrella", "hooli", "stark"];
    let mut streams = Vec::new();
    for tenant in tenants {
        streams.push(store.changes(tenant).await.unwrap());
    }
    let mut owners = std::collections::BTreeSet::new();
    for tenant in tenants {
        write(&store, tenant, "a", 1).await.unwrap();
        for url in cluster.urls(None) {
            let mut node = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            // Only the node that owns the slot answers; the others redirect.
            let held: Result<i64, _> = redis::cmd("EXISTS")
                .arg(format!("av:{{{tenant}}}:idx"))
                .query(&mut node);
            if held == Ok(1) {
                owners.insert(url);
            }
        }
    }
    assert!(owners.len() >= 2, "the tenants spread over the nodes");
    for tenant in tenants {
        assert!(store.delete(tenant, "a").await.unwrap());
    }
    for changes in &mut streams {
        assert_eq!(next_change(changes).await, Change::Secret("a".into()));
        assert_eq!(next_change(changes).await, Change::Secret("a".into()));
        no_more_changes(changes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_change_subscription_fails_when_unreachable() {
    let port = support::free_port();
    let store = RedisStore::new(RedisTarget::Standalone(format!(
        "redis://127.0.0.1:{port}/"
    )));
    assert!(matches!(
        store.changes(T).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Records written before the store kept a revision and a copy of the
/// active version (`rev` and `cur` beside `record`) read and write as before,
/// and the next write adds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_reads_and_writes_records_from_before_rev_and_cur() {
    let server = support::RedisServer::start();
    let store = RedisStore::new(RedisTarget::Standalone(server.url()));
    write(&store, T, "old", 1).await.unwrap();
    let mut raw = server.connection();
    let meta = format!("av:{{{T}}}:s:old");
    let added = |raw: &mut redis::Connection| -> Vec<Option<String>> {
        redis::cmd("HMGET")
            .arg(&meta)
            .arg("rev")
            .arg("cur")
            .query(raw)
            .unwrap()
    };
    assert!(added(&mut raw).iter().all(Option::is_some));
    let record: String = redis::cmd("HGET")
        .arg(&meta)
        .arg("record")
        .query(&mut raw)
        .unwrap();
    let mut legacy: serde_json::Value = serde_json::from_str(&record).unwrap();
    legacy.as_object_mut().unwrap().remove("revision");
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("record")
        .arg(legacy.to_string())
        .query(&mut raw)
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(&meta)
        .arg("rev")
        .arg("cur")
        .query(&mut raw)
        .unwrap();

    let (rec, active) = store.read(T, "old", None).await.unwrap().unwrap();
    assert!(rec.revision.is_empty());
    assert_eq!(active.unwrap().version, 1);
    let mut next = version_write("old", 2, "new");
    next.base = Some(rec);
    store.write_version(T, &next).await.unwrap();
    let (rec, active) = store.read(T, "old", None).await.unwrap().unwrap();
    assert_eq!((rec.latest_version, rec.tags["by"].as_str()), (2, "new"));
    assert!(!rec.revision.is_empty());
    assert_eq!(active.unwrap().version, 2);
    assert!(added(&mut raw).iter().all(Option::is_some));
}

/// An ACL user made by `redis-acl` before retention read version numbers
/// (no `hkeys`) still gets them, from the stamps, instead of failing writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_lists_version_numbers_for_an_acl_user_without_hkeys() {
    let server = support::RedisServer::start();
    support::security::run_acl_line(&server, &format!("{} -hkeys", suite_acl_line()));
    let store = RedisStore::with_security(
        RedisTarget::Standalone(server.user_url("suite")),
        acl_security(),
    );
    for n in 1..=3 {
        write(&store, T, "old-acl", n).await.unwrap();
    }
    assert_eq!(
        store.version_numbers(T, "old-acl").await.unwrap(),
        vec![1, 2, 3]
    );
}

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
