//! The domain: reading and writing one tenant's secrets, sealed under the
//! tenant's keys, through any [`Store`]. Knows nothing of HTTP or Redis, so
//! every front end (the Unix-socket API today, Envoy ext_authz/SDS next) shares it.

mod access;
mod audit;
mod dotenv;
mod idempotency;
mod import;
mod lifecycle;
mod redact;
mod rewrap;
mod write_base;

pub use self::access::{AccessSettings, ApprovalView, TokenIssued, TokenRequest};
pub use self::audit::{AuditFollow, DEFAULT_AUDIT_LIMIT};
pub use self::idempotency::{IdempotencyKey, IDEMPOTENCY_WINDOW, MAX_IDEMPOTENCY_KEY};
pub use self::import::{ImportAction, ImportReport, ImportRequest, ImportedSecret};
pub use self::lifecycle::{ExpiryWarning, MetadataUpdate, Rotated, VersionInfo};
pub use self::redact::{Finding, Form, Redaction, Scanner, DEFAULT_MIN_REDACT_BYTES};
pub use self::rewrap::{rewrap, RewrapError, RewrapReport};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use self::access::{resource, Access};
use self::idempotency::Once;
use self::lifecycle::History;
use self::write_base::{Known, WriteBases};
use crate::audit::{Auditor, EventKind};
use crate::crypto::{Binding, CryptoError, TenantCipher};
use crate::identity::{Caller, WorkloadIdentity};
use crate::model::{
    is_path_char, timestamp, SecretPath, SecretRecord, SecretType, Tier, VersionRecord,
    MAX_PATH_LEN,
};
use crate::policy::{Action, PolicyEngine, Resource};
use crate::store::{
    AuditAppend, Commit, Guard, IdempotencyRecord, Idempotent, RecordPatch, Snapshot, Store,
    StoreError, VersionWrite, WriteOutcome,
};

/// How often a write re-reads and retries after losing a race to another writer.
const MAX_WRITE_ATTEMPTS: usize = 32;
const MAX_DESCRIPTION: usize = 1024;
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Page size for the vault's own walks over a tenant's secrets.
const PAGE: usize = 200;
pub const MAX_LIST_LIMIT: usize = 200;

/// The contract's error codes. Every front end maps these, and only these, to
/// its own status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthenticated,
    PolicyDenied,
    NotFound,
    Conflict,
    Expired,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
    IdempotencyKeyReused,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::PolicyDenied => "policy_denied",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Expired => "expired",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

/// Why a vault operation failed. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// What a caller that may not read a secret is told: to it, exactly a
    /// missing secret (same code, status and message). The refusal is
    /// audited already, so a front end that audits what it leaves out (SDS)
    /// knows not to record it twice.
    #[error("{0}")]
    Hidden(String),
    #[error("cas {expected} does not match the current version {current}")]
    Conflict { expected: u64, current: u64 },
    #[error("secret `{path}` expired at {at}")]
    Expired { path: String, at: DateTime<Utc> },
    #[error("{what} is over the limit of {limit} bytes")]
    TooLarge { what: String, limit: usize },
    #[error("{0}")]
    Unavailable(String),
    /// The store could not be reached: the one `unavailable` that counts as a storage error.
    #[error("storage unavailable: {0}")]
    Storage(String),
    #[error("secret `{path}` could not be decrypted: {source}")]
    Integrity {
        path: String,
        #[source]
        source: CryptoError,
    },
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    AlreadyDecided(String),
    /// The policy said no. The reasons never name a value.
    #[error("the policy denied this request: {}", reasons.join("; "))]
    Denied { reasons: Vec<String> },
    /// Lost every retry against concurrent writers of the same secret. Plain
    /// writes of a new version never get here (their version numbers are
    /// reserved); rollbacks, rotations and imports may, under extreme contention.
    #[error("too many concurrent writers; retry")]
    Raced,
    /// The `Idempotency-Key` answered a different request within its window.
    #[error(
        "Idempotency-Key `{}` was used for a different request in the last 24 h; send a new key",
        short(.0)
    )]
    IdempotencyMismatch(String),
}

/// At most 32 characters of something the caller sent, for an error message.
fn short(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

impl VaultError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The one mapping from domain failures to the contract's codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid { .. } => ErrorCode::InvalidRequest,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Denied { .. } => ErrorCode::PolicyDenied,
            Self::NotFound(_) | Self::Hidden(_) => ErrorCode::NotFound,
            Self::Conflict { .. } | Self::AlreadyDecided(_) => ErrorCode::Conflict,
            Self::Expired { .. } => ErrorCode::Expired,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Unavailable(_) | Self::Storage(_) | Self::Raced => ErrorCode::Unavailable,
            Self::Integrity { .. } | Self::Corrupt(_) => ErrorCode::Internal,
            Self::IdempotencyMismatch(_) => ErrorCode::IdempotencyKeyReused,
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => Self::Storage(why),
            StoreError::Conflict => Self::Raced,
            corrupt @ StoreError::Corrupt { .. } => Self::Corrupt(corrupt.to_string()),
        }
    }
}

