//! A secret's life after its first write: version history and its retention,
//! rollback, rotation with a grace period, metadata updates and expiry warnings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::access::resource;
use super::{
    check_not_expired, check_scope, not_found, parse_path, IdempotencyKey, Metadata, PutRequest,
    SecretValue, Vault, VaultError, Written, PAGE,
};
use crate::audit::EventKind;
use crate::identity::Caller;
use crate::model::{SecretPath, SecretType, Tier, VersionStamp};
use crate::policy::{Action, Resource};
use crate::store::{Commit, Idempotent, StoreError};

/// How often a retention pass after a raced write re-reads and retries.
const MAX_SETTLE_ATTEMPTS: usize = 8;

/// The longest grace period a rotation may give the version it replaces.
pub const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Expiry warnings go out this long before a secret expires, once per window;
/// tightest first, so a secret already inside one day gets only the one-day warning.
pub const EXPIRY_WINDOWS: [(&str, Duration); 2] = [
    ("1d", Duration::from_secs(24 * 3600)),
    ("7d", Duration::from_secs(7 * 24 * 3600)),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub active: bool,
    /// When a rotation's grace period for this version ends.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotated {
    pub new_version: u64,
    pub old_version: u64,
    pub old_expires_at: DateTime<Utc>,
}

/// A change of metadata without a new version. Absent fields stay as they
/// are; `expires_at: null` removes the expiry.
/// Serialized only for an idempotency digest, where a field left out and
/// one given as `null` must differ.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataUpdate {
    #[serde(default, rename = "type")]
    pub secret_type: Option<SecretType>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// Tells a field given as `null` (Some(None)) from one left out (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A secret entering an expiry-warning window, claimed by this sidecar alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryWarning {
    pub path: String,
    pub expires_at: DateTime<Utc>,
    pub window: &'static str,
}

impl Vault {
    /// Every stored version of a secret, oldest first.
    pub async fn versions(
        &self,
        caller: &Caller,
        path: &str,
    ) -> Result<Vec<VersionInfo>, VaultError> {
        let path = parse_path(path)?;
        let access = self.access(caller).await?;
        let record = self.record(&path).await?;
        self.authorize(
            &access,
            Action::Read,
            resource(record.as_ref(), path.as_str()),
        )
        .await?;
        let record = record.ok_or_else(|| not_found(&path))?;
        let versions = self
            .store
            .version_stamps(&self.workload.tenant, path.as_str())
            .await?;
        self.audit_done(
            caller,
            EventKind::Accessed,
            Action::Read,
            path.as_str(),
            None,
        )
        .await;
        Ok(versions
            .into_iter()
            .map(|v| VersionInfo {
                version: v.version,
                created_at: v.created_at,
                active: v.version == record.active_version,
                expires_at: record.expiry_of(&v),
            })
            .collect())
    }

    /// Makes an earlier version active again, reusing its sealed data key and
    /// ciphertext (the seal is bound to its version number, which does not change).
    pub async fn rollback(
        &self,
        caller: &Caller,
        path: &str,
        version: u64,
        key: Option<&IdempotencyKey>,
    ) -> Result<Written, VaultError> {
        let path = parse_path(path)?;
        if version == 0 {
            return Err(VaultError::invalid("version", "versions start at 1"));
        }
        let access = self.access(caller).await?;
        let once = Self::once(key, caller, "rollback", path.as_str(), &version);
        let once = once.as_ref();
        self.at_most_once(once, || async {
            let answer = Written {
                path: path.to_string(),
                version,
            };
            let record = self.once_record(once, &answer)?;
            let done = self
                .retrying(|| async {
                    let now = Utc::now();
                    let snapshot = self
                        .snapshot(&path, Some(version))
                        .await?
                        .map(Arc::unwrap_or_clone);
                    let current = snapshot.as_ref().map(|(record, _)| record);
                    self.authorize(&access, Action::Write, resource(current, path.as_str()))
                        .await?;
                    let Some((mut secret, target)) = snapshot else {
                        return Err(not_found(&path));
                    };
                    let mut target = target.ok_or_else(|| {
                        VaultError::NotFound(format!("secret `{path}` has no version {version}"))
                    })?;
                    check_not_expired(&path, &secret, &target, now)?;
                    // Active again, so a grace period from an earlier rotation no longer applies.
                    target.expires_at = None;
                    let restored = secret.retired_expiry.get(&version).copied();
                    secret.activate(version, restored);
                    secret.updated_at = now;
                    let commit = Commit {
                        expected_latest: secret.latest_version,
                        record: secret,
                        versions: vec![target],
                        prune: Vec::new(),
                    };
                    self.commit_once(&commit, record.as_ref()).await
                })
                .await?;
            if let Idempotent::Replayed(prior) = done {
                return Ok(Idempotent::Replayed(prior));
            }
            tracing::debug!(caller = %caller, path = %path, version, "secret rolled back");
            self.audit_done(
                caller,
                EventKind::RolledBack,
                Action::Write,
                path.as_str(),
                Some(version),
            )
            .await;
            Ok(Idempotent::Applied(answer))
        })
        .await
    }

