//! `Idempotency-Key`: a write retried with the same key gets the first
//! write's answer instead of writing again, on every sidecar sharing the
//! store, for [`IDEMPOTENCY_WINDOW`]. Every write of the contract takes one
//! (PUT, PATCH and DELETE of a secret, rollback, rotate, import), through one
//! mechanism: [`Vault::at_most_once`] around the write, and the answer
//! ([`Vault::once_record`]) stored in the same atomic step as the write
//! itself (`Store::write_version`, `commit_all_once`, `delete_once`), so there
//! is no moment at which the write is visible and its key is not (or the
//! other way round).
//!
//! The key is bound to the request it first answered: who sent it (SPIFFE ID,
//! role, and the bearer token if any) and what it asked for (operation, path,
//! body). A request under the same key that differs is refused with
//! `idempotency_key_reused`. That binding is a SHA-256 digest sealed under the
//! tenant's KEK, so the store never holds a plain hash of a secret value
//! (which would let anyone reading the store test guesses against it). The
//! answers themselves never hold a value: versions, paths, metadata, reports.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::crypto::{Binding, Sealed};
use crate::identity::Caller;
use crate::store::{IdempotencyRecord, Idempotent};

/// How long a write's answer is kept for retries under its key.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest key accepted (UUIDs and ULIDs fit many times over).
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A validated `Idempotency-Key`: 1–128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, VaultError> {
        if raw.is_empty()
            || raw.len() > MAX_IDEMPOTENCY_KEY
            || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(VaultError::invalid(
                "Idempotency-Key",
                format!("1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the store keeps under a key: the request's sealed digest and the
/// answer (named `written`, as PUT's answers were before other writes took
/// keys, so records written then still replay).
#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    fingerprint: Sealed,
    #[serde(rename = "written")]
    answer: serde_json::Value,
}

/// The tenant-bound AEAD context of a key's digest (version 0 is never a secret's).
fn binding<'a>(tenant: &'a str, name: &'a str) -> Binding<'a> {
    Binding {
        tenant,
        path: name,
        version: 0,
    }
}

/// One write under an `Idempotency-Key`: the key, and the digest of the
/// request it is bound to.
pub(super) struct Once<'k> {
    key: &'k IdempotencyKey,
    digest: [u8; 32],
}

impl Once<'_> {
    /// The AEAD context name of this key's digest.
    fn name(&self) -> String {
        format!("idempotency:{}", self.key.as_str())
    }
}

impl Vault {
    /// Binds `key` (if the request carried one) to this caller's `op` on
    /// `target` (a path, or an import's namespace) with `body`.
    pub(super) fn once<'k>(
        key: Option<&'k IdempotencyKey>,
        caller: &Caller,
        op: &str,
        target: &str,
        body: &impl Serialize,
    ) -> Option<Once<'k>> {
        let key = key?;
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(op.as_bytes());
        field(caller.spiffe_id.as_bytes());
        field(caller.role.as_deref().unwrap_or("").as_bytes());
        field(caller.bearer.as_deref().unwrap_or("").as_bytes());
        field(target.as_bytes());
        // Every field of the body, a value included, in one canonical encoding.
        let body = Zeroizing::new(serde_json::to_vec(body).unwrap_or_default());
        field(&body);
        Some(Once {
            key,
            digest: hash.finalize().into(),
        })
    }

    /// The record to store with the write whose answer is `answer`.
    pub(super) fn once_record<T: Serialize>(
        &self,
        once: Option<&Once<'_>>,
        answer: &T,
    ) -> Result<Option<IdempotencyRecord>, VaultError> {
        let Some(once) = once else {
            return Ok(None);
        };
        let fingerprint = self
            .cipher
            .seal(binding(&self.workload.tenant, &once.name()), &once.digest)
            .map_err(|source| VaultError::Integrity {
                path: once.name(),
                source,
            })?;
        let answer =
            serde_json::to_value(answer).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let stored = StoredAnswer {
            fingerprint,
            answer,
        };
        Ok(Some(IdempotencyRecord {
            key: once.key.as_str().to_owned(),
            answer: serde_json::to_vec(&stored).map_err(|e| VaultError::Corrupt(e.to_string()))?,
            ttl: IDEMPOTENCY_WINDOW,
        }))
    }

    /// The first answer given under the key, if `stored` answered this same
    /// request; `IdempotencyMismatch` if it answered a different one.
    fn replay<T: DeserializeOwned>(&self, once: &Once<'_>, stored: &[u8]) -> Result<T, VaultError> {
        let corrupt =
            |e: serde_json::Error| VaultError::Corrupt(format!("idempotency record: {e}"));
        let stored: StoredAnswer = serde_json::from_slice(stored).map_err(corrupt)?;
        let first = self
            .cipher
            .open(
                binding(&self.workload.tenant, &once.name()),
                &stored.fingerprint,
            )
            .map_err(|source| VaultError::Integrity {
                path: once.name(),
                source,
            })?;
        if first.as_slice() != once.digest.as_slice() {
            return Err(VaultError::IdempotencyMismatch(
                once.key.as_str().to_owned(),
            ));
        }
        serde_json::from_value(stored.answer).map_err(corrupt)
    }

    /// The first answer stored under the key, if there is one.
    async fn first_answer<T: DeserializeOwned>(
        &self,
        once: Option<&Once<'_>>,
    ) -> Result<Option<T>, VaultError> {
        let Some(once) = once else {
            return Ok(None);
        };
        match self
            .store
            .idempotent_answer(&self.workload.tenant, once.key.as_str())
            .await?
        {
            Some(stored) => self.replay(once, &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Runs `write` at most once per key: a retry whose key already holds an
    /// answer gets it back without writing; a write the store finds the key
    /// taken for (a retry that raced its original) gets that answer; and a
    /// write that failed because a same-key twin changed what it depends on
    /// meanwhile (the twin deleted the secret first: this one found nothing)
    /// gets the twin's answer too. Without a key, `write` just runs.
    pub(super) async fn at_most_once<T, Fut>(
        &self,
        once: Option<&Once<'_>>,
        write: impl FnOnce() -> Fut,
    ) -> Result<T, VaultError>
    where
        T: DeserializeOwned,
        Fut: Future<Output = Result<Idempotent<T>, VaultError>>,
    {
        if let Some(first) = self.first_answer(once).await? {
            return Ok(first);
        }
        match (write().await, once) {
            (Ok(Idempotent::Applied(done)), _) => Ok(done),
            (Ok(Idempotent::Replayed(prior)), Some(once)) => self.replay(once, &prior),
            (Ok(Idempotent::Replayed(_)), None) => Err(VaultError::Corrupt(
                "the store replayed a write that had no idempotency key".into(),
            )),
            (Err(e), Some(_)) if refusal_a_twin_may_explain(&e) => {
                match self.first_answer(once).await {
                    Ok(Some(first)) => Ok(first),
                    Err(mismatch @ VaultError::IdempotencyMismatch(_)) => Err(mismatch),
                    _ => Err(e),
                }
            }
            (Err(e), _) => Err(e),
        }
    }
}

/// Errors a same-key request that committed first could have caused.
fn refusal_a_twin_may_explain(e: &VaultError) -> bool {
    matches!(
        e,
        VaultError::NotFound(_)
            | VaultError::Hidden(_)
            | VaultError::Conflict { .. }
            | VaultError::Raced
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::parse("3f2a-9c1e_ok.1").is_ok());
        for bad in ["", " ", "a b", "é", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            let err = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(
                err.code(),
                super::super::ErrorCode::InvalidRequest,
                "{bad:?}"
            );
        }
    }
}
