//! Embedded store: the same records in one redb file, for `agentvault dev` and
//! single-pod use. redb commits are durable and serialized, so a commit's
//! check-and-write is atomic and survives restarts; the file is locked to one process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{decode, encode, AuditFollower, Commit, Snapshot, Store, StoreError, TokenUse};
use crate::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, TokenRecord, VersionRecord,
};

/// (tenant, path) → JSON SecretRecord.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// (tenant, path, version) → JSON VersionRecord.
const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
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
}

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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(RECORDS).map_err(unavailable)?;
        txn.open_table(VERSIONS).map_err(unavailable)?;
        txn.open_table(CLAIMS).map_err(unavailable)?;
        txn.open_table(GRANTS).map_err(unavailable)?;
        txn.open_table(TOKENS).map_err(unavailable)?;
        txn.open_table(APPROVALS).map_err(unavailable)?;
        txn.open_table(AUDIT).map_err(unavailable)?;
        txn.open_table(AUDIT_LEN).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            appended: tokio::sync::watch::channel(0).0,
        })
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
            let record: SecretRecord = decode(&path, raw.value())?;
            let wanted = version.unwrap_or(record.active_version);
            let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
            let version = versions
                .get((tenant.as_str(), path.as_str(), wanted))
                .map_err(unavailable)?
                .map(|raw| decode(&path, raw.value()))
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

    async fn commit_all(&self, tenant: &str, commits: &[Commit]) -> Result<(), StoreError> {
        let (tenant, commits) = (tenant.to_owned(), commits.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                for commit in &commits {
                    let path = commit.record.path.as_str();
                    let current = match records.get((tenant.as_str(), path)).map_err(unavailable)? {
                        Some(raw) => decode::<SecretRecord>(path, raw.value())?.latest_version,
                        None => 0,
                    };
                    if current != commit.expected_latest {
                        // Dropping the transaction uncommitted discards every earlier commit.
                        return Err(StoreError::Conflict);
                    }
                    records
                        .insert((tenant.as_str(), path), encode(&commit.record).as_slice())
                        .map_err(unavailable)?;
                    for v in &commit.versions {
                        versions
                            .insert((tenant.as_str(), path, v.version), encode(v).as_slice())
                            .map_err(unavailable)?;
                    }
                    for old in &commit.prune {
                        versions
                            .remove((tenant.as_str(), path, *old))
                            .map_err(unavailable)?;
                    }
                }
            }
            txn.commit().map_err(unavailable)
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

    async fn delete(&self, tenant: &str, path: &str) -> Result<bool, StoreError> {
        let (tenant, path) = (tenant.to_owned(), path.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let existed = {
                let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                let existed = records
                    .remove((tenant.as_str(), path.as_str()))
                    .map_err(unavailable)?
                    .is_some();
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
                for id in doomed {
                    grants
                        .remove((tenant.as_str(), id.as_str()))
                        .map_err(unavailable)?;
                }
                existed
            };
            txn.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
    }

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError> {
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
        .await
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

    async fn delete_grant(&self, tenant: &str, grant_id: &str) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_owned(), grant_id.to_owned());
        self.write(move |txn| {
            let mut grants = txn.open_table(GRANTS).map_err(unavailable)?;
            let removed = grants
                .remove((tenant.as_str(), id.as_str()))
                .map_err(unavailable)?;
            Ok(removed.is_some())
        })
        .await
    }

    async fn create_token(
        &self,
        tenant: &str,
        token: &TokenRecord,
        approval: Option<&ApprovalRecord>,
    ) -> Result<(), StoreError> {
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
        .await
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
        let (tenant, decided) = (tenant.to_owned(), decided.clone());
        self.write(move |txn| {
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
        .await
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
                out.push(decode(path, raw.value())?);
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
        let (tenant, raw): (String, Vec<Vec<u8>>) =
            (tenant.to_owned(), events.iter().map(encode).collect());
        let max_len = max_len.max(1) as u64;
        let ids = self
            .write(move |txn| {
                let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
                let mut lens = txn.open_table(AUDIT_LEN).map_err(unavailable)?;
                let t = tenant.as_str();
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
                for event in &raw {
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
                let mut len =
                    lens.get(t).map_err(unavailable)?.map_or(0, |l| l.value()) + raw.len() as u64;
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
            })
            .await?;
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(ids)
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
}