    /// Writes `value` as the new active version; the version it replaces stays
    /// readable by number for the grace period, then answers `expired`.
    pub async fn rotate(
        &self,
        caller: &Caller,
        path: &str,
        value: SecretValue,
        grace: Option<Duration>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Rotated, VaultError> {
        let path = parse_path(path)?;
        let once = Self::once(
            key,
            caller,
            "rotate",
            path.as_str(),
            &(&value, grace.map(|g| g.as_secs())),
        );
        let once = once.as_ref();
        let grace = grace.unwrap_or(self.limits.default_grace);
        if grace > MAX_GRACE {
            return Err(VaultError::invalid(
                "grace_period_seconds",
                format!("at most {} seconds", MAX_GRACE.as_secs()),
            ));
        }
        let req = PutRequest {
            value,
            ..PutRequest::new("")
        };
        self.validate_put(&req)?;
        let grace = chrono::Duration::from_std(grace)
            .map_err(|_| VaultError::invalid("grace_period_seconds", "too long"))?;
        let access = self.access(caller).await?;
        self.at_most_once(once, || async {
            let rotated = self
                .retrying(|| async {
                    let now = Utc::now();
                    let snapshot = self.snapshot(&path, None).await?.map(Arc::unwrap_or_clone);
                    let current = snapshot.as_ref().map(|(record, _)| record);
                    self.authorize(&access, Action::Rotate, resource(current, path.as_str()))
                        .await?;
                    let Some((record, old)) = snapshot else {
                        return Err(not_found(&path));
                    };
                    let mut old = old.ok_or_else(|| {
                        VaultError::Corrupt(format!("`{path}` has no active version"))
                    })?;
                    let mut commit = self.plan_write(&path, Some(record), &req, now).await?;
                    let grace_end = now + grace;
                    old.expires_at =
                        Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
                    let rotated = Rotated {
                        new_version: commit.record.active_version,
                        old_version: old.version,
                        old_expires_at: commit.record.expiry_of(&old.stamp()).unwrap_or(grace_end),
                    };
                    commit.versions.push(old);
                    let record = self.once_record(once, &rotated)?;
                    Ok(match self.commit_once(&commit, record.as_ref()).await? {
                        Idempotent::Applied(()) => Idempotent::Applied(rotated),
                        Idempotent::Replayed(prior) => Idempotent::Replayed(prior),
                    })
                })
                .await?;
            let Idempotent::Applied(rotated) = rotated else {
                return Ok(rotated);
            };
            tracing::debug!(caller = %caller, path = %path, version = rotated.new_version, "secret rotated");
            let version = Some(rotated.new_version);
            self.audit_done(
                caller,
                EventKind::Rotated,
                Action::Rotate,
                path.as_str(),
                version,
            )
            .await;
            Ok(Idempotent::Applied(rotated))
        })
        .await
    }

    /// Changes metadata (including `expires_at`, which renews an expired
    /// secret) without writing a new version.
    pub async fn update(
        &self,
        caller: &Caller,
        path: &str,
        update: MetadataUpdate,
        key: Option<&IdempotencyKey>,
    ) -> Result<Metadata, VaultError> {
        let path = parse_path(path)?;
        let check = PutRequest {
            description: update.description.clone(),
            tags: update.tags.clone(),
            scope: update.scope.clone(),
            ..PutRequest::new("")
        };
        self.validate_put(&check)?;
        if let Some(Some(at)) = update.expires_at {
            super::check_timestamp("expires_at", at, Utc::now())?;
        }
        let access = self.access(caller).await?;
        let once = Self::once(key, caller, "update", path.as_str(), &update);
        let once = once.as_ref();
        self.at_most_once(once, || async {
            let updated = self
                .retrying(|| async {
                    let mut record = self.record(&path).await?.ok_or_else(|| not_found(&path))?;
                    self.authorize(&access, Action::Write, Resource::of(&record))
                        .await?;
                    if let Err(e) =
                        check_scope(caller, record.scope.as_deref(), update.scope.as_deref())
                    {
                        let path = Some(path.as_str());
                        return Err(self
                            .audit_refusal(caller, Some(Action::Write), path, e)
                            .await);
                    }
                    if let Some(t) = update.secret_type {
                        record.secret_type = t;
                    }
                    if let Some(t) = update.tier {
                        record.tier = t;
                    }
                    if let Some(d) = &update.description {
                        record.description = Some(d.clone());
                    }
                    if let Some(t) = &update.tags {
                        record.tags = t.clone();
                    }
                    if let Some(s) = &update.scope {
                        record.scope = Some(s.clone());
                    }
                    if let Some(expires_at) = update.expires_at {
                        record.expires_at = expires_at;
                    }
                    record.updated_at = Utc::now();
                    let metadata = Metadata::of(&record, record.active_version);
                    let commit = Commit {
                        expected_latest: record.latest_version,
                        record,
                        versions: Vec::new(),
                        prune: Vec::new(),
                    };
                    let once_record = self.once_record(once, &metadata)?;
                    Ok(
                        match self.commit_once(&commit, once_record.as_ref()).await? {
                            Idempotent::Applied(()) => Idempotent::Applied(metadata),
                            Idempotent::Replayed(prior) => Idempotent::Replayed(prior),
                        },
                    )
                })
                .await?;
            let Idempotent::Applied(metadata) = updated else {
                return Ok(updated);
            };
            tracing::debug!(caller = %caller, path = %path, "secret metadata updated");
            self.audit_done(
                caller,
                EventKind::Updated,
                Action::Write,
                path.as_str(),
                None,
            )
            .await;
            Ok(Idempotent::Applied(metadata))
        })
        .await
    }

    /// The versions history retention drops when `new_version` is written
    /// (see [`Self::prune_of`]).
    pub(super) async fn retention_prune(
        &self,
        path: &SecretPath,
        new_version: u64,
        replaced: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, VaultError> {
        match self.retention_history(path).await? {
            Some(history) => self.prune(path, history, new_version, replaced, now).await,
            None => Ok(Vec::new()),
        }
    }

    /// What retention must know of `path`'s stored versions before a write,
    /// if history retention is on.
    pub(super) async fn retention_history(
        &self,
        path: &SecretPath,
    ) -> Result<Option<History>, VaultError> {
        let (tenant, limits) = (&self.workload.tenant, self.limits);
        if limits.max_version_age.is_some() {
            let stamps = self.store.version_stamps(tenant, path.as_str()).await?;
            return Ok(Some(History::Stamps(stamps)));
        }
        if limits.max_versions == 0 {
            return Ok(None);
        }
        let numbers = self.store.version_numbers(tenant, path.as_str()).await?;
        Ok(Some(History::Numbers(numbers)))
    }

    /// [`Self::prune_of`] on a [`History`]: from numbers alone, the stamps
    /// of the oldest versions are read, a few at a time, only while the
    /// history is over the count and until enough of them may go.
    pub(super) async fn prune(
        &self,
        path: &SecretPath,
        history: History,
        new_version: u64,
        replaced: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, VaultError> {
        let numbers = match history {
            History::Stamps(existing) => {
                return Ok(self.prune_of(&existing, new_version, replaced, now))
            }
            History::Numbers(numbers) => numbers,
        };
        let excess = self.over_limit(numbers.len(), numbers.contains(&new_version));
        let candidates: Vec<u64> = numbers
            .into_iter()
            .filter(|v| *v != new_version && *v != replaced)
            .collect();
        let (mut remaining, mut prune) = (excess, Vec::new());
        for chunk in candidates.chunks(excess.max(1)) {
            if remaining == 0 {
                break;
            }
            let stamps = self
                .store
                .stamps_of(&self.workload.tenant, path.as_str(), chunk)
                .await?;
            // A version gone since the numbers were read was dropped by a
            // racing write: it no longer counts, and nothing newer goes for it.
            remaining = remaining.saturating_sub(chunk.len() - stamps.len());
            let dropping = over_count(&stamps, remaining, |v| kept(v, new_version, replaced, now));
            remaining -= dropping.len();
            prune.extend(dropping);
        }
        Ok(prune)
    }

    /// Of the `existing` versions, those history retention drops when
    /// `new_version` is written: the oldest beyond `max_versions`, and those
    /// older than `max_version_age`. Never the new version, the one it
    /// replaces, or one still in a grace period.
    pub(super) fn prune_of(
        &self,
        existing: &[VersionStamp],
        new_version: u64,
        replaced: u64,
        now: DateTime<Utc>,
    ) -> Vec<u64> {
        let limits = self.limits;
        let kept = |v: &VersionStamp| kept(v, new_version, replaced, now);
        let mut prune = Vec::new();
        if limits.max_versions > 0 {
            let stored_new = existing.iter().any(|v| v.version == new_version);
            prune = over_count(existing, self.over_limit(existing.len(), stored_new), kept);
        }
        if let Some(age) = limits
            .max_version_age
            .and_then(|a| chrono::Duration::from_std(a).ok())
        {
            let cutoff = now - age;
            let aged: Vec<u64> = existing
                .iter()
                .filter(|v| !kept(v) && v.created_at < cutoff && !prune.contains(&v.version))
                .map(|v| v.version)
                .collect();
            prune.extend(aged);
        }
        prune
    }

    /// How many of `stored` versions the count rule drops when a new version
    /// is written: the new one counts once, whether or not it is stored already.
    fn over_limit(&self, stored: usize, stored_new: bool) -> usize {
        (stored + usize::from(!stored_new)).saturating_sub(self.limits.max_versions)
    }

    /// Applies history retention to `path` as it stands now. A write that
    /// raced others planned its pruning on an older history, so after one the
    /// history may hold more than retention keeps; this brings it back.
    /// Best effort: a lost race leaves the excess to the next write.
    pub(super) async fn settle_retention(&self, path: &SecretPath) -> Result<(), VaultError> {
        for _ in 0..MAX_SETTLE_ATTEMPTS {
            let Some(mut record) = self.record(path).await? else {
                return Ok(());
            };
            let active = record.active_version;
            let prune = self
                .retention_prune(path, active, active, Utc::now())
                .await?;
            if prune.is_empty() {
                return Ok(());
            }
            for pruned in &prune {
                record.retired_expiry.remove(pruned);
            }
            let commit = Commit {
                expected_latest: record.latest_version,
                record,
                versions: Vec::new(),
                prune,
            };
            self.write_bases.forget(path.as_str());
            match self.store.commit(&self.workload.tenant, &commit).await {
                Err(StoreError::Conflict) => tokio::task::yield_now().await,
                done => return done.map_err(VaultError::from),
            }
        }
        Ok(())
    }

    /// Finds secrets inside an expiry-warning window and claims each warning in
    /// the store, so that of all sidecars sharing it exactly one sends it.
    pub async fn claim_expiry_warnings(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ExpiryWarning>, VaultError> {
        let tenant = &self.workload.tenant;
        let mut warnings = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.records("", after.as_deref(), PAGE).await?;
            for record in &page {
                let Some(expires_at) = record.expires_at.filter(|at| *at > now) else {
                    continue;
                };
                let left = (expires_at - now).to_std().unwrap_or_default();
                let Some((window, _)) = EXPIRY_WINDOWS.iter().find(|(_, w)| left <= *w) else {
                    continue;
                };
                let claim = format!(
                    "expiry-warning:{}:{}:{window}",
                    record.path,
                    expires_at.timestamp()
                );
                if self
                    .store
                    .claim(tenant, &claim, left + Duration::from_secs(24 * 3600))
                    .await?
                {
                    warnings.push(ExpiryWarning {
                        path: record.path.clone(),
                        expires_at,
                        window,
                    });
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.path.clone()),
                _ => return Ok(warnings),
            }
        }
    }
}

/// What history retention reads of a secret's stored versions before a write.
pub(super) enum History {
    /// Every version's stamp, oldest first: retention dates versions
    /// (`max_version_age`).
    Stamps(Vec<VersionStamp>),
    /// Only their numbers, ascending: retention only counts versions, so the
    /// stamps of the few it may drop are read once it knows it must drop some.
    Numbers(Vec<u64>),
}

/// Whether retention keeps `v` whatever the limits: the version being
/// written, the one it replaces, and one still in a grace period.
fn kept(v: &VersionStamp, new_version: u64, replaced: u64, now: DateTime<Utc>) -> bool {
    v.version == new_version || v.version == replaced || v.expires_at.is_some_and(|at| at > now)
}

/// The count rule: the first `excess` of `oldest_first` that are not kept.
fn over_count(
    oldest_first: &[VersionStamp],
    excess: usize,
    kept: impl Fn(&VersionStamp) -> bool,
) -> Vec<u64> {
    oldest_first
        .iter()
        .filter(|v| !kept(v))
        .take(excess)
        .map(|v| v.version)
        .collect()
}
