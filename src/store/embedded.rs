//! Embedded store: the same records in one redb file, for `agentvault dev` and
//! single-pod use. redb commits are durable and serialized, so a commit's
//! check-and-write is atomic and survives restarts; the file is locked to one process.
//!
//! redb's page cache is bounded ([`CACHE_BYTES`]): its default (1 GiB) let a
//! write storm grow the process by the size of the pages it touched, never
//! to be returned. Warm reads do not need it: the sealed-record cache in front
//! of the store ([`super::CachedStore`]) answers them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    decode, decode_with, encode, AuditFollower, Change, ChangeStream, Commit, IdempotencyRecord,
    Idempotent, Snapshot, Store, StoreError, TokenUse, VersionWrite, WriteOutcome,
};
use crate::crypto::Sealed;
use crate::model::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, TokenRecord, VersionRecord,
};

/// The most memory redb keeps for cached pages of the file (reads and
/// writes together).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// (tenant, path) → JSON SecretRecord.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// (tenant, path, version) → JSON VersionRecord.
const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
/// (tenant, path) → the highest version number reserved.
const NEXT_VERSION: TableDefinition<(&str, &str), u64> = TableDefinition::new("next_version");
/// (tenant, idempotency key) → JSON StoredAnswer.
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (tenant, expiry in Unix ms, idempotency key): the same keys in expiry
/// order, so each write sweeps a few expired ones and the table stays bounded.
const IDEMPOTENCY_EXPIRY: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("idempotency_expiry");
/// How many expired idempotency records one write removes at most.
const IDEMPOTENCY_SWEEP: usize = 16;
/// (tenant, claim name) → held until, in Unix milliseconds.
const CLAIMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("claims");
/// (tenant, grant id) → JSON Grant.
const GRANTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("grants");
/// (tenant, token hash) → JSON StoredToken.
const TOKENS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tokens");
/// (tenant, approval id) → JSON ApprovalRecord.
const APPROVALS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("approvals");
/// (tenant, millis, seq) → JSON AuditEvent: ids in the same `<millis>-<seq>`
/// form and order as a Redis stream's.
const AUDIT: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("audit");
/// tenant → number of audit events kept, so trimming needs no count.
const AUDIT_LEN: TableDefinition<&str, u64> = TableDefinition::new("audit_len");

#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    expires_ms: u64,
    answer: Vec<u8>,
}

/// The unexpired answer stored under `key`.
fn stored_answer(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    tenant: &str,
    key: &str,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(raw) = table.get((tenant, key)).map_err(unavailable)? else {
        return Ok(None);
    };
    let stored: StoredAnswer = decode("idempotency", raw.value())?;
    Ok((stored.expires_ms > now_ms).then_some(stored.answer))
}

/// The unexpired answer under `once`'s key, read in a write's transaction:
/// if there is one, that write must not run again.
fn prior_answer_in(
    txn: &redb::WriteTransaction,
    tenant: &str,
    once: Option<&IdempotencyRecord>,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(once) = once else {
        return Ok(None);
    };
    let answers = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
    stored_answer(&answers, tenant, &once.key, now_ms)
}

