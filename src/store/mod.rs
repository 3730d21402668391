//! Persistence of sealed secret records. Two implementations, Redis (shared by
//! every sidecar) and an embedded file store (dev and single-pod use), keep the
//! same records and pass the same conformance suite (`tests/store_conformance.rs`).
//! Only ciphertext and metadata ever reach a store.

mod cache;
mod changes;
mod embedded;
mod redis;

pub use self::cache::{CacheSettings, CacheTelemetry, CachedStore, NoCacheTelemetry};
pub use self::changes::{follow_changes, Change, ChangeStream};
pub use self::embedded::EmbeddedStore;
pub use self::redis::{
    acl_setuser, RedisPassword, RedisSecurity, RedisStore, RedisTarget, RedisTls, SIDECAR_CHANNELS,
    SIDECAR_COMMANDS,
};

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::crypto::Sealed;
use crate::model::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, SecretType, Tier, TokenRecord,
    VersionRecord, VersionStamp,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or failed the operation; nothing was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The record changed since the caller read it; nothing was written.
    #[error("the record changed concurrently")]
    Conflict,
    /// A stored record could not be decoded.
    #[error("corrupt record for `{path}`: {reason}")]
    Corrupt { path: String, reason: String },
}

/// A write of one secret: its new metadata, the version records it adds or
/// replaces, and the versions it drops.
#[derive(Debug, Clone)]
pub struct Commit {
    pub record: SecretRecord,
    /// Version records to insert or replace (a new version, or an old one
    /// given a grace-period expiry by a rotation).
    pub versions: Vec<VersionRecord>,
    /// The `latest_version` the writer read; 0 when the secret must not exist
    /// yet. A mismatch fails with [`StoreError::Conflict`] and writes nothing.
    pub expected_latest: u64,
    /// Old versions to drop in the same transaction (history retention).
    pub prune: Vec<u64>,
}

/// A write of one new version whose number was reserved with
/// [`Store::reserve_version`], or is claimed by the write itself. It
/// carries no expectation about the current record: a reserved number
/// cannot collide with another writer's, and the store applies `patch` to
/// whatever record is current when it commits, so racing writers all
/// succeed. Only a change of what the writer's authorization was decided on
/// (`guard`), or a claimed number that is no longer the next free one, fails
/// it, with [`StoreError::Conflict`].
#[derive(Debug, Clone)]
pub struct VersionWrite {
    pub version: VersionRecord,
    /// Whether `version`'s number was reserved. If not, the write takes it
    /// only while it is the next free number (one above every version
    /// written or reserved): one round trip fewer for a write nobody races,
    /// and a conflict, to retry with a reservation, for one that is raced.
    pub reserved: bool,
    /// The record to create if the secret does not exist when the write commits.
    pub initial: SecretRecord,
    /// The record the writer read (`None`: there was none). While it is still
    /// current, a store may commit [`VersionWrite::outcome`] on it as is
    /// instead of applying `patch` to what it finds: the same result, without
    /// re-reading and re-encoding the record inside the commit.
    pub base: Option<SecretRecord>,
    /// Commit only on `base`: if it is no longer current, write nothing and
    /// answer [`WriteOutcome::Stale`] instead of applying `patch` to what is.
    /// For a writer whose base is a guess (what its own last write left),
    /// whose checks must then be made again on what the store holds.
    pub base_only: bool,
    pub patch: RecordPatch,
    pub guard: Guard,
    /// Old versions to drop (history retention); never the one left active.
    pub prune: Vec<u64>,
    /// Stored in the same atomic step as the write, when the request carried a key.
    pub idempotency: Option<IdempotencyRecord>,
    /// The write's audit event, appended to the tenant's stream in the same
    /// atomic step: a crash can lose neither without the other.
    pub audit: Option<AuditAppend>,
}

impl VersionWrite {
    /// The record this write leaves when it commits on top of `current`
    /// (`None`: the secret does not exist), and the old versions it drops:
    /// `prune`, less the version left active and its own.
    pub fn outcome(&self, current: Option<SecretRecord>) -> (SecretRecord, Vec<u64>) {
        let number = self.version.version;
        let mut record = match current {
            Some(mut record) => {
                self.patch.apply(&mut record, number);
                record
            }
            None => self.initial.clone(),
        };
        let dropped: Vec<u64> = self
            .prune
            .iter()
            .copied()
            .filter(|old| *old != record.active_version && *old != number)
            .collect();
        for old in &dropped {
            record.retired_expiry.remove(old);
        }
        (record, dropped)
    }
}

