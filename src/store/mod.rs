//! Persistence of sealed secret records. Two implementations, Redis (shared by
//! every sidecar) and an embedded file store (dev and single-pod use), keep the
//! same records and pass the same conformance suite (`tests/store_conformance.rs`).
//! Only ciphertext and metadata ever reach a store.

mod embedded;
mod redis;

pub use self::embedded::EmbeddedStore;
pub use self::redis::{RedisStore, RedisTarget};

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, TokenRecord, VersionRecord,
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

    /// Every stored version of a secret, oldest first.
    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError>;

    /// Applies every commit, or none of them if any expectation fails. The
    /// commits must name distinct paths.
    async fn commit_all(&self, tenant: &str, commits: &[Commit]) -> Result<(), StoreError>;

    async fn commit(&self, tenant: &str, commit: &Commit) -> Result<(), StoreError> {
        self.commit_all(tenant, std::slice::from_ref(commit)).await
    }

    /// Claims `key` for `ttl` if nobody holds it: true for exactly one of any
    /// number of concurrent callers, on every sidecar sharing the store.
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Removes the secret, all its versions and the grants of exactly its
    /// path; false if it did not exist.
    async fn delete(&self, tenant: &str, path: &str) -> Result<bool, StoreError>;

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

    /// A reader that waits for new audit events, with its own connection so
    /// that its waiting holds up no other request.
    async fn audit_follower(&self, tenant: &str) -> Result<Box<dyn AuditFollower>, StoreError>;
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

fn decode<T: serde::de::DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and maps: serializing cannot fail.
    serde_json::to_vec(value).expect("records serialize to JSON")
}