/// Stores `once`'s answer in the write's own transaction, and sweeps a few
/// expired answers so the table stays bounded.
fn keep_answer_in(
    txn: &redb::WriteTransaction,
    tenant: &str,
    once: &IdempotencyRecord,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut answers = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
    let mut expiry = txn.open_table(IDEMPOTENCY_EXPIRY).map_err(unavailable)?;
    let expires_ms = now_ms.saturating_add(once.ttl.as_millis() as u64);
    let stored = StoredAnswer {
        expires_ms,
        answer: once.answer.clone(),
    };
    answers
        .insert((tenant, once.key.as_str()), encode(&stored).as_slice())
        .map_err(unavailable)?;
    expiry
        .insert((tenant, expires_ms, once.key.as_str()), ())
        .map_err(unavailable)?;
    let expired: Vec<(u64, String)> = expiry
        .range((tenant, 0, "")..(tenant, now_ms, ""))
        .map_err(unavailable)?
        .take(IDEMPOTENCY_SWEEP)
        .map(|entry| {
            let (key, _) = entry.map_err(unavailable)?;
            let (_, at, name) = key.value();
            Ok((at, name.to_owned()))
        })
        .collect::<Result<_, StoreError>>()?;
    for (at, name) in expired {
        expiry
            .remove((tenant, at, name.as_str()))
            .map_err(unavailable)?;
        if stored_answer(&answers, tenant, &name, now_ms)?.is_none() {
            answers
                .remove((tenant, name.as_str()))
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    record: TokenRecord,
    uses: Option<u64>,
}

/// Every value of a (tenant, id) table that belongs to `tenant`.
fn tenant_values<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    tenant: &str,
    what: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range((tenant, "")..).map_err(unavailable)? {
        let (key, raw) = entry.map_err(unavailable)?;
        let (t, id) = key.value();
        if t != tenant {
            break;
        }
        out.push((id.to_owned(), decode(what, raw.value())?));
    }
    Ok(out)
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Bumped after every audit append, so followers wake without polling.
    appended: tokio::sync::watch::Sender<u64>,
    /// Every tenant's changes, sent once their transaction has committed.
    changes: tokio::sync::broadcast::Sender<(Arc<str>, Change)>,
}

/// Announcements a slow subscriber may fall behind by before it is told to resync.
const CHANGE_BACKLOG: usize = 1024;

/// Up to `limit` of `tenant`'s audit events after `after`, oldest first.
fn audit_after(
    db: &Database,
    tenant: &str,
    after: AuditId,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let audit = txn.open_table(AUDIT).map_err(unavailable)?;
    let mut out = Vec::new();
    let range = audit
        .range((tenant, after.ms, after.seq)..=(tenant, u64::MAX, u64::MAX))
        .map_err(unavailable)?;
    for entry in range {
        let (key, raw) = entry.map_err(unavailable)?;
        let (_, ms, seq) = key.value();
        let id = AuditId { ms, seq };
        if id == after {
            continue;
        }
        if out.len() == limit {
            break;
        }
        out.push(AuditEntry {
            id,
            event: decode("audit", raw.value())?,
        });
    }
    Ok(out)
}

/// Appends encoded events to `tenant`'s audit stream inside `txn`, with ids
/// like a Redis stream's, trimming it to about `max_len`.
fn append_audit_in(
    txn: &redb::WriteTransaction,
    tenant: &str,
    raw: &[Vec<u8>],
    max_len: u64,
) -> Result<Vec<AuditId>, StoreError> {
    let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
    let mut lens = txn.open_table(AUDIT_LEN).map_err(unavailable)?;
    let t = tenant;
    let mut last = audit
        .range((t, 0, 0)..=(t, u64::MAX, u64::MAX))
        .map_err(unavailable)?
        .next_back()
        .transpose()
        .map_err(unavailable)?
        .map(|(key, _)| {
            let (_, ms, seq) = key.value();
            AuditId { ms, seq }
        })
        .unwrap_or(AuditId::START);
    let now = unix_millis(SystemTime::now());
    let mut ids = Vec::with_capacity(raw.len());
    for event in raw {
        // Like Redis: the clock's millisecond, or the last id's
        // with the next sequence number if the clock is behind.
        let id = if now > last.ms {
            AuditId { ms: now, seq: 0 }
        } else {
            AuditId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        };
        audit
            .insert((t, id.ms, id.seq), event.as_slice())
            .map_err(unavailable)?;
        ids.push(id);
        last = id;
    }
    let mut len = lens.get(t).map_err(unavailable)?.map_or(0, |l| l.value()) + raw.len() as u64;
    // Trimmed in steps, like Redis's `MAXLEN ~`.
    if len > max_len + max_len / 10 {
        let excess = len - max_len;
        let doomed: Vec<(u64, u64)> = audit
            .range((t, 0, 0)..=(t, u64::MAX, u64::MAX))
            .map_err(unavailable)?
            .take(excess as usize)
            .map(|entry| {
                entry.map(|(key, _)| {
                    let (_, ms, seq) = key.value();
                    (ms, seq)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        for (ms, seq) in doomed {
            audit.remove((t, ms, seq)).map_err(unavailable)?;
            len -= 1;
        }
    }
    lens.insert(t, len).map_err(unavailable)?;
    Ok(ids)
}

struct EmbeddedFollower {
    db: Arc<Database>,
    tenant: String,
    appended: tokio::sync::watch::Receiver<u64>,
}

#[async_trait]
impl AuditFollower for EmbeddedFollower {
    async fn after(
        &mut self,
        after: AuditId,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Marked seen before reading, so an append after the read wakes us.
            self.appended.borrow_and_update();
            let (db, tenant) = (self.db.clone(), self.tenant.clone());
            let found =
                tokio::task::spawn_blocking(move || audit_after(&db, &tenant, after, limit.max(1)))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))??;
            if !found.is_empty() {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the store is gone.
                _ => return Ok(Vec::new()),
            }
        }
    }
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file; fails if another process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The data dir and the store file are the owner's alone (0700/0600),
        // whatever the umask.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsmode::private_dir(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        crate::fsmode::private_file(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(RECORDS).map_err(unavailable)?;
        txn.open_table(VERSIONS).map_err(unavailable)?;
        txn.open_table(CLAIMS).map_err(unavailable)?;
        txn.open_table(NEXT_VERSION).map_err(unavailable)?;
        txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
        txn.open_table(IDEMPOTENCY_EXPIRY).map_err(unavailable)?;
        txn.open_table(GRANTS).map_err(unavailable)?;
        txn.open_table(TOKENS).map_err(unavailable)?;
        txn.open_table(APPROVALS).map_err(unavailable)?;
        txn.open_table(AUDIT).map_err(unavailable)?;
        txn.open_table(AUDIT_LEN).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            appended: tokio::sync::watch::channel(0).0,
            changes: tokio::sync::broadcast::channel(CHANGE_BACKLOG).0,
        })
    }

    /// Tells this process's subscribers of `tenant` about a committed change.
    fn announce(&self, tenant: &str, change: Change) {
        // No subscriber is not an error.
        let _ = self.changes.send((Arc::from(tenant), change));
    }

    /// Runs blocking redb work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// Runs `work` in one write transaction and commits it if `work` succeeds.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let out = work(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.begin_read().map(drop).map_err(unavailable))
            .await
    }

    async fn read(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let (tenant, path) = (tenant.to_owned(), path.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let records = txn.open_table(RECORDS).map_err(unavailable)?;
            let Some(raw) = records
                .get((tenant.as_str(), path.as_str()))
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let record = decode_with(&path, raw.value(), SecretRecord::from_json)?;
            let wanted = version.unwrap_or(record.active_version);
            let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
            let version = versions
                .get((tenant.as_str(), path.as_str(), wanted))
                .map_err(unavailable)?
                .map(|raw| decode_with(&path, raw.value(), VersionRecord::from_json))
                .transpose()?;
            Ok(Some((record, version)))
        })
        .await
    }

    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let (tenant, path) = (tenant.to_owned(), path.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
            let range = versions
                .range(
                    (tenant.as_str(), path.as_str(), 0)
                        ..=(tenant.as_str(), path.as_str(), u64::MAX),
                )
                .map_err(unavailable)?;
            range
                .map(|entry| {
                    let (_, raw) = entry.map_err(unavailable)?;
                    decode(&path, raw.value())
                })
                .collect()
        })
        .await
    }

    async fn commit_all_once(
        &self,
        tenant: &str,
        commits: &[Commit],
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<()>, StoreError> {
        let paths: Vec<String> = commits.iter().map(|c| c.record.path.clone()).collect();
        let announced = tenant;
        let (tenant, commits, once) = (tenant.to_owned(), commits.to_vec(), once.cloned());
        let outcome = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(unavailable)?;
                let now = unix_millis(SystemTime::now());
                if let Some(prior) = prior_answer_in(&txn, &tenant, once.as_ref(), now)? {
                    return Ok(Idempotent::Replayed(prior));
                }
                {
                    let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                    let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                    for commit in &commits {
                        let path = commit.record.path.as_str();
                        let current =
                            match records.get((tenant.as_str(), path)).map_err(unavailable)? {
                                Some(raw) => {
                                    decode_with(path, raw.value(), SecretRecord::from_json)?
                                        .latest_version
                                }
                                None => 0,
                            };
                        let new_latest = commit.record.latest_version;
                        let taken = new_latest != current
                            && versions
                                .get((tenant.as_str(), path, new_latest))
                                .map_err(unavailable)?
                                .is_some();
                        if current != commit.expected_latest || taken {
                            // Dropping the transaction uncommitted discards every earlier commit.
                            return Err(StoreError::Conflict);
                        }
                        records
                            .insert((tenant.as_str(), path), commit.record.to_json().as_slice())
                            .map_err(unavailable)?;
                        for v in &commit.versions {
                            versions
                                .insert((tenant.as_str(), path, v.version), v.to_json().as_slice())
                                .map_err(unavailable)?;
                        }
                        for old in &commit.prune {
                            versions
                                .remove((tenant.as_str(), path, *old))
                                .map_err(unavailable)?;
                        }
                    }
                }
                if let Some(once) = &once {
                    keep_answer_in(&txn, &tenant, once, now)?;
                }
                txn.commit().map_err(unavailable)?;
                Ok(Idempotent::Applied(()))
            })
            .await?;
        if outcome == Idempotent::Applied(()) {
            for path in paths {
                self.announce(announced, Change::Secret(path));
            }
        }
        Ok(outcome)
    }

    async fn reserve_version(&self, tenant: &str, path: &str) -> Result<u64, StoreError> {
        let (tenant, path) = (tenant.to_owned(), path.to_owned());
        self.write(move |txn| {
            let records = txn.open_table(RECORDS).map_err(unavailable)?;
            let latest = match records
                .get((tenant.as_str(), path.as_str()))
                .map_err(unavailable)?
            {
                Some(raw) => {
                    decode_with(&path, raw.value(), SecretRecord::from_json)?.latest_version
                }
                None => 0,
            };
            let mut next = txn.open_table(NEXT_VERSION).map_err(unavailable)?;
            let reserved = next
                .get((tenant.as_str(), path.as_str()))
                .map_err(unavailable)?
                .map_or(0, |v| v.value());
            let version = latest.max(reserved) + 1;
            next.insert((tenant.as_str(), path.as_str()), version)
                .map_err(unavailable)?;
            Ok(version)
        })
        .await
    }

    async fn write_version(
        &self,
        tenant: &str,
        write: &VersionWrite,
    ) -> Result<WriteOutcome, StoreError> {
        let announced = tenant;
        let write_audited = write.audit.is_some();
        let (tenant, write) = (tenant.to_owned(), write.clone());
        let path = write.initial.path.clone();
        let outcome = self
            .write(move |txn| {
                let now = unix_millis(SystemTime::now());
                let t = tenant.as_str();
                let p = write.initial.path.as_str();
                if let Some(prior) = prior_answer_in(txn, t, write.idempotency.as_ref(), now)? {
                    return Ok(WriteOutcome::Replayed(prior));
                }
                let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                let number = write.version.version;
                let encoded = write.version.to_json();
                if let Some(taken) = versions.get((t, p, number)).map_err(unavailable)? {
                    // The same write sent twice is done; another one under this number is a race.
                    return if taken.value() == encoded.as_slice() {
                        Ok(WriteOutcome::Applied)
                    } else {
                        Err(StoreError::Conflict)
                    };
                }
                let current = records
                    .get((t, p))
                    .map_err(unavailable)?
                    .map(|raw| decode_with(p, raw.value(), SecretRecord::from_json))
                    .transpose()?;
                if !write.reserved {
                    let latest = current.as_ref().map_or(0, |r| r.latest_version);
                    let reserved = txn
                        .open_table(NEXT_VERSION)
                        .map_err(unavailable)?
                        .get((t, p))
                        .map_err(unavailable)?
                        .map_or(0, |v| v.value());
                    if latest.max(reserved) + 1 != number {
                        return Err(StoreError::Conflict);
                    }
                }
                if write.base_only && current != write.base {
                    return Ok(WriteOutcome::Stale);
                }
                if !write.guard.admits(current.as_ref(), &write.initial) {
                    return Err(StoreError::Conflict);
                }
                let (record, dropped) = write.outcome(current);
                for old in dropped {
                    versions.remove((t, p, old)).map_err(unavailable)?;
                }
                versions
                    .insert((t, p, number), encoded.as_slice())
                    .map_err(unavailable)?;
                records
                    .insert((t, p), record.to_json().as_slice())
                    .map_err(unavailable)?;
                if let Some(once) = &write.idempotency {
                    keep_answer_in(txn, t, once, now)?;
                }
                if let Some(audit) = &write.audit {
                    let event = [audit.event.to_json()];
                    append_audit_in(txn, t, &event, audit.max_len.max(1) as u64)?;
                }
                Ok(WriteOutcome::Applied)
            })
            .await?;
        if outcome == WriteOutcome::Applied {
            self.announce(announced, Change::Secret(path));
            if write_audited {
                self.appended.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        Ok(outcome)
    }

    async fn idempotent_answer(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (tenant, key) = (tenant.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let answers = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
            stored_answer(&answers, &tenant, &key, unix_millis(SystemTime::now()))
        })
        .await
    }

    async fn claim(&self, tenant: &str, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (tenant, key) = (tenant.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let now = unix_millis(SystemTime::now());
            let txn = db.begin_write().map_err(unavailable)?;
            let won = {
                let mut claims = txn.open_table(CLAIMS).map_err(unavailable)?;
                let held = claims
                    .get((tenant.as_str(), key.as_str()))
                    .map_err(unavailable)?
                    .is_some_and(|until| until.value() > now);
                if !held {
                    let until = now.saturating_add(ttl.as_millis() as u64);
                    claims
                        .insert((tenant.as_str(), key.as_str()), until)
                        .map_err(unavailable)?;
                }
                !held
            };
            txn.commit().map_err(unavailable)?;
            Ok(won)
        })
        .await
    }

    async fn delete_once(
        &self,
        tenant: &str,
        path: &str,
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<bool>, StoreError> {
        let announced = tenant;
        let (tenant, path, once) = (tenant.to_owned(), path.to_owned(), once.cloned());
        let deleted = path.clone();
        let outcome = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(unavailable)?;
                let now = unix_millis(SystemTime::now());
                if let Some(prior) = prior_answer_in(&txn, &tenant, once.as_ref(), now)? {
                    return Ok(Err(prior));
                }
                let existed = {
                    let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                    let existed = records
                        .remove((tenant.as_str(), path.as_str()))
                        .map_err(unavailable)?
                        .is_some();
                    txn.open_table(NEXT_VERSION)
                        .map_err(unavailable)?
                        .remove((tenant.as_str(), path.as_str()))
                        .map_err(unavailable)?;
                    let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                    versions
                        .retain_in(
                            (tenant.as_str(), path.as_str(), 0)
                                ..=(tenant.as_str(), path.as_str(), u64::MAX),
                            |_, _| false,
                        )
                        .map_err(unavailable)?;
                    let mut grants = txn.open_table(GRANTS).map_err(unavailable)?;
                    let doomed: Vec<String> = tenant_values::<Grant>(&grants, &tenant, "grants")?
                        .into_iter()
                        .filter(|(_, g)| g.path == path)
                        .map(|(id, _)| id)
                        .collect();
                    for id in &doomed {
                        grants
                            .remove((tenant.as_str(), id.as_str()))
                            .map_err(unavailable)?;
                    }
                    (existed, !doomed.is_empty())
                };
                if let Some(once) = once.as_ref().filter(|_| existed.0) {
                    keep_answer_in(&txn, &tenant, once, now)?;
                }
                txn.commit().map_err(unavailable)?;
                Ok(Ok(existed))
            })
            .await?;
        let (existed, dropped_grants) = match outcome {
            Ok(done) => done,
            Err(prior) => return Ok(Idempotent::Replayed(prior)),
        };
        self.announce(announced, Change::Secret(deleted));
        if dropped_grants {
            self.announce(announced, Change::Grants);
        }
        Ok(Idempotent::Applied(existed))
    }

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError> {
        let announced = tenant;
        let (tenant, grant) = (tenant.to_owned(), grant.clone());
        self.write(move |txn| {
            let mut grants = txn.open_table(GRANTS).map_err(unavailable)?;
            grants
                .insert(
                    (tenant.as_str(), grant.grant_id.as_str()),
                    encode(&grant).as_slice(),
                )
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        self.announce(announced, Change::Grants);
        Ok(())
    }

    async fn grants(&self, tenant: &str) -> Result<Vec<Grant>, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let grants = txn.open_table(GRANTS).map_err(unavailable)?;
            Ok(tenant_values(&grants, &tenant, "grants")?
                .into_iter()
                .map(|(_, g)| g)
                .collect())
        })
        .await
    }

    async fn reseal(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        expected: &Sealed,
        rewrapped: &Sealed,
    ) -> Result<bool, StoreError> {
        let announced = (tenant, path);
        let (tenant, path) = (tenant.to_owned(), path.to_owned());
        let (expected, rewrapped) = (expected.clone(), rewrapped.clone());
        let resealed = self
            .write(move |txn| {
                let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                let key = (tenant.as_str(), path.as_str(), version);
                let current = match versions.get(key).map_err(unavailable)? {
                    Some(raw) => decode_with(&path, raw.value(), VersionRecord::from_json)?,
                    None => return Ok(false),
                };
                if current.sealed.kek_id != expected.kek_id
                    || current.sealed.wrapped_dek != expected.wrapped_dek
                {
                    return Ok(false);
                }
                let mut updated = current;
                updated.sealed.kek_id = rewrapped.kek_id;
                updated.sealed.wrapped_dek = rewrapped.wrapped_dek;
                versions
                    .insert(key, updated.to_json().as_slice())
                    .map_err(unavailable)?;
                Ok(true)
            })
            .await?;
        if resealed {
            self.announce(announced.0, Change::Secret(announced.1.to_owned()));
        }
        Ok(resealed)
    }

    async fn delete_grant(&self, tenant: &str, grant_id: &str) -> Result<bool, StoreError> {
        let announced = tenant;
        let (tenant, id) = (tenant.to_owned(), grant_id.to_owned());
        let removed = self
            .write(move |txn| {
                let mut grants = txn.open_table(GRANTS).map_err(unavailable)?;
                let removed = grants
                    .remove((tenant.as_str(), id.as_str()))
                    .map_err(unavailable)?;
                Ok(removed.is_some())
            })
            .await?;
        if removed {
            self.announce(announced, Change::Grants);
        }
        Ok(removed)
    }

    async fn create_token(
        &self,
        tenant: &str,
        token: &TokenRecord,
        approval: Option<&ApprovalRecord>,
    ) -> Result<(), StoreError> {
        let announced = tenant;
        let (tenant, token, approval) = (tenant.to_owned(), token.clone(), approval.cloned());
        self.write(move |txn| {
            let stored = StoredToken {
                uses: token.max_uses,
                record: token,
            };
            let mut tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            tokens
                .insert(
                    (tenant.as_str(), stored.record.hash.as_str()),
                    encode(&stored).as_slice(),
                )
                .map_err(unavailable)?;
            if let Some(a) = approval {
                let mut approvals = txn.open_table(APPROVALS).map_err(unavailable)?;
                approvals
                    .insert(
                        (tenant.as_str(), a.approval_id.as_str()),
                        encode(&a).as_slice(),
                    )
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await?;
        self.announce(announced, Change::Tokens);
        Ok(())
    }

    async fn use_token(
        &self,
        tenant: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        let (tenant, hash) = (tenant.to_owned(), hash.to_owned());
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let Some(mut stored) = tokens
                .get((tenant.as_str(), hash.as_str()))
                .map_err(unavailable)?
                .map(|raw| decode::<StoredToken>("token", raw.value()))
                .transpose()?
            else {
                return Ok(TokenUse::Unknown);
            };
            if stored.record.expires_at <= now {
                return Ok(TokenUse::Expired);
            }
            if let Some(id) = &stored.record.approval_id {
                let approvals = txn.open_table(APPROVALS).map_err(unavailable)?;
                let status = approvals
                    .get((tenant.as_str(), id.as_str()))
                    .map_err(unavailable)?
                    .map(|raw| decode::<ApprovalRecord>("approval", raw.value()))
                    .transpose()?
                    .map_or(ApprovalStatus::Pending, |a| a.status);
                if status != ApprovalStatus::Approved {
                    return Ok(TokenUse::NotApproved(status));
                }
            }
            match stored.uses {
                Some(0) => return Ok(TokenUse::Exhausted),
                Some(n) => stored.uses = Some(n - 1),
                None => {}
            }
            tokens
                .insert((tenant.as_str(), hash.as_str()), encode(&stored).as_slice())
                .map_err(unavailable)?;
            Ok(TokenUse::Spent {
                uses_remaining: stored.uses,
                record: Box::new(stored.record),
            })
        })
        .await
    }

    async fn approvals(&self, tenant: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let approvals = txn.open_table(APPROVALS).map_err(unavailable)?;
            Ok(tenant_values(&approvals, &tenant, "approvals")?
                .into_iter()
                .map(|(_, a)| a)
                .collect())
        })
        .await
    }

    async fn decide_approval(
        &self,
        tenant: &str,
        decided: &ApprovalRecord,
    ) -> Result<bool, StoreError> {
        let announced = tenant;
        let (tenant, decided) = (tenant.to_owned(), decided.clone());
        let applied = self
            .write(move |txn| {
                let mut approvals = txn.open_table(APPROVALS).map_err(unavailable)?;
                let key = (tenant.as_str(), decided.approval_id.as_str());
                let pending = approvals
                    .get(key)
                    .map_err(unavailable)?
                    .map(|raw| decode::<ApprovalRecord>("approval", raw.value()))
                    .transpose()?
                    .is_some_and(|a| a.status == ApprovalStatus::Pending);
                if pending {
                    approvals
                        .insert(key, encode(&decided).as_slice())
                        .map_err(unavailable)?;
                }
                Ok(pending)
            })
            .await?;
        if applied {
            self.announce(announced, Change::Tokens);
        }
        Ok(applied)
    }

    async fn list(
        &self,
        tenant: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        let (tenant, prefix, after) = (
            tenant.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let records = txn.open_table(RECORDS).map_err(unavailable)?;
            let start = match after.as_deref() {
                Some(after) if after >= prefix.as_str() => after,
                _ => prefix.as_str(),
            };
            let mut out = Vec::new();
            for entry in records
                .range((tenant.as_str(), start)..)
                .map_err(unavailable)?
            {
                let (key, raw) = entry.map_err(unavailable)?;
                let (t, path) = key.value();
                if t != tenant || !path.starts_with(prefix.as_str()) || out.len() == limit {
                    break;
                }
                if after.as_deref() == Some(path) {
                    continue;
                }
                out.push(decode_with(path, raw.value(), SecretRecord::from_json)?);
            }
            Ok(out)
        })
        .await
    }

    async fn append_audit(
        &self,
        tenant: &str,
        events: &[AuditEvent],
        max_len: usize,
    ) -> Result<Vec<AuditId>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (tenant, raw): (String, Vec<Vec<u8>>) = (
            tenant.to_owned(),
            events.iter().map(AuditEvent::to_json).collect(),
        );
        let max_len = max_len.max(1) as u64;
        let ids = self
            .write(move |txn| append_audit_in(txn, &tenant, &raw, max_len))
            .await?;
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(ids)
    }

    async fn audit_after(
        &self,
        tenant: &str,
        after: AuditId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |db| audit_after(db, &tenant, after, limit))
            .await
    }

    async fn audit_newest(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let audit = txn.open_table(AUDIT).map_err(unavailable)?;
            let t = tenant.as_str();
            let mut out = Vec::new();
            for entry in audit
                .range((t, 0, 0)..=(t, u64::MAX, u64::MAX))
                .map_err(unavailable)?
                .rev()
                .take(limit.max(1))
            {
                let (key, raw) = entry.map_err(unavailable)?;
                let (_, ms, seq) = key.value();
                out.push(AuditEntry {
                    id: AuditId { ms, seq },
                    event: decode("audit", raw.value())?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn audit_follower(&self, tenant: &str) -> Result<Box<dyn AuditFollower>, StoreError> {
        Ok(Box::new(EmbeddedFollower {
            db: self.db.clone(),
            tenant: tenant.to_owned(),
            appended: self.appended.subscribe(),
        }))
    }

    async fn changes(&self, tenant: &str) -> Result<ChangeStream, StoreError> {
        let receiver = self.changes.subscribe();
        let tenant: Arc<str> = Arc::from(tenant);
        let stream = futures_util::stream::unfold(receiver, move |mut receiver| {
            let tenant = tenant.clone();
            async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match receiver.recv().await {
                        Ok((of, change)) if of == tenant => return Some((change, receiver)),
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => return Some((Change::Resync, receiver)),
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(ChangeStream::new(stream))
    }
}