/// One audit event to append with a write, and the stream's length cap.
#[derive(Debug, Clone)]
pub struct AuditAppend {
    pub event: AuditEvent,
    pub max_len: usize,
}

/// The fields a write of a new version changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordPatch {
    pub updated_at: DateTime<Utc>,
    /// The new version's expiry, `None` for none (always replaces the old one).
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<SecretType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl RecordPatch {
    /// Applies the write of `version` to `record`: the highest version number
    /// written is the active one, so a write that commits after a higher
    /// number did only adds its version, retired with its own expiry. The
    /// Redis store's `PUT_VERSION` script does exactly the same.
    pub fn apply(&self, record: &mut SecretRecord, version: u64) {
        if version < record.latest_version {
            if let Some(at) = self.expires_at {
                record.retired_expiry.insert(version, at);
            }
            return;
        }
        record.activate(version, self.expires_at);
        record.latest_version = version;
        record.updated_at = self.updated_at;
        if let Some(t) = self.secret_type {
            record.secret_type = t;
        }
        if let Some(t) = self.tier {
            record.tier = t;
        }
        if let Some(d) = &self.description {
            record.description = Some(d.clone());
        }
        if let Some(t) = &self.tags {
            record.tags = t.clone();
        }
        if let Some(s) = &self.scope {
            record.scope = Some(s.clone());
        }
    }
}

/// What a policy decision on a secret depends on: a write commits only if
/// these are still what the writer was authorized against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Guard {
    pub owner: String,
    pub scope: Option<String>,
    pub tier: Tier,
    /// The active version the write requires (a compare-and-set; 0: no
    /// secret yet), or any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<u64>,
}

impl Guard {
    /// The guard of a write authorized against `record`, with no compare-and-set.
    pub fn of(record: &SecretRecord) -> Self {
        Self {
            owner: record.owner.clone(),
            scope: record.scope.clone(),
            tier: record.tier,
            active: None,
        }
    }

    /// Whether a write authorized under this guard may commit on top of
    /// `current` (or create `initial` when there is none).
    pub fn admits(&self, current: Option<&SecretRecord>, initial: &SecretRecord) -> bool {
        let record = current.unwrap_or(initial);
        record.owner == self.owner
            && record.scope == self.scope
            && record.tier == self.tier
            && self
                .active
                .is_none_or(|a| a == current.map_or(0, |r| r.active_version))
    }
}

/// The first answer to a write that carried an `Idempotency-Key`, kept for
/// `ttl` under the tenant's keys so a retry on any sidecar gets it back.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub key: String,
    /// Opaque to the store (the vault's JSON); never holds a secret value.
    pub answer: Vec<u8>,
    pub ttl: std::time::Duration,
}

/// How a write that may carry an [`IdempotencyRecord`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent<T> {
    /// Written (with its record, if it had one).
    Applied(T),
    /// Its key was taken already, by an earlier write or one that raced it;
    /// nothing was written. Holds that write's answer.
    Replayed(Vec<u8>),
}

impl<T> Idempotent<T> {
    /// The outcome of a write that carried no record, which cannot be replayed.
    pub fn applied(self) -> Result<T, StoreError> {
        match self {
            Self::Applied(done) => Ok(done),
            Self::Replayed(_) => Err(StoreError::Corrupt {
                path: "idempotency".into(),
                reason: "the store replayed a write that had no idempotency key".into(),
            }),
        }
    }
}

/// How a [`VersionWrite`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Applied,
    /// Applied as planned on `base`: the store now holds exactly this
    /// record, [`VersionWrite::outcome`] of the base under a new revision.
    AppliedOnBase(Box<SecretRecord>),
    /// Applied, but the audit stream would not take its event (a damaged
    /// stream key); the caller must record the event another way.
    AppliedUnaudited,
    /// Its idempotency key was taken already, by an earlier write or one that
    /// raced it; nothing was written. Holds that write's answer.
    Replayed(Vec<u8>),
    /// A [`VersionWrite::base_only`] write whose base was no longer current:
    /// nothing was written.
    Stale,
}

impl WriteOutcome {
    /// Whether the write was applied, on its base or not.
    pub fn applied(&self) -> bool {
        matches!(
            self,
            Self::Applied | Self::AppliedOnBase(_) | Self::AppliedUnaudited
        )
    }
}

