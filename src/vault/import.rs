//! `.env` import: each variable becomes `<namespace>/<NAME>`. The whole file
//! is parsed and checked before anything is written, and every write lands in
//! one atomic commit, so an import is all or nothing.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::access::resource;
use super::dotenv;
use super::{parse_path, IdempotencyKey, PutRequest, SecretValue, Vault, VaultError};
use crate::audit::EventKind;
use crate::identity::Caller;
use crate::model::{SecretPath, Tier};
use crate::policy::{Action, Resource};
use crate::store::Idempotent;

/// Serialized only for an idempotency digest.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub dotenv: SecretValue,
    pub namespace: String,
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Tiers by variable-name prefix; the longest matching prefix wins over `tier`.
    #[serde(default)]
    pub tier_prefix: BTreeMap<String, Tier>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    Created,
    Updated,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedSecret {
    pub path: String,
    pub tier: Tier,
    pub action: ImportAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    pub skipped: usize,
    pub dry_run: bool,
    pub secrets: Vec<ImportedSecret>,
    /// Variables assigned more than once, with the lines that did; the last one won.
    pub duplicates: BTreeMap<String, Vec<usize>>,
}

impl ImportRequest {
    /// The tier the request names for a variable, if any; without one a new
    /// secret gets the default and an overwritten one keeps its own.
    fn tier_for(&self, name: &str) -> Option<Tier> {
        self.tier_prefix
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, tier)| *tier)
            .or(self.tier)
    }
}

impl Vault {
    /// Imports a `.env` file, or with `dry_run` reports what it would do.
    /// Existing secrets are skipped unless `overwrite`, so a re-run is a no-op.
    pub async fn import(
        &self,
        caller: &Caller,
        req: ImportRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<ImportReport, VaultError> {
        let namespace = parse_path(&req.namespace).map_err(|e| match e {
            VaultError::Invalid { message, .. } => VaultError::invalid("namespace", message),
            other => other,
        })?;
        if req.tier_prefix.keys().any(String::is_empty) {
            return Err(VaultError::invalid(
                "tier_prefix",
                "prefixes must not be empty",
            ));
        }
        let parsed = dotenv::parse(req.dotenv.expose())
            .map_err(|e| VaultError::invalid("dotenv", e.to_string()))?;
        if parsed.entries.len() > self.limits.max_import_entries {
            return Err(VaultError::invalid(
                "dotenv",
                format!("more than {} variables", self.limits.max_import_entries),
            ));
        }
        let mut planned = Vec::with_capacity(parsed.entries.len());
        for entry in &parsed.entries {
            let path = SecretPath::parse(&format!("{namespace}/{}", entry.name)).map_err(|e| {
                VaultError::invalid(
                    "dotenv",
                    format!(
                        "line {}: `{}` makes a bad path: {e}",
                        entry.line, entry.name
                    ),
                )
            })?;
            let put = PutRequest {
                value: entry.value.clone(),
                tier: req.tier_for(&entry.name),
                ..PutRequest::new("")
            };
            self.validate_put(&put).map_err(|e| match e {
                VaultError::TooLarge { limit, .. } => VaultError::TooLarge {
                    what: format!("value of `{}` (line {})", entry.name, entry.line),
                    limit,
                },
                other => other,
            })?;
            planned.push((path, put));
        }
        let access = self.access(caller).await?;
        self.authorize(
            &access,
            Action::Import,
            Resource::missing(namespace.as_str()),
        )
        .await?;
        // A dry run writes nothing, its key included.
        let once = match req.dry_run {
            true => None,
            false => Self::once(key, caller, "import", namespace.as_str(), &req),
        };
        let once = once.as_ref();
        self.at_most_once(once, || async {
            let report = self
                .retrying(|| async {
                    let now = Utc::now();
                    let mut commits = Vec::new();
                    let mut secrets = Vec::with_capacity(planned.len());
                    for (path, put) in &planned {
                        let current = self.record(path).await?;
                        if !req.dry_run && (current.is_none() || req.overwrite) {
                            self.authorize_claim(
                                &access,
                                Action::Write,
                                resource(current.as_ref(), path.as_str()),
                            )
                            .await?;
                        }
                        let tier = put
                            .tier
                            .or(current.as_ref().map(|r| r.tier))
                            .unwrap_or_default();
                        let action = match (&current, req.overwrite) {
                            (None, _) => ImportAction::Created,
                            (Some(_), false) => ImportAction::Skipped,
                            (Some(_), true) => ImportAction::Updated,
                        };
                        if action != ImportAction::Skipped && !req.dry_run {
                            commits.push(self.plan_write(path, current, put, now).await?);
                        }
                        secrets.push(ImportedSecret {
                            path: path.to_string(),
                            tier,
                            action,
                        });
                    }
                    let count = |a| secrets.iter().filter(|s| s.action == a).count();
                    let report = ImportReport {
                        created: count(ImportAction::Created),
                        updated: count(ImportAction::Updated),
                        skipped: count(ImportAction::Skipped),
                        dry_run: req.dry_run,
                        secrets,
                        duplicates: parsed.duplicates.clone(),
                    };
                    let record = self.once_record(once, &report)?;
                    for commit in &commits {
                        self.write_bases.forget(&commit.record.path);
                    }
                    Ok(
                        match self
                            .store
                            .commit_all_once(&self.workload.tenant, &commits, record.as_ref())
                            .await?
                        {
                            Idempotent::Applied(()) => Idempotent::Applied(report),
                            Idempotent::Replayed(prior) => Idempotent::Replayed(prior),
                        },
                    )
                })
                .await?;
            let Idempotent::Applied(report) = report else {
                return Ok(report);
            };
            tracing::debug!(
                caller = %caller, namespace = %namespace, created = report.created, updated = report.updated,
                skipped = report.skipped, dry_run = report.dry_run, "dotenv imported"
            );
            if !report.dry_run {
                let events = report
                    .secrets
                    .iter()
                    .filter(|s| s.action != ImportAction::Skipped)
                    .map(|s| self.event(EventKind::Imported, caller, Action::Write, &s.path))
                    .collect();
                self.audit_all(events).await;
            }
            Ok(Idempotent::Applied(report))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_tier_prefix_wins() {
        let req = ImportRequest {
            dotenv: SecretValue::new(String::new()),
            namespace: "ns".into(),
            tier: Some(Tier::Standard),
            tier_prefix: BTreeMap::from([
                ("STRIPE_".into(), Tier::Sensitive),
                ("STRIPE_LIVE_".into(), Tier::Critical),
            ]),
            dry_run: false,
            overwrite: false,
        };
        assert_eq!(req.tier_for("STRIPE_LIVE_KEY"), Some(Tier::Critical));
        assert_eq!(req.tier_for("STRIPE_TEST_KEY"), Some(Tier::Sensitive));
        assert_eq!(req.tier_for("OPENAI_KEY"), Some(Tier::Standard));
    }
}
