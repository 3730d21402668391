//! Rewrap: re-seals every stored DEK of one tenant under the tenant's active
//! KEK after a rotation, as Vault's transit `rewrap` does. Values are never
//! decrypted and ciphertexts never change; only `kek_id` and `wrapped_dek`
//! of each version move, each by a compare-and-set in the store, so sidecars
//! may keep serving (and writing) while it runs.
//!
//! Resumable: a version already under the active KEK is skipped, so running
//! it again finishes an interrupted run; [`RewrapReport::last_path`] also
//! names where to continue with `after`.

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::crypto::{Binding, TenantCipher};
use crate::store::{Store, StoreError};

/// Secrets read per page of the walk.
const PAGE: usize = 200;
/// Re-reads of one secret's versions after losing a race to a writer.
const MAX_ATTEMPTS: usize = 5;
/// Secrets rewrapped at once.
const CONCURRENCY: usize = 16;
/// Failures listed in the report (all are counted).
const MAX_FAILURES: usize = 20;

/// What a rewrap did, by version.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RewrapReport {
    pub tenant: String,
    pub active_key: String,
    pub secrets: u64,
    pub versions: u64,
    /// Re-sealed under the active KEK by this run.
    pub rewrapped: u64,
    /// Already under the active KEK.
    pub current: u64,
    /// Could not be opened (unknown key id, or a record that fails its
    /// integrity check, e.g. one copied from another tenant); left as they are.
    pub failed: u64,
    /// Changed by another writer on every attempt; run again to finish them.
    pub raced: u64,
    /// The last secret whose versions were all visited.
    pub last_path: Option<String>,
    /// Up to 20 failures, as `path@version: reason` (reasons name key ids, never values).
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("rewrap stopped after `{}`: {source}", .report.last_path.as_deref().unwrap_or("(start)"))]
pub struct RewrapError {
    /// What was done before the store failed; resume after `last_path`.
    pub report: Box<RewrapReport>,
    #[source]
    pub source: StoreError,
}

/// Re-seals every version of `tenant`'s secrets that sorts after `after`
/// (by path) under `cipher`'s active KEK.
pub async fn rewrap(
    store: &dyn Store,
    cipher: &TenantCipher,
    tenant: &str,
    after: Option<String>,
) -> Result<RewrapReport, RewrapError> {
    let mut report = RewrapReport {
        tenant: tenant.to_owned(),
        active_key: cipher.active_id().to_owned(),
        ..RewrapReport::default()
    };
    let mut cursor = after;
    loop {
        let page = match store.list(tenant, "", cursor.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(source) => return Err(stopped(report, source)),
        };
        let Some(last) = page.last() else {
            return Ok(report);
        };
        cursor = Some(last.path.clone());
        // Secrets are independent, so several are in flight at once; results
        // come back in path order, so `last_path` only ever names a secret
        // whose predecessors are all done.
        let mut done = stream::iter(page.iter().map(|record| async move {
            let mut one = RewrapReport::default();
            rewrap_secret(store, cipher, tenant, &record.path, &mut one)
                .await
                .map(|()| (record.path.clone(), one))
        }))
        .buffered(CONCURRENCY);
        while let Some(outcome) = done.next().await {
            match outcome {
                Ok((path, one)) => {
                    report.absorb(one);
                    report.secrets += 1;
                    report.last_path = Some(path);
                }
                Err(source) => return Err(stopped(report, source)),
            }
        }
    }
}

impl RewrapReport {
    fn absorb(&mut self, one: RewrapReport) {
        self.versions += one.versions;
        self.rewrapped += one.rewrapped;
        self.current += one.current;
        self.failed += one.failed;
        self.raced += one.raced;
        let room = MAX_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(one.failures.into_iter().take(room));
    }
}

fn stopped(report: RewrapReport, source: StoreError) -> RewrapError {
    RewrapError {
        report: Box::new(report),
        source,
    }
}