/// What presenting a token did. Only `Spent` used up one of its uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    Unknown,
    Expired,
    /// `max_uses` were all spent already.
    Exhausted,
    /// Its approval is pending or was denied; nothing was spent.
    NotApproved(ApprovalStatus),
    Spent {
        record: Box<TokenRecord>,
        uses_remaining: Option<u64>,
    },
}

/// A secret's metadata together with one of its versions, read at one instant.
pub type Snapshot = (SecretRecord, Option<VersionRecord>);

/// Storage of one or many tenants' records. Every key a method touches lives
/// under the tenant it is given, and every multi-key write is atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"redis"` or `"embedded"`, as reported by health.
    fn kind(&self) -> &'static str;

    async fn ping(&self) -> Result<(), StoreError>;

    /// The secret's metadata and the given version (the active one when
    /// `version` is `None`); the version is `None` if it does not exist.
    /// Version 0 never exists, so `Some(0)` reads the metadata alone.
    async fn read(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// [`Self::read`], shared rather than owned: a cache answers a hit with
    /// the snapshot it holds instead of a copy of it.
    async fn read_shared(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Arc<Snapshot>>, StoreError> {
        Ok(self.read(tenant, path, version).await?.map(Arc::new))
    }

    /// Every stored version of a secret, oldest first.
    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError>;

    /// [`Self::versions`] without the sealed values: for listings and
    /// retention, which every write runs, so a store may skip decoding them.
    async fn version_stamps(
        &self,
        tenant: &str,
        path: &str,
    ) -> Result<Vec<VersionStamp>, StoreError> {
        Ok(self
            .versions(tenant, path)
            .await?
            .iter()
            .map(VersionRecord::stamp)
            .collect())
    }

    /// The numbers of a secret's stored versions, in ascending order: all
    /// that history retention needs while it only counts versions, so a
    /// store may skip reading them.
    async fn version_numbers(&self, tenant: &str, path: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .version_stamps(tenant, path)
            .await?
            .iter()
            .map(|v| v.version)
            .collect())
    }

    /// The stamps of those of `versions` that are stored, in the order given.
    async fn stamps_of(
        &self,
        tenant: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<Vec<VersionStamp>, StoreError> {
        let stored = self.version_stamps(tenant, path).await?;
        Ok(versions
            .iter()
            .filter_map(|n| stored.iter().find(|v| v.version == *n).copied())
            .collect())
    }

    /// Applies every commit, or none of them if any expectation fails. The
    /// commits must name distinct paths.
    async fn commit_all(&self, tenant: &str, commits: &[Commit]) -> Result<(), StoreError> {
        self.commit_all_once(tenant, commits, None).await?.applied()
    }

    /// [`Self::commit_all`], with the write's idempotency record stored in
    /// the same atomic step, unless that key is taken already: then nothing
    /// is written and the answer stored under it comes back. Even with no
    /// commits (an import that changes nothing) the record is stored.
    async fn commit_all_once(
        &self,
        tenant: &str,
        commits: &[Commit],
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<()>, StoreError>;

    async fn commit(&self, tenant: &str, commit: &Commit) -> Result<(), StoreError> {
        self.commit_all(tenant, std::slice::from_ref(commit)).await
    }

    /// Reserves a number for a new version of `path`, above every version
    /// written or reserved before: distinct for every caller on every sidecar
    /// sharing the store, in one atomic step. A reservation that is never
    /// committed leaves a gap in the numbering, nothing else.
    async fn reserve_version(&self, tenant: &str, path: &str) -> Result<u64, StoreError>;

    /// Commits one new version (see [`VersionWrite`]) and its idempotency
    /// record atomically, unless the idempotency key is taken already.
    async fn write_version(
        &self,
        tenant: &str,
        write: &VersionWrite,
    ) -> Result<WriteOutcome, StoreError>;

    /// The answer stored under an idempotency key, if it has not expired.
    async fn idempotent_answer(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Claims `key` for `ttl` if nobody holds it: true for exactly one of any
    /// number of concurrent callers, on every sidecar sharing the store.
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Replaces the sealed DEK (`kek_id` and `wrapped_dek`) of one stored
    /// version with `rewrapped`'s if the version still holds `expected`'s,
    /// atomically against every other writer; its ciphertext and the rest of
    /// its record stay as they are. False if the version is gone or holds
    /// another DEK by now (a concurrent rewrap or write), so a rewrap that
    /// loses a race changes nothing and can simply read again.
    async fn reseal(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        expected: &Sealed,
        rewrapped: &Sealed,
    ) -> Result<bool, StoreError>;

    /// Removes the secret, all its versions and the grants of exactly its
    /// path; false if it did not exist.
    async fn delete(&self, tenant: &str, path: &str) -> Result<bool, StoreError> {
        self.delete_once(tenant, path, None).await?.applied()
    }

    /// [`Self::delete`], with the idempotency record stored in the same
    /// atomic step when the secret existed (a delete of nothing keeps no
    /// answer), unless that key is taken already: then nothing is deleted
    /// and the answer stored under it comes back.
    async fn delete_once(
        &self,
        tenant: &str,
        path: &str,
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<bool>, StoreError>;

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError>;

    async fn grants(&self, tenant: &str) -> Result<Vec<Grant>, StoreError>;

    async fn delete_grant(&self, tenant: &str, grant_id: &str) -> Result<bool, StoreError>;

    /// Stores a token (by hash) with its uses, and the approval it waits for, atomically.
    async fn create_token(
        &self,
        tenant: &str,
        token: &TokenRecord,
        approval: Option<&ApprovalRecord>,
    ) -> Result<(), StoreError>;

    /// Checks a presented token and, if it is usable, spends one use
    /// atomically across every sidecar sharing the store.
    async fn use_token(
        &self,
        tenant: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError>;

    async fn approvals(&self, tenant: &str) -> Result<Vec<ApprovalRecord>, StoreError>;

    /// Records an approver's decision if the approval is still pending; false otherwise.
    async fn decide_approval(
        &self,
        tenant: &str,
        decided: &ApprovalRecord,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` records whose path starts with `prefix` and sorts after
    /// `after`, in path order. Paging by the last path seen stays correct while
    /// secrets are added and removed.
    async fn list(
        &self,
        tenant: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, StoreError>;

    /// Appends events to the tenant's audit stream, in order and all or none,
    /// trimming it to about `max_len` events (oldest first). Returns their ids,
    /// which grow across every sidecar sharing the store.
    async fn append_audit(
        &self,
        tenant: &str,
        events: &[AuditEvent],
        max_len: usize,
    ) -> Result<Vec<AuditId>, StoreError>;

    /// The newest `limit` audit events, newest first.
    async fn audit_newest(&self, tenant: &str, limit: usize)
        -> Result<Vec<AuditEntry>, StoreError>;

    /// Up to `limit` audit events after `after`, oldest first, without
    /// waiting for any (a stream catching up; [`Self::audit_follower`] waits).
    async fn audit_after(
        &self,
        tenant: &str,
        after: AuditId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// A reader that waits for new audit events, with its own connection so
    /// that its waiting holds up no other request.
    async fn audit_follower(&self, tenant: &str) -> Result<Box<dyn AuditFollower>, StoreError>;

    /// What changes in the tenant's records from now on, on every sidecar
    /// sharing the store: secrets (write, rollback, rotation, metadata, delete),
    /// grants, and tokens or approvals. Returns once the subscription is in
    /// place, so every change committed after that is announced. The stream
    /// yields [`Change::Resync`] when announcements may have been lost and
    /// ends when the subscription is lost; anything may have changed since.
    async fn changes(&self, tenant: &str) -> Result<ChangeStream, StoreError>;
}

/// Follows one tenant's audit stream.
#[async_trait]
pub trait AuditFollower: Send {
    /// Up to `limit` events after `after`, oldest first; waits up to `wait`
    /// for the first one and returns nothing if none came.
    async fn after(
        &mut self,
        after: AuditId,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A stored JSON value read by `serde_json` (see [`decode_with`]).
fn decode<T: serde::de::DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(path, bytes, |text| serde_json::from_str(text))
}

/// A stored JSON value read by `parse` (a record's own reader, such as
/// [`SecretRecord::from_json`]); unreadable text is [`StoreError::Corrupt`].
/// Its UTF-8 is checked once, in one vectorized pass, and `parse` gets a
/// `str`: `serde_json::from_slice` checks every string on its own, which was
/// a fifth of decoding a record.
fn decode_with<T>(
    path: &str,
    bytes: &[u8],
    parse: impl FnOnce(&str) -> serde_json::Result<T>,
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    parse(text).map_err(|e| corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and maps: serializing cannot fail.
    serde_json::to_vec(value).expect("records serialize to JSON")
}