/// A plaintext secret value: zeroized on drop, redacted from `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// A write of a new version. Metadata fields left out keep their current
/// values; `expires_at` belongs to the write, so a write without it clears expiry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub value: SecretValue,
    #[serde(default, rename = "type")]
    pub secret_type: Option<SecretType>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub scope: Option<String>,
    /// The version the writer expects to be current; 0 means "must not exist".
    #[serde(default)]
    pub cas: Option<u64>,
}

impl PutRequest {
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: SecretValue::new(value.into()),
            secret_type: None,
            tier: None,
            description: None,
            tags: None,
            expires_at: None,
            scope: None,
            cas: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub path: String,
    pub version: u64,
}

/// A secret's metadata as the contract shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub path: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub secret_type: SecretType,
    pub tier: Tier,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    #[serde(serialize_with = "timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp::serialize_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    pub scope: Option<String>,
}

impl Metadata {
    fn of(record: &SecretRecord, version: u64) -> Self {
        Self {
            path: record.path.clone(),
            version,
            secret_type: record.secret_type,
            tier: record.tier,
            description: record.description.clone(),
            tags: record.tags.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: record.expires_at,
            scope: record.scope.clone(),
        }
    }
}

/// A secret with its value. `Debug` shows the metadata only. Written
/// ([`Secret::to_json`]) as the metadata's fields then `value`, one flat object.
#[derive(Debug, Clone)]
pub struct Secret {
    pub metadata: Metadata,
    pub value: SecretValue,
}

impl Secret {
    /// The answer to a read: byte for byte what `serde_json` writes for
    /// [`Metadata`], with `"value"` as its last field, without its per-byte
    /// string escaping (see [`crate::model::json`]); every read writes one.
    pub fn to_json(&self) -> Vec<u8> {
        use crate::model::json::{int, opt_string, string, string_map, Object};
        let m = &self.metadata;
        let mut out = Vec::with_capacity(256 + self.value.0.len());
        let mut o = Object::new(&mut out);
        string(o.field("path"), &m.path);
        int(o.field("version"), m.version);
        string(o.field("type"), m.secret_type.as_str());
        string(o.field("tier"), m.tier.as_str());
        opt_string(o.field("description"), m.description.as_deref());
        string_map(o.field("tags"), &m.tags);
        timestamp::write_json(&m.created_at, o.field("created_at"));
        timestamp::write_json(&m.updated_at, o.field("updated_at"));
        timestamp::write_json_opt(m.expires_at.as_ref(), o.field("expires_at"));
        opt_string(o.field("scope"), m.scope.as_deref());
        string(o.field("value"), &self.value.0);
        o.end();
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<Metadata>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default)]
pub struct BatchResult {
    pub secrets: BTreeMap<String, SecretValue>,
    pub errors: BTreeMap<String, VaultError>,
}

/// Limits the vault enforces whatever the front end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_value_bytes: usize,
    pub max_batch_paths: usize,
    pub max_import_entries: usize,
    /// Versions kept per secret, the active one included; 0 keeps all.
    pub max_versions: usize,
    /// Inactive versions older than this are dropped at the next write.
    pub max_version_age: Option<Duration>,
    /// How long a rotated-out version stays readable when the caller names no grace period.
    pub default_grace: Duration,
    /// Values shorter than this are not matched by `POST /v1/redact`.
    pub redact_min_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_batch_paths: 100,
            max_import_entries: 1000,
            max_versions: 20,
            max_version_age: None,
            default_grace: Duration::from_secs(3600),
            redact_min_bytes: DEFAULT_MIN_REDACT_BYTES,
        }
    }
}

/// What health reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub identity: String,
    /// The tenant this sidecar serves, so a client can check it talks to the right one.
    pub tenant: String,
    pub storage: &'static str,
}

/// The vault, once the workload's identity is known. Front ends answer
/// `unavailable` with the reason while it is still `Starting`.
#[derive(Clone)]
pub enum VaultState {
    Starting(String),
    Ready(Arc<Vault>),
}

pub type VaultWatch = tokio::sync::watch::Receiver<VaultState>;

/// The ready vault, or why there is none yet.
pub fn current_vault(watch: &VaultWatch) -> Result<Arc<Vault>, VaultError> {
    match &*watch.borrow() {
        VaultState::Ready(vault) => Ok(vault.clone()),
        VaultState::Starting(why) => Err(VaultError::Unavailable(why.clone())),
    }
}

/// One tenant's secrets, every access decided by the policy engine.
pub struct Vault {
    store: Arc<dyn Store>,
    cipher: TenantCipher,
    workload: WorkloadIdentity,
    limits: Limits,
    policy: Arc<PolicyEngine>,
    access: AccessSettings,
    /// Where every access, change and denial is recorded (see `audit.rs`).
    audit: Auditor,
    /// The leak guard's cached automata (see `redact.rs`).
    redactor: Arc<redact::Redactor>,
    /// What our own last write of each secret left (see `write_base.rs`).
    write_bases: WriteBases,
}

