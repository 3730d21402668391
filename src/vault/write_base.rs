//! What this sidecar's own last write of a secret left, so that its next
//! write of the same secret can start from it instead of reading the record
//! and the version history back from the store.
//!
//! An agent that rotates its own key writes the same secret again and again,
//! and nobody else writes it in between. Reading back what we wrote cost a
//! PUT two of its three round trips to Redis (the record with the version
//! numbers, then the stamps of the versions retention may drop). Now the
//! write is planned on what our last write left and sent with
//! [`VersionWrite::base_only`]: the store commits it only while that record
//! is still the current one (Redis compares the record's revision inside the
//! write's own script: every write of the record changes it, and every write
//! that adds, drops or re-dates a version writes the record, so the versions
//! and stamps remembered with it hold as long as it does). If another write
//! came between, nothing is written and the write is planned again from
//! what the store holds, with every check (policy, scope, `cas`) made again
//! on it; a check that fails on the remembered record is never answered
//! from it either. So a remembered base can cost a round trip, never a
//! wrong answer.
//!
//! Only a write the store says it committed as planned on its base
//! ([`WriteOutcome::AppliedOnBase`]) is remembered, as the record the store
//! holds now. The embedded store never says so (it keeps no revisions, and
//! writes that drop versions need not change the record), so there every
//! write reads first.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::access::{resource, Access};
use super::idempotency::Once;
use super::lifecycle::History;
use super::{check_scope, PutRequest, Vault, VaultError};
use crate::identity::Caller;
use crate::model::audit::AuditEvent;
use crate::model::{SecretPath, SecretRecord, VersionStamp};
use crate::policy::Action;
use crate::store::{Idempotent, VersionWrite, WriteOutcome};

/// Paths remembered at most; past that, an arbitrary one is forgotten.
const MAX_BASES: usize = 1024;
/// A secret with a longer history (retention by age alone keeps any number)
/// is not remembered: its next write reads, so a base stays a few KiB.
const MAX_VERSIONS: usize = 64;

/// The remembered bases of one vault's secrets, by path.
#[derive(Default)]
pub(super) struct WriteBases {
    bases: Mutex<HashMap<String, WriteBase>>,
}

/// What one of our writes left of a secret.
pub(super) struct WriteBase {
    /// The record as the store holds it, revision included.
    pub record: SecretRecord,
    /// Its stored versions (ascending), when history retention is on.
    pub versions: Option<Known>,
}

/// A secret's stored versions as a write knew them: every number, ascending,
/// with its stamp where it was read or written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Known(Vec<(u64, Option<VersionStamp>)>);

impl Known {
    pub fn of(history: &History) -> Self {
        Self(match history {
            History::Stamps(stamps) => stamps.iter().map(|s| (s.version, Some(*s))).collect(),
            History::Numbers(numbers) => numbers.iter().map(|n| (*n, None)).collect(),
        })
    }

    /// The history after a write of `written` that dropped `prune` and left
    /// `active` active (which is never dropped, as in [`VersionWrite::outcome`]).
    fn after(mut self, written: VersionStamp, prune: &[u64], active: u64) -> Self {
        let dropped = |n: u64| n != active && prune.contains(&n);
        self.0
            .retain(|(n, _)| !dropped(*n) && *n != written.version);
        self.0.push((written.version, Some(written)));
        self.0.sort_unstable_by_key(|(n, _)| *n);
        self
    }

    /// The numbers whose stamps are not known.
    pub fn unknown(&self) -> Vec<u64> {
        self.0
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| *n)
            .collect()
    }

    /// As retention takes it, with `read` the stamps of the unknown ones
    /// (ascending, as [`Self::unknown`] lists them): a version missing
    /// from them was dropped since and no longer counts.
    pub fn history(self, read: Vec<VersionStamp>) -> History {
        let mut read = read.into_iter().peekable();
        let stamps = self
            .0
            .into_iter()
            .filter_map(|(n, known)| {
                known.or_else(|| {
                    while read.next_if(|s| s.version < n).is_some() {}
                    read.next_if(|s| s.version == n)
                })
            })
            .collect();
        History::Stamps(stamps)
    }
}