async fn rewrap_secret(
    store: &dyn Store,
    cipher: &TenantCipher,
    tenant: &str,
    path: &str,
    report: &mut RewrapReport,
) -> Result<(), StoreError> {
    let mut counted = false;
    for attempt in 1..=MAX_ATTEMPTS {
        let versions = store.versions(tenant, path).await?;
        if !counted {
            report.versions += versions.len() as u64;
            counted = true;
        }
        let mut lost = 0;
        for stored in &versions {
            let binding = Binding {
                tenant,
                path,
                version: stored.version,
            };
            match cipher.rewrap(binding, &stored.sealed) {
                // A version current on a retry was counted when it was rewrapped.
                Ok(None) if attempt == 1 => report.current += 1,
                Ok(None) => {}
                Ok(Some(rewrapped)) => {
                    if store
                        .reseal(tenant, path, stored.version, &stored.sealed, &rewrapped)
                        .await?
                    {
                        report.rewrapped += 1;
                    } else {
                        lost += 1;
                    }
                }
                Err(e) if attempt == 1 => {
                    report.failed += 1;
                    if report.failures.len() < MAX_FAILURES {
                        report
                            .failures
                            .push(format!("{path}@{}: {e}", stored.version));
                    }
                }
                Err(_) => {}
            }
        }
        if lost == 0 {
            return Ok(());
        }
        if attempt == MAX_ATTEMPTS {
            report.raced += lost;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::crypto::Keyring;
    use crate::model::{SecretRecord, SecretType, Tier, VersionRecord};
    use crate::store::{Commit, EmbeddedStore};

    /// Writes `versions` versions of `path`, each sealed with `cipher`.
    async fn write(store: &dyn Store, cipher: &TenantCipher, path: &str, versions: u64) {
        let now = Utc::now();
        let record = SecretRecord {
            tenant: "acme".into(),
            path: path.into(),
            active_version: versions,
            latest_version: versions,
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
        };
        let versions = (1..=versions)
            .map(|version| VersionRecord {
                version,
                created_at: now,
                sealed: cipher
                    .seal(
                        Binding {
                            tenant: "acme",
                            path,
                            version,
                        },
                        format!("{path}#{version}").as_bytes(),
                    )
                    .unwrap(),
                expires_at: None,
            })
            .collect();
        let commit = Commit {
            record,
            versions,
            expected_latest: 0,
            prune: vec![],
        };
        store.commit("acme", &commit).await.unwrap();
    }

    #[tokio::test]
    async fn rewraps_every_old_version_once_and_resumes_after_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut ring = Keyring::generate().derive_tenant("acme").unwrap();
        let old = ring.tenant_cipher("acme").unwrap();
        write(&store, &old, "a", 2).await;
        write(&store, &old, "b", 1).await;
        ring.rotate();
        let new = ring.tenant_cipher("acme").unwrap();
        write(&store, &new, "c", 1).await;

        let resumed = rewrap(&store, &new, "acme", Some("a".into()))
            .await
            .unwrap();
        assert_eq!(
            (
                resumed.secrets,
                resumed.versions,
                resumed.rewrapped,
                resumed.current
            ),
            (2, 2, 1, 1),
            "starts after `a`"
        );
        assert_eq!(resumed.last_path.as_deref(), Some("c"));
        let report = rewrap(&store, &new, "acme", None).await.unwrap();
        assert_eq!(
            (
                report.secrets,
                report.versions,
                report.rewrapped,
                report.current
            ),
            (3, 4, 2, 2)
        );
        assert_eq!((report.failed, report.raced), (0, 0));
        for (path, n) in [("a", 2), ("b", 1), ("c", 1)] {
            for v in store.versions("acme", path).await.unwrap() {
                assert_eq!(v.sealed.kek_id, new.active_id());
                let binding = Binding {
                    tenant: "acme",
                    path,
                    version: v.version,
                };
                let plain = new.open(binding, &v.sealed).unwrap();
                assert_eq!(plain.as_slice(), format!("{path}#{}", v.version).as_bytes());
            }
            assert_eq!(store.versions("acme", path).await.unwrap().len(), n);
        }
    }
}