fn parse_path(path: &str) -> Result<SecretPath, VaultError> {
    SecretPath::parse(path).map_err(|e| VaultError::invalid("path", e.to_string()))
}

impl Vault {
    pub fn new(
        store: Arc<dyn Store>,
        cipher: TenantCipher,
        workload: WorkloadIdentity,
        limits: Limits,
        policy: Arc<PolicyEngine>,
        access: AccessSettings,
        audit: Auditor,
    ) -> Self {
        Self {
            store,
            cipher,
            workload,
            limits,
            policy,
            access,
            audit,
            redactor: Arc::new(redact::Redactor::new()),
            write_bases: WriteBases::default(),
        }
    }

    pub fn workload(&self) -> &WorkloadIdentity {
        &self.workload
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn binding<'a>(&'a self, path: &'a str, version: u64) -> Binding<'a> {
        Binding {
            tenant: &self.workload.tenant,
            path,
            version,
        }
    }

    pub async fn health(&self) -> Result<Health, VaultError> {
        self.store.ping().await?;
        Ok(Health {
            identity: self.workload.spiffe_id.clone(),
            tenant: self.workload.tenant.clone(),
            storage: self.store.kind(),
        })
    }

    /// Writes a new version and makes it active. Racing writers, in this
    /// sidecar or another on the same store, each get their own version
    /// number and all succeed: the highest number is the one left active.
    pub async fn put(
        &self,
        caller: &Caller,
        path: &str,
        req: PutRequest,
    ) -> Result<Written, VaultError> {
        self.put_idempotent(caller, path, req, None).await
    }

    /// [`Self::put`], answered at most once per `key`: a retry with the same
    /// key and request, on any sidecar sharing the store, within
    /// [`IDEMPOTENCY_WINDOW`], gets the first answer and writes nothing.
    pub async fn put_idempotent(
        &self,
        caller: &Caller,
        path: &str,
        req: PutRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<Written, VaultError> {
        let path = parse_path(path)?;
        self.validate_put(&req)?;
        let access = self.access(caller).await?;
        let tenant = &self.workload.tenant;
        let once = Self::once(key, caller, "put", path.as_str(), &req);
        let once = once.as_ref();
        let attempts = AtomicUsize::new(0);
        self.at_most_once(once, || async {
            let written = self
                .retrying(|| async {
                    let first = attempts.fetch_add(1, Ordering::Relaxed) == 0;
                    // The first attempt starts from what our own last write
                    // of the path left, if we remember it (`write_base.rs`).
                    let base = if first { self.write_bases.take(path.as_str()) } else { None };
                    if let Some(base) = base {
                        let planned = self
                            .plan_on_base(&access, &path, base, &req, once, caller)
                            .await?;
                        if let Some((write, known)) = planned {
                            match self.store.write_version(tenant, &write).await {
                                Ok(WriteOutcome::Stale) | Err(StoreError::Conflict) => {}
                                done => return self.written(write, known, done?, false),
                            }
                        }
                    }
                    // One round trip for both: what retention reads of the
                    // history is read beside the record.
                    let (current, history) =
                        tokio::try_join!(self.record(&path), self.retention_history(&path))?;
                    self.authorize_claim(
                        &access,
                        Action::Write,
                        resource(current.as_ref(), path.as_str()),
                    )
                    .await?;
                    let current_scope = current.as_ref().and_then(|r| r.scope.as_deref());
                    if let Err(e) = check_scope(caller, current_scope, req.scope.as_deref()) {
                        let path = Some(path.as_str());
                        return Err(self
                            .audit_refusal(caller, Some(Action::Write), path, e)
                            .await);
                    }
                    let active = current.as_ref().map_or(0, |r| r.active_version);
                    if let Some(expected) = req.cas.filter(|cas| *cas != active) {
                        return Err(VaultError::Conflict {
                            expected,
                            current: active,
                        });
                    }
                    let latest = current.as_ref().map_or(0, |r| r.latest_version);
                    let known = history.as_ref().map(Known::of);
                    // The first attempt claims the next number in its
                    // commit; one that lost a race reserves it first.
                    let write = self
                        .plan_version(&path, (current, history), &req, once, caller, !first)
                        .await?;
                    let raced = write.version.version != latest + 1;
                    let outcome = self.store.write_version(tenant, &write).await?;
                    self.written(write, known, outcome, raced)
                })
                .await?;
            let (written, raced, event) = match written {
                Idempotent::Applied(written) => written,
                Idempotent::Replayed(prior) => return Ok(Idempotent::Replayed(prior)),
            };
            if raced {
                if let Err(e) = self.settle_retention(&path).await {
                    tracing::warn!(path = %path, error = %e, "history retention after a race failed");
                }
            }
            tracing::debug!(caller = %caller, path = %path, version = written, "secret written");
            match event {
                // Stored with the write itself; only logged and counted here.
                Some((event, true)) => self.audit.committed(&event),
                // The stream refused it: queued and retried like any other event.
                Some((event, false)) => {
                    let _ = self
                        .audit
                        .record(vec![event], crate::audit::Guard::BestEffort)
                        .await;
                }
                None => {}
            }
            Ok(Idempotent::Applied(Written {
                path: path.to_string(),
                version: written,
            }))
        })
        .await
    }

    /// The write of `req` as a new version, given the path's current record
    /// and what retention read of its history (when it is on): its number, sealed
    /// under that number, the changes to apply to whatever record is current
    /// when it commits, and the versions retention drops. The number is the one after `current`'s, claimed by the
    /// commit itself, unless `reserve`: then reserved in the store first, so
    /// no other writer can take it (for a retry after a lost race).
    async fn plan_version(
        &self,
        path: &SecretPath,
        (current, history): (Option<SecretRecord>, Option<History>),
        req: &PutRequest,
        once: Option<&Once<'_>>,
        caller: &Caller,
        reserve: bool,
    ) -> Result<VersionWrite, VaultError> {
        let now = Utc::now();
        let version = if reserve {
            self.store
                .reserve_version(&self.workload.tenant, path.as_str())
                .await?
        } else {
            current.as_ref().map_or(0, |r| r.latest_version) + 1
        };
        let sealed = self.seal(path, version, req.value.expose())?;
        let replaced = current.as_ref().map_or(0, |r| r.active_version);
        let prune = match (&current, history) {
            (Some(_), Some(history)) => self.prune(path, history, version, replaced, now).await?,
            _ => Vec::new(),
        };
        let initial = self.next_record(None, path, req, version, now);
        let mut guard = Guard::of(current.as_ref().unwrap_or(&initial));
        guard.active = req.cas;
        let answer = Written {
            path: path.to_string(),
            version,
        };
        let idempotency = self.once_record(once, &answer)?;
        let audit = AuditAppend {
            event: self
                .event(EventKind::Written, caller, Action::Write, path.as_str())
                .version(Some(version)),
            max_len: self.audit.settings().max_len,
        };
        Ok(VersionWrite {
            reserved: reserve,
            audit: Some(audit),
            version: VersionRecord {
                version,
                created_at: now,
                sealed,
                expires_at: None,
            },
            initial,
            base: current,
            base_only: false,
            patch: RecordPatch {
                updated_at: now,
                expires_at: req.expires_at,
                secret_type: req.secret_type,
                tier: req.tier,
                description: req.description.clone(),
                tags: req.tags.clone(),
                scope: req.scope.clone(),
            },
            guard,
            prune,
            idempotency,
        })
    }

    /// Commits one secret's write, with the idempotency record of the
    /// request that made it, if any, in the same atomic step.
    async fn commit_once(
        &self,
        commit: &Commit,
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<()>, VaultError> {
        self.write_bases.forget(&commit.record.path);
        Ok(self
            .store
            .commit_all_once(&self.workload.tenant, std::slice::from_ref(commit), once)
            .await?)
    }

    /// Runs an optimistic write again, on fresh state, each time it loses a
    /// race with another writer.
    async fn retrying<T, Fut>(&self, attempt: impl Fn() -> Fut) -> Result<T, VaultError>
    where
        Fut: Future<Output = Result<T, VaultError>>,
    {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            match attempt().await {
                Err(VaultError::Raced) => tokio::task::yield_now().await,
                done => return done,
            }
        }
        Err(VaultError::Raced)
    }

    async fn record(&self, path: &SecretPath) -> Result<Option<SecretRecord>, VaultError> {
        Ok(self
            .snapshot(path, Some(0))
            .await?
            .map(|snapshot| Arc::unwrap_or_clone(snapshot).0))
    }

    /// The secret's record and the given version (or the active one), from
    /// this tenant's keys; shared with the cache, which a read only borrows.
    async fn snapshot(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<Option<Arc<Snapshot>>, VaultError> {
        let snapshot = self
            .store
            .read_shared(&self.workload.tenant, path.as_str(), version)
            .await?;
        if let Some(snapshot) = &snapshot {
            self.check_tenant(&snapshot.0)?;
        }
        Ok(snapshot)
    }

    /// Up to `limit` records under `prefix` after `after`, from this tenant's keys.
    async fn records(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, VaultError> {
        let records = self
            .store
            .list(&self.workload.tenant, prefix, after, limit)
            .await?;
        records.iter().try_for_each(|r| self.check_tenant(r))?;
        Ok(records)
    }

    /// Nothing authenticates a record's metadata before the policy decides on
    /// it, so a record that names another tenant, copied here by someone with
    /// write access to the store, is refused outright.
    fn check_tenant(&self, record: &SecretRecord) -> Result<(), VaultError> {
        if record.tenant == self.workload.tenant {
            return Ok(());
        }
        tracing::error!(
            tenant = %self.workload.tenant, path = %record.path, record_tenant = %record.tenant,
            "stored record names another tenant; possible tampering"
        );
        Err(VaultError::Corrupt(format!(
            "the record at `{}` belongs to another tenant",
            record.path
        )))
    }

    /// The commit that writes `req` as the next version on top of `current`,
    /// dropping what history retention no longer keeps.
    async fn plan_write(
        &self,
        path: &SecretPath,
        current: Option<SecretRecord>,
        req: &PutRequest,
        now: DateTime<Utc>,
    ) -> Result<Commit, VaultError> {
        let (expected_latest, replaced) = current
            .as_ref()
            .map_or((0, 0), |r| (r.latest_version, r.active_version));
        let version = expected_latest + 1;
        let sealed = self.seal(path, version, req.value.expose())?;
        let mut record = self.next_record(current, path, req, version, now);
        let prune = if expected_latest == 0 {
            Vec::new()
        } else {
            self.retention_prune(path, version, replaced, now).await?
        };
        for pruned in &prune {
            record.retired_expiry.remove(pruned);
        }
        Ok(Commit {
            record,
            versions: vec![VersionRecord {
                version,
                created_at: now,
                sealed,
                expires_at: None,
            }],
            expected_latest,
            prune,
        })
    }

    fn seal(
        &self,
        path: &SecretPath,
        version: u64,
        value: &str,
    ) -> Result<crate::crypto::Sealed, VaultError> {
        self.cipher
            .seal(self.binding(path.as_str(), version), value.as_bytes())
            .map_err(|source| VaultError::Integrity {
                path: path.to_string(),
                source,
            })
    }

    fn validate_put(&self, req: &PutRequest) -> Result<(), VaultError> {
        if req.value.expose().len() > self.limits.max_value_bytes {
            return Err(VaultError::TooLarge {
                what: "value".into(),
                limit: self.limits.max_value_bytes,
            });
        }
        if req
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            return Err(VaultError::invalid(
                "description",
                format!("longer than {MAX_DESCRIPTION} bytes"),
            ));
        }
        if let Some(tags) = &req.tags {
            if tags.len() > MAX_TAGS {
                return Err(VaultError::invalid(
                    "tags",
                    format!("more than {MAX_TAGS} tags"),
                ));
            }
            if tags
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_TAG_LEN || v.len() > MAX_TAG_LEN)
            {
                return Err(VaultError::invalid(
                    "tags",
                    format!(
                        "tag keys must be 1-{MAX_TAG_LEN} bytes and values at most {MAX_TAG_LEN}"
                    ),
                ));
            }
        }
        if let Some(at) = req.expires_at {
            check_timestamp("expires_at", at, Utc::now())?;
        }
        if let Some(scope) = &req.scope {
            if scope.is_empty() || scope.len() > 128 || !scope.chars().all(is_path_char) {
                return Err(VaultError::invalid(
                    "scope",
                    "a role name of A-Z a-z 0-9 . _ -",
                ));
            }
        }
        Ok(())
    }

    fn next_record(
        &self,
        current: Option<SecretRecord>,
        path: &SecretPath,
        req: &PutRequest,
        version: u64,
        now: DateTime<Utc>,
    ) -> SecretRecord {
        let mut record = current.unwrap_or_else(|| SecretRecord {
            tenant: self.workload.tenant.clone(),
            path: path.to_string(),
            active_version: 0,
            latest_version: 0,
            secret_type: SecretType::default(),
            tier: Tier::default(),
            description: None,
            tags: BTreeMap::new(),
            scope: None,
            owner: self.workload.spiffe_id.clone(),
            created_at: now,
            updated_at: now,
            expires_at: None,
            retired_expiry: BTreeMap::new(),
            revision: String::new(),
        });
        record.activate(version, req.expires_at);
        record.latest_version = version;
        record.updated_at = now;

        if let Some(t) = req.secret_type {
            record.secret_type = t;
        }
        if let Some(t) = req.tier {
            record.tier = t;
        }
        if let Some(d) = &req.description {
            record.description = Some(d.clone());
        }
        if let Some(t) = &req.tags {
            record.tags = t.clone();
        }
        if let Some(s) = &req.scope {
            record.scope = Some(s.clone());
        }
        record
    }

    /// Reads the active version, or the given one.
    pub async fn get(
        &self,
        caller: &Caller,
        path: &str,
        version: Option<u64>,
    ) -> Result<Secret, VaultError> {
        let access = self.access(caller).await?;
        self.get_with(&access, path, version).await
    }

    async fn get_with(
        &self,
        access: &Access<'_>,
        path: &str,
        version: Option<u64>,
    ) -> Result<Secret, VaultError> {
        let path = parse_path(path)?;
        let snapshot = self.snapshot(&path, version).await?;
        let record = snapshot.as_deref().map(|(record, _)| record);
        self.authorize(access, Action::Read, resource(record, path.as_str()))
            .await?;
        let Some((record, found)) = snapshot.as_deref() else {
            return Err(not_found(&path));
        };
        let Some(found) = found else {
            return Err(VaultError::NotFound(match version {
                Some(v) => format!("secret `{path}` has no version {v}"),
                None => format!("secret `{path}` has no active version"),
            }));
        };
        check_not_expired(&path, record, found, Utc::now())?;
        let mut plaintext = self
            .cipher
            .open(self.binding(path.as_str(), found.version), &found.sealed)
            .map_err(|source| {
                tracing::error!(
                    tenant = %self.workload.tenant, path = %path, version = found.version,
                    error = %source, "stored secret failed to decrypt; possible tampering"
                );
                VaultError::Integrity {
                    path: path.to_string(),
                    source,
                }
            })?;
        // Moved, not copied: the only copy left is the one SecretValue zeroizes.
        let value = String::from_utf8(std::mem::take(&mut *plaintext)).map_err(|e| {
            // The bytes go back to be zeroized with the rest.
            *plaintext = e.into_bytes();
            VaultError::Integrity {
                path: path.to_string(),
                source: CryptoError::Integrity,
            }
        })?;
        tracing::debug!(caller = %access.caller, path = %path, version = found.version, "secret read");
        self.audit_read(
            access.caller,
            path.as_str(),
            Some(found.version),
            record.tier,
        )
        .await?;
        Ok(Secret {
            metadata: Metadata::of(record, found.version),
            value: SecretValue::new(value),
        })
    }

    /// Whether a secret exists at the path, without decrypting it.
    pub async fn exists(&self, caller: &Caller, path: &str) -> Result<bool, VaultError> {
        let path = parse_path(path)?;
        let access = self.access(caller).await?;
        let record = self.record(&path).await?;
        self.authorize(
            &access,
            Action::Read,
            resource(record.as_ref(), path.as_str()),
        )
        .await?;
        if record.is_some() {
            self.audit_done(
                caller,
                EventKind::Accessed,
                Action::Read,
                path.as_str(),
                None,
            )
            .await;
        }
        Ok(record.is_some())
    }

    /// Deletes the secret and all its versions; with `key`, at most once
    /// (a retry answers as the first delete did, not `not_found`).
    pub async fn delete(
        &self,
        caller: &Caller,
        path: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<(), VaultError> {
        let path = parse_path(path)?;
        let access = self.access(caller).await?;
        let once = Self::once(key, caller, "delete", path.as_str(), &());
        let once = once.as_ref();
        self.at_most_once(once, || async {
            let record = self.record(&path).await?.ok_or_else(|| not_found(&path))?;
            self.authorize(&access, Action::Delete, Resource::of(&record))
                .await?;
            let record = self.once_record(once, &())?;
            self.write_bases.forget(path.as_str());
            match self
                .store
                .delete_once(&self.workload.tenant, path.as_str(), record.as_ref())
                .await?
            {
                Idempotent::Applied(true) => {}
                Idempotent::Applied(false) => return Err(not_found(&path)),
                Idempotent::Replayed(prior) => return Ok(Idempotent::Replayed(prior)),
            }
            tracing::debug!(caller = %caller, path = %path, "secret deleted");
            self.audit_done(
                caller,
                EventKind::Deleted,
                Action::Delete,
                path.as_str(),
                None,
            )
            .await;
            Ok(Idempotent::Applied(()))
        })
        .await
    }

    /// One page of metadata under `prefix`, in path order. The cursor is the
    /// last path of the previous page, so pages stay correct under concurrent writes.
    /// Items the caller may not see are left out, so a page can hold fewer
    /// than `limit` items while `next_cursor` still leads on.
    pub async fn list(
        &self,
        caller: &Caller,
        prefix: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page, VaultError> {
        if prefix.len() > MAX_PATH_LEN || !prefix.chars().all(|c| c == '/' || is_path_char(c)) {
            return Err(VaultError::invalid(
                "prefix",
                "may only hold A-Z a-z 0-9 . _ - and /",
            ));
        }
        let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(VaultError::invalid(
                "limit",
                format!("must be between 1 and {MAX_LIST_LIMIT}"),
            ));
        }
        let after = cursor.map(decode_cursor).transpose()?;
        let access = self.access(caller).await?;
        self.authorize(&access, Action::List, Resource::missing(prefix))
            .await?;
        let mut records = self.records(prefix, after.as_deref(), limit + 1).await?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next_cursor = more
            .then(|| records.last().map(|r| B64URL.encode(r.path.as_bytes())))
            .flatten();
        let grants = if records.iter().any(|r| r.owner != self.workload.spiffe_id) {
            self.store.grants(&self.workload.tenant).await?
        } else {
            Vec::new()
        };
        let mut items = Vec::with_capacity(records.len());
        for record in &records {
            if self
                .decide_with(&access, Action::List, Resource::of(record), &grants)?
                .allow
            {
                items.push(Metadata::of(record, record.active_version));
            }
        }
        self.audit_done(caller, EventKind::Listed, Action::List, prefix, None)
            .await;
        Ok(Page { items, next_cursor })
    }

    /// Reads several secrets; each path succeeds or fails on its own.
    pub async fn batch(
        &self,
        caller: &Caller,
        paths: &[String],
    ) -> Result<BatchResult, VaultError> {
        if paths.is_empty() || paths.len() > self.limits.max_batch_paths {
            return Err(VaultError::invalid(
                "paths",
                format!("must list 1 to {} paths", self.limits.max_batch_paths),
            ));
        }
        let access = self.access(caller).await?;
        let access = &access;
        let unique: BTreeSet<&String> = paths.iter().collect();
        let reads = unique
            .iter()
            .map(|path| async move { (*path, self.get_with(access, path, None).await) });
        let mut result = BatchResult::default();
        for (path, outcome) in futures_util::future::join_all(reads).await {
            match outcome {
                // Storage trouble fails the whole batch rather than hiding in per-path errors.
                Err(e) if e.code() == ErrorCode::Unavailable => return Err(e),
                Ok(secret) => {
                    result.secrets.insert(path.clone(), secret.value);
                }
                Err(e) => {
                    result.errors.insert(path.clone(), e);
                }
            }
        }
        Ok(result)
    }
}

/// The earliest timestamp a caller may send (2000-01-01T00:00:00Z): nothing
/// the sidecar keeps is older, so anything before it is a mistake such as
/// seconds read as milliseconds, or a probe of the parser's edges.
const EARLIEST_TIMESTAMP: i64 = 946_684_800;
/// How far ahead a caller's timestamp may lie: a century, well inside what
/// every store, client and language represents without overflow.
const MAX_TIMESTAMP_AHEAD_DAYS: i64 = 100 * 366;

/// Refuses a caller's timestamp outside [2000-01-01, now + 100 years], in
/// either direction, so that no far past or far future value is stored.
pub(crate) fn check_timestamp(
    field: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), VaultError> {
    let latest = now + chrono::Duration::days(MAX_TIMESTAMP_AHEAD_DAYS);
    if at.timestamp() < EARLIEST_TIMESTAMP || at > latest {
        return Err(VaultError::invalid(
            field,
            "must lie between 2000-01-01T00:00:00Z and 100 years from now",
        ));
    }
    Ok(())
}

/// A version is readable until [`SecretRecord::expiry_of`] says otherwise.
fn check_not_expired(
    path: &SecretPath,
    record: &SecretRecord,
    version: &VersionRecord,
    now: DateTime<Utc>,
) -> Result<(), VaultError> {
    match record.expiry_of(&version.stamp()).filter(|at| *at <= now) {
        Some(at) => Err(VaultError::Expired {
            path: path.to_string(),
            at,
        }),
        None => Ok(()),
    }
}

/// A role may scope a secret only to itself; the agent-level caller, which
/// provisions for its roles, may scope to any role.
/// Only the role a secret is scoped to may move it to another scope, since its
/// older versions, readable by number, would go along.
fn check_scope(
    caller: &Caller,
    current: Option<&str>,
    requested: Option<&str>,
) -> Result<(), VaultError> {
    let deny = |reason: String| {
        Err(VaultError::Denied {
            reasons: vec![reason],
        })
    };
    match (caller.role.as_deref(), current, requested) {
        (Some(role), _, Some(scope)) if role != scope => deny(format!(
            "role {role} may not scope a secret to role {scope}"
        )),
        (role, Some(current), Some(scope)) if scope != current && role != Some(current) => deny(
            format!("only role {current} may change this secret's scope"),
        ),
        _ => Ok(()),
    }
}

fn not_found(path: &SecretPath) -> VaultError {
    no_secret_at(path.as_str())
}

/// What a path holding nothing answers.
fn no_secret_at(path: &str) -> VaultError {
    VaultError::NotFound(format!("no secret at `{path}`"))
}

/// Word for word [`no_secret_at`], for a caller that may not read the
/// secret there (see [`Vault::authorize`]).
fn hidden_at(path: &str) -> VaultError {
    VaultError::Hidden(format!("no secret at `{path}`"))
}

fn decode_cursor(cursor: &str) -> Result<String, VaultError> {
    B64URL
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|path| SecretPath::parse(path).is_ok())
        .ok_or_else(|| VaultError::invalid("cursor", "not a cursor this API returned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One flat object: the metadata's fields and `value`, nothing else.
    #[test]
    fn a_secret_is_written_as_its_metadata_and_value() {
        let at = DateTime::from_timestamp(1_764_633_600, 123_000_000).unwrap();
        for expires_at in [None, Some(at)] {
            let metadata = Metadata {
                path: "a/b".into(),
                version: 3,
                secret_type: SecretType::ApiKey,
                tier: Tier::Critical,
                description: Some("d".into()),
                tags: [("k".to_owned(), "v".to_owned())].into(),
                created_at: at,
                updated_at: at,
                expires_at,
                scope: None,
            };
            let secret = Secret {
                metadata: metadata.clone(),
                value: SecretValue::new("sk-1".into()),
            };
            let mut expected = serde_json::to_value(&metadata).unwrap();
            expected["value"] = "sk-1".into();
            let written: serde_json::Value = serde_json::from_slice(&secret.to_json()).unwrap();
            assert_eq!(written, expected);
            assert_eq!(expected["created_at"], "2025-12-02T00:00:00.123Z");
        }
    }

    proptest::prop_compose! {
        fn any_secret()(
            path in "[a-z0-9/._-]{1,30}",
            version in proptest::prelude::any::<u64>(),
            kind in 0..SecretType::ALL.len(),
            tier in 0..Tier::ALL.len(),
            description in proptest::option::of(proptest::prelude::any::<String>()),
            tags in proptest::collection::btree_map(
                proptest::prelude::any::<String>(), proptest::prelude::any::<String>(), 0..3),
            // Four-digit years, and before year 0 (written by chrono).
            secs in proptest::prop_oneof![
                -62_167_219_200i64..253_402_300_799,
                -70_000_000_000i64..-62_167_219_201,
            ],
            nanos in 0u32..1_000_000_000,
            expires in proptest::option::of(0i64..4_000_000_000),
            scope in proptest::option::of("[a-z:-]{0,12}"),
            value in proptest::prelude::any::<String>(),
        ) -> Secret {
            let at = DateTime::from_timestamp(secs, nanos).unwrap();
            Secret {
                metadata: Metadata {
                    path,
                    version,
                    secret_type: SecretType::ALL[kind],
                    tier: Tier::ALL[tier],
                    description,
                    tags,
                    created_at: at,
                    updated_at: at,
                    expires_at: expires.and_then(|e| DateTime::from_timestamp(e, nanos)),
                    scope,
                },
                value: SecretValue::new(value),
            }
        }
    }

    proptest::proptest! {
        /// The answer's bytes are what `serde_json` writes for the
        /// metadata, with the value as its last field.
        #[test]
        fn to_json_writes_what_serde_json_writes(secret in any_secret()) {
            let metadata = serde_json::to_string(&secret.metadata).unwrap();
            let expected = format!(
                "{},\"value\":{}}}",
                metadata.strip_suffix('}').unwrap(),
                serde_json::to_string(secret.value.expose()).unwrap()
            );
            proptest::prop_assert_eq!(String::from_utf8(secret.to_json()).unwrap(), expected);
        }
    }

    #[test]
    fn secret_value_is_redacted() {
        let v = SecretValue::new("sk-live-123".into());
        assert!(!format!("{v:?}").contains("sk-live"));
        let req = PutRequest::new("sk-live-123");
        assert!(!format!("{req:?}").contains("sk-live"));
    }

    #[test]
    fn every_code_has_a_contract_name() {
        let err = VaultError::Conflict {
            expected: 1,
            current: 2,
        };
        assert_eq!(err.code().as_str(), "conflict");
        assert_eq!(
            VaultError::from(StoreError::Unavailable("x".into())).code(),
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn timestamps_outside_a_sane_range_are_refused_both_ways() {
        let now = Utc::now();
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        assert!(check_timestamp("t", now, now).is_ok());
        assert!(check_timestamp("t", now - chrono::Duration::days(1), now).is_ok());
        assert!(check_timestamp("t", at("2000-01-01T00:00:00Z"), now).is_ok());
        assert!(check_timestamp("t", now + chrono::Duration::days(365 * 99), now).is_ok());
        for bad in [
            at("1999-12-31T23:59:59Z"),
            at("1970-01-01T00:00:00Z"),
            at("0001-01-01T00:00:00Z"),
            now + chrono::Duration::days(365 * 101),
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::MIN_UTC,
        ] {
            let err = check_timestamp("expires_at", bad, now).unwrap_err();
            assert!(matches!(err, VaultError::Invalid { ref field, .. } if field == "expires_at"));
        }
    }

    proptest::proptest! {
        /// A caller's timestamp is taken exactly when it lies in
        /// [2000-01-01, now + 100 years], whatever the instant.
        #[test]
        fn timestamps_are_taken_exactly_inside_the_window(
            secs in DateTime::<Utc>::MIN_UTC.timestamp()..DateTime::<Utc>::MAX_UTC.timestamp(),
        ) {
            let now = Utc::now();
            let Some(at) = DateTime::from_timestamp(secs, 0) else {
                return Ok(());
            };
            let inside = secs >= EARLIEST_TIMESTAMP
                && at <= now + chrono::Duration::days(MAX_TIMESTAMP_AHEAD_DAYS);
            proptest::prop_assert_eq!(check_timestamp("t", at, now).is_ok(), inside);
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = B64URL.encode("a/b");
        assert_eq!(decode_cursor(&c).unwrap(), "a/b");
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&B64URL.encode("../x")).is_err());
    }
}