impl WriteBases {
    /// Takes `path`'s base: a write starting from it is the only one that may.
    pub fn take(&self, path: &str) -> Option<WriteBase> {
        self.lock().remove(path)
    }

    /// Forgets `path`'s base (a write that is not a new version changed it).
    pub fn forget(&self, path: &str) {
        self.lock().remove(path);
    }

    /// Remembers what a write of `written` that dropped `prune` left:
    /// `record`, which the store says it holds as planned on the write's
    /// base. `known` is the history it was planned on.
    fn remember(
        &self,
        written: VersionStamp,
        prune: &[u64],
        known: Option<Known>,
        record: SecretRecord,
    ) {
        let versions = known.map(|k| k.after(written, prune, record.active_version));
        let path = record.path.clone();
        let mut bases = self.lock();
        if versions.as_ref().is_some_and(|k| k.0.len() > MAX_VERSIONS) {
            bases.remove(&path);
            return;
        }
        if bases.len() >= MAX_BASES && !bases.contains_key(&path) {
            if let Some(any) = bases.keys().next().cloned() {
                bases.remove(&any);
            }
        }
        bases.insert(path, WriteBase { record, versions });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WriteBase>> {
        self.bases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A committed write's version, whether it raced another, and its audit event
/// (stored with the write: `true`; to record another way: `false`).
pub(super) type Written = (u64, bool, Option<(AuditEvent, bool)>);

impl Vault {
    /// A write of `req` planned on `base`, if every check the ordinary path
    /// makes passes on it; `None` sends the write the ordinary way, where
    /// the checks are made, and any refusal answered and audited, on what the
    /// store holds. Nothing here has an effect beyond reading.
    pub(super) async fn plan_on_base(
        &self,
        access: &Access<'_>,
        path: &SecretPath,
        base: WriteBase,
        req: &PutRequest,
        once: Option<&Once<'_>>,
        caller: &Caller,
    ) -> Result<Option<(VersionWrite, Option<Known>)>, VaultError> {
        let WriteBase { record, versions } = base;
        let claimed = resource(Some(&record), path.as_str());
        let grants = self.grants_for(&claimed).await?;
        let allowed = self
            .decide_with(access, Action::Write, claimed, &grants)
            .is_ok_and(|d| d.allow);
        if !allowed
            || self.audit.check_open().is_err()
            || check_scope(caller, record.scope.as_deref(), req.scope.as_deref()).is_err()
            || req.cas.is_some_and(|cas| cas != record.active_version)
        {
            return Ok(None);
        }
        let history = match versions {
            None => None,
            Some(known) => {
                let unknown = known.unknown();
                let read = if unknown.is_empty() {
                    Vec::new()
                } else {
                    self.store
                        .stamps_of(&self.workload.tenant, path.as_str(), &unknown)
                        .await?
                };
                Some(known.history(read))
            }
        };
        let known = history.as_ref().map(Known::of);
        let mut write = self
            .plan_version(path, (Some(record), history), req, once, caller, false)
            .await?;
        write.base_only = true;
        Ok(Some((write, known)))
    }

    /// What a write's commit answers; remembers what it left when the
    /// store holds exactly its plan. `known`: the history it was planned on.
    pub(super) fn written(
        &self,
        write: VersionWrite,
        known: Option<Known>,
        outcome: WriteOutcome,
        raced: bool,
    ) -> Result<Idempotent<Written>, VaultError> {
        let stored = match outcome {
            WriteOutcome::AppliedOnBase(record) => {
                let written = write.version.stamp();
                self.write_bases
                    .remember(written, &write.prune, known, *record);
                true
            }
            WriteOutcome::Applied => true,
            WriteOutcome::AppliedUnaudited => false,
            // A retry of this request on another sidecar got there first.
            WriteOutcome::Replayed(prior) => return Ok(Idempotent::Replayed(prior)),
            // Only a write planned on a remembered base is told this.
            WriteOutcome::Stale => return Err(VaultError::Raced),
        };
        let event = write.audit.map(|a| (a.event, stored));
        Ok(Idempotent::Applied((write.version.version, raced, event)))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn stamp(version: u64, graced: bool) -> VersionStamp {
        let at = |s| Utc.timestamp_opt(s, 0).single().expect("time");
        VersionStamp {
            version,
            created_at: at(1_000 + version as i64),
            expires_at: graced.then(|| at(9_999_999_999)),
        }
    }

    fn record(path: &str, version: u64) -> SecretRecord {
        serde_json::from_value(serde_json::json!({
            "tenant": "acme", "path": path, "active_version": version,
            "latest_version": version, "type": "api_key", "tier": "standard",
            "description": null, "tags": {}, "scope": null,
            "owner": "spiffe://example.org/agent/acme/a",
            "created_at": "2026-12-05T00:00:00Z", "updated_at": "2026-12-05T00:00:00Z",
            "revision": "r",
        }))
        .expect("record")
    }

    fn history(versions: u64) -> Option<Known> {
        Some(Known::of(&History::Numbers((1..=versions).collect())))
    }

    #[test]
    fn a_history_longer_than_64_versions_is_not_remembered() {
        let bases = WriteBases::default();
        bases.remember(stamp(64, false), &[], history(63), record("k", 64));
        let base = bases.take("k").expect("64 versions are remembered");
        assert_eq!(base.versions.map(|k| k.0.len()), Some(MAX_VERSIONS));

        bases.remember(stamp(64, false), &[], history(63), record("k", 64));
        bases.remember(stamp(65, false), &[], history(64), record("k", 65));
        assert!(
            bases.take("k").is_none(),
            "65 versions are not, nor the 64 before"
        );

        // A write that pruned stays under the cap.
        bases.remember(stamp(65, false), &[1], history(64), record("k", 65));
        assert!(bases.take("k").is_some());
        // Without history retention there is no history to bound.
        bases.remember(stamp(500, false), &[], None, record("k", 500));
        assert!(bases.take("k").is_some());
    }

    #[test]
    fn at_most_1024_paths_are_remembered_and_the_newest_always_is() {
        let bases = WriteBases::default();
        for i in 0..MAX_BASES + 10 {
            let path = format!("p{i}");
            bases.remember(stamp(1, false), &[], None, record(&path, 1));
            assert!(bases.lock().contains_key(&path), "{path} just written");
            assert_eq!(bases.lock().len(), (i + 1).min(MAX_BASES));
        }
        // Rewriting a remembered path forgets no other.
        let kept = bases.lock().keys().next().cloned().expect("a path");
        bases.remember(stamp(2, false), &[], None, record(&kept, 2));
        assert_eq!(bases.lock().len(), MAX_BASES);
        let base = bases.take(&kept).expect("rewritten");
        assert_eq!(base.record.active_version, 2);
    }

    #[test]
    fn a_write_adds_its_version_and_drops_what_it_pruned_but_the_active_one() {
        let known = Known::of(&History::Numbers(vec![1, 2, 3]));
        let after = known.after(stamp(4, false), &[1, 2], 2);
        assert_eq!(
            after,
            Known(vec![(2, None), (3, None), (4, Some(stamp(4, false)))])
        );
        assert_eq!(after.unknown(), [2, 3]);
    }

    #[test]
    fn unknown_stamps_are_filled_from_a_read_and_vanished_versions_no_longer_count() {
        let known = Known(vec![
            (2, None),
            (3, None),
            (5, None),
            (6, Some(stamp(6, false))),
        ]);
        // Version 3 was dropped by another write since.
        let History::Stamps(stamps) = known.history(vec![stamp(2, true), stamp(5, false)]) else {
            panic!("stamps");
        };
        assert_eq!(stamps, [stamp(2, true), stamp(5, false), stamp(6, false)]);
    }
}
