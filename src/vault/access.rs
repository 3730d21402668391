//! Who may do what. A request's bearer token is redeemed here, the grants that
//! could cover a resource are gathered, and the policy engine decides; plus
//! the operations on grants, tokens and approvals themselves.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{hidden_at, SecretValue, Vault, VaultError, PAGE};
use crate::audit::EventKind;
use crate::identity::{Caller, WorkloadIdentity, DEFAULT_ID_PATTERN};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretPath, SecretRecord, Tier, TokenRecord,
};
use crate::policy::{
    Action, Decision, EventInput, GrantInput, PolicyInput, Resource, Subject, TokenClaims,
    TokenScope,
};
use crate::store::TokenUse;

/// The longest a token may live.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// Which tiers make a token request wait for a human.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessSettings {
    /// Besides `critical`, also hold tokens covering `sensitive` secrets for approval.
    pub sensitive_needs_approval: bool,
}

/// A request's checked credentials: the caller, and the claims of the bearer
/// token it presented (one use of which was spent to get here).
pub(super) struct Access<'a> {
    pub caller: &'a Caller,
    pub token: Option<TokenClaims>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub scope: String,
    pub ttl_seconds: u64,
    #[serde(default)]
    pub max_uses: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A minted token. The token string is shown this once and never stored.
#[derive(Debug, Serialize)]
pub struct TokenIssued {
    pub token: SecretValue,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
    pub max_uses: Option<u64>,
    pub uses_remaining: Option<u64>,
    pub approval_status: ApprovalStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// `"pending"` when the token waits for approval (the contract's 202 body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// An approval as callers see it (without the token's hash).
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    pub approval_id: String,
    pub scope: String,
    pub tier: Tier,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

impl From<ApprovalRecord> for ApprovalView {
    fn from(a: ApprovalRecord) -> Self {
        Self {
            approval_id: a.approval_id,
            scope: a.scope,
            tier: a.tier,
            requested_by: a.requested_by,
            created_at: a.created_at,
            status: a.status,
            decided_by: a.decided_by,
            decided_at: a.decided_at,
        }
    }
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a grant or token pattern (`path` or `prefix/*`) covers `path`.
fn covers(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => path.starts_with(prefix),
        _ => pattern == path,
    }
}

/// Validates a grant or token pattern: a secret path, or one followed by `/*`.
fn parse_pattern(field: &str, pattern: &str) -> Result<(), VaultError> {
    SecretPath::parse(pattern.strip_suffix("/*").unwrap_or(pattern))
        .map(drop)
        .map_err(|e| VaultError::invalid(field, e.to_string()))
}

fn random_id(prefix: &str, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    OsRng.fill_bytes(&mut raw);
    format!("{prefix}{}", B64URL.encode(raw))
}

/// What a refused caller that may not read the secret is told.
#[derive(Debug, Clone, Copy)]
enum Unreadable {
    /// What a path holding nothing answers: `not_found`.
    NotFound,
    /// A write over it: refused, with [`PATH_NOT_WRITABLE`] as the only reason.
    Refused,
}

/// The only reason a write over a secret the caller may not read is given.
pub const PATH_NOT_WRITABLE: &str = "this path is not the caller's to write";

/// A caller that no role matched, under `unmapped_callers: refuse`, holds no
/// authority but its token's: whatever the policy grants the agent, such a
/// caller gets only what its token's scope names (the policy has already
/// checked the token's owner, role and tier).
fn token_only_gate(
    access: &Access<'_>,
    action: Action,
    path: &str,
    decision: Decision,
) -> Decision {
    if !access.caller.token_only || !decision.allow {
        return decision;
    }
    match &access.token {
        Some(token) if token.action == action.as_str() && covers(&token.pattern, path) => decision,
        Some(_) => Decision::deny(format!(
            "caller is mapped to no role: only its token's scope applies, which does not allow {action} here"
        )),
        None => Decision::deny("caller is mapped to no role and presented no token"),
    }
}

/// The policy's view of what is at a path: the secret, or nothing yet.
pub(super) fn resource(record: Option<&SecretRecord>, path: &str) -> Resource {
    record.map_or_else(|| Resource::missing(path), Resource::of)
}

impl Vault {
    /// Checks the caller's credentials once per operation: a presented bearer
    /// token must be known, unexpired, approved and not used up, and one of its
    /// uses is spent (atomically across sidecars).
    pub(super) async fn access<'a>(&self, caller: &'a Caller) -> Result<Access<'a>, VaultError> {
        let Some(bearer) = &caller.bearer else {
            return Ok(Access {
                caller,
                token: None,
            });
        };
        let unauthenticated = |why: &str| Err(VaultError::Unauthenticated(why.to_owned()));
        let denied = |why: &str| {
            Err(VaultError::Denied {
                reasons: vec![why.to_owned()],
            })
        };
        let checked = match self
            .store
            .use_token(&self.workload.tenant, &token_hash(bearer), Utc::now())
            .await?
        {
            TokenUse::Unknown => unauthenticated("unknown bearer token"),
            TokenUse::Expired => unauthenticated("the bearer token has expired"),
            TokenUse::Exhausted => unauthenticated("the bearer token has no uses left"),
            TokenUse::NotApproved(ApprovalStatus::Denied) => {
                denied("the token's approval was denied")
            }
            TokenUse::NotApproved(_) => denied("the token is waiting for approval"),
            TokenUse::Spent { record, .. } => {
                let scope = TokenScope::parse(&record.scope)
                    .map_err(|e| VaultError::Corrupt(format!("stored token scope: {e}")))?;
                Ok(Access {
                    caller,
                    token: Some(scope.claims(
                        &record.agent_id,
                        record.role.as_deref(),
                        record.tier,
                    )),
                })
            }
        };
        match checked {
            Err(e) => Err(self.audit_refusal(caller, None, None, e).await),
            ok => ok,
        }
    }

    /// Grants that may cover `resource` for this agent: only those made by the
    /// secret's owner count, so a grant never opens another agent's secret.
    fn matching_grants(&self, grants: &[Grant], resource: &Resource) -> Vec<GrantInput> {
        let Some(owner) = resource
            .owner
            .as_deref()
            .filter(|o| *o != self.workload.spiffe_id)
        else {
            return Vec::new();
        };
        grants
            .iter()
            .filter(|g| {
                g.agent_id == self.workload.spiffe_id
                    && g.created_by == owner
                    && covers(&g.path, &resource.path)
            })
            .map(|g| GrantInput {
                agent_id: g.agent_id.clone(),
                path: g.path.clone(),
                role: g.role.clone(),
            })
            .collect()
    }

    /// One policy decision, with the grants already loaded.
    pub(super) fn decide_with(
        &self,
        access: &Access<'_>,
        action: Action,
        resource: Resource,
        grants: &[Grant],
    ) -> Result<Decision, VaultError> {
        self.decide_input(access, action, resource, grants, None)
    }

    /// One policy decision, for an audit event (`event`) or a request.
    pub(super) fn decide_input(
        &self,
        access: &Access<'_>,
        action: Action,
        resource: Resource,
        grants: &[Grant],
        event: Option<EventInput>,
    ) -> Result<Decision, VaultError> {
        let input = PolicyInput {
            subject: Subject::new(&self.workload, access.caller),
            action,
            grants: self.matching_grants(grants, &resource),
            resource,
            token: access.token.clone(),
            event,
        };
        let started = std::time::Instant::now();
        let decided = self.policy.decide(&input);
        self.audit.telemetry().policy_evaluated(started.elapsed());
        let decision = decided.map_err(|e| {
            tracing::error!(error = %e, "policy evaluation failed; denying");
            VaultError::Unavailable(format!("policy evaluation failed: {e}"))
        })?;
        Ok(token_only_gate(
            access,
            action,
            &input.resource.path,
            decision,
        ))
    }

    /// Evaluates a front end's own rule, such as Envoy's decision rule, on the
    /// same policy set as every other decision, on the front end's request
    /// (see [`crate::policy::PolicyEngine::eval_rule_from`]). The rule must
    /// have been compiled in ([`crate::policy::PolicyEngine::load_with`]).
    pub fn eval_rule<I, E>(&self, rule: &str, input: &I) -> Result<regorus::Value, E>
    where
        I: crate::policy::RuleInput,
        E: From<crate::policy::PolicyError> + From<I::Error>,
    {
        let started = std::time::Instant::now();
        let result = self.policy.eval_rule_from(rule, input);
        self.audit.telemetry().policy_evaluated(started.elapsed());
        result
    }

    /// Loads the grants only when they can matter: for a secret of another agent.
    pub(super) async fn grants_for(&self, resource: &Resource) -> Result<Vec<Grant>, VaultError> {
        match resource.owner.as_deref() {
            Some(owner) if owner != self.workload.spiffe_id => {
                Ok(self.store.grants(&self.workload.tenant).await?)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Asks the policy; a denial becomes [`VaultError::Denied`] with its
    /// reasons, unless the caller may not even read the secret: then it gets
    /// exactly what a path holding nothing gets, `not_found`, so that a refusal
    /// never tells it that something is there. For the operations here a
    /// missing path is a 404 (read, versions, delete, rotate, rollback,
    /// metadata); writes that would create the path use [`Self::authorize_claim`].
    /// Either way the audit records the denial with every reason.
    pub(super) async fn authorize(
        &self,
        access: &Access<'_>,
        action: Action,
        resource: Resource,
    ) -> Result<(), VaultError> {
        self.authorize_as(access, action, resource, Unreadable::NotFound)
            .await
    }

    /// [`Self::authorize`] for a write that would create the path were it
    /// free. A secret the caller may not read still refuses such a write: the
    /// one signal that something is there, so the answer says no more than
    /// that the path is not the caller's to write.
    pub(super) async fn authorize_claim(
        &self,
        access: &Access<'_>,
        action: Action,
        resource: Resource,
    ) -> Result<(), VaultError> {
        self.authorize_as(access, action, resource, Unreadable::Refused)
            .await
    }

    async fn authorize_as(
        &self,
        access: &Access<'_>,
        action: Action,
        resource: Resource,
        unreadable: Unreadable,
    ) -> Result<(), VaultError> {
        let grants = self.grants_for(&resource).await?;
        let path = resource.path.clone();
        let (tier, exists) = (resource.tier, resource.exists);
        // A refused action other than a read on an existing secret asks
        // whether the caller may read it; only then is the resource needed twice.
        let recheck = (exists && action != Action::Read).then(|| resource.clone());
        let decision = self.decide_with(access, action, resource, &grants)?;
        if decision.allow {
            return self.audit_gate(access.caller, action, &path, tier).await;
        }
        tracing::info!(
            caller = %access.caller.spiffe_id, action = %action, path = %path,
            reasons = ?decision.reasons, "denied"
        );
        let hidden = match recheck {
            Some(existing) => {
                !self
                    .decide_with(access, Action::Read, existing, &grants)?
                    .allow
            }
            None => exists && action == Action::Read,
        };
        let denied = VaultError::Denied {
            reasons: decision.reasons,
        };
        let denied = self
            .audit_refusal(access.caller, Some(action), Some(&path), denied)
            .await;
        Err(match (hidden, unreadable) {
            (false, _) => denied,
            (true, Unreadable::NotFound) => hidden_at(&path),
            (true, Unreadable::Refused) => VaultError::Denied {
                reasons: vec![PATH_NOT_WRITABLE.to_owned()],
            },
        })
    }

    /// Whether the caller may read what is at `resource`, without recording
    /// anything: for operations that treat a secret the caller may not read
    /// as if nothing were there.
    pub(super) async fn may_read(
        &self,
        access: &Access<'_>,
        resource: &Resource,
    ) -> Result<bool, VaultError> {
        let grants = self.grants_for(resource).await?;
        Ok(self
            .decide_with(access, Action::Read, resource.clone(), &grants)?
            .allow)
    }

    /// Lets another agent of this tenant read a secret, or every secret under
    /// `prefix/*`, that this agent owns.
    pub async fn create_grant(
        &self,
        caller: &Caller,
        agent_id: &str,
        path: &str,
    ) -> Result<Grant, VaultError> {
        let access = self.access(caller).await?;
        let grantee = self.agent_id_of(agent_id)?;
        if grantee == self.workload.spiffe_id {
            return Err(VaultError::invalid(
                "agent_id",
                "an agent needs no grant to its own secrets",
            ));
        }
        parse_pattern("path", path)?;
        // A secret the caller may not read counts as nothing there: the grant
        // answers as for a free path and, reaching only this agent's own
        // secrets, never opens it.
        let target = match SecretPath::parse(path) {
            Ok(exact) => match self.record(&exact).await? {
                Some(record) => {
                    let found = Resource::of(&record);
                    if self.may_read(&access, &found).await? {
                        found
                    } else {
                        Resource::missing(path)
                    }
                }
                None => Resource::missing(path),
            },
            Err(_) => Resource::missing(path),
        };
        self.authorize(&access, Action::Grant, target).await?;
        let grant = Grant {
            grant_id: random_id("g_", 12),
            agent_id: grantee,
            path: path.to_owned(),
            created_at: Utc::now(),
            created_by: self.workload.spiffe_id.clone(),
            role: caller.role.clone(),
        };
        self.store.put_grant(&self.workload.tenant, &grant).await?;
        tracing::info!(caller = %caller.spiffe_id, grant_id = %grant.grant_id, grantee = %grant.agent_id, path, "grant created");
        self.audit_done(caller, EventKind::GrantCreated, Action::Grant, path, None)
            .await;
        Ok(grant)
    }

    /// Grants this agent made or received.
    pub async fn grants(&self, caller: &Caller) -> Result<Vec<Grant>, VaultError> {
        self.access(caller).await?;
        let me = &self.workload.spiffe_id;
        let mut grants: Vec<Grant> = self
            .store
            .grants(&self.workload.tenant)
            .await?
            .into_iter()
            .filter(|g| &g.created_by == me || &g.agent_id == me)
            .collect();
        grants.sort_by_key(|g| g.created_at);
        Ok(grants)
    }

    /// Revokes a grant this agent made.
    pub async fn delete_grant(&self, caller: &Caller, grant_id: &str) -> Result<(), VaultError> {
        let access = self.access(caller).await?;
        let grant = self
            .store
            .grants(&self.workload.tenant)
            .await?
            .into_iter()
            .find(|g| g.grant_id == grant_id && g.created_by == self.workload.spiffe_id)
            .ok_or_else(|| {
                VaultError::NotFound(format!("no grant `{grant_id}` made by this agent"))
            })?;
        self.authorize(&access, Action::Grant, Resource::missing(&grant.path))
            .await?;
        if !self
            .store
            .delete_grant(&self.workload.tenant, grant_id)
            .await?
        {
            return Err(VaultError::NotFound(format!("no grant `{grant_id}`")));
        }
        self.audit_done(
            caller,
            EventKind::GrantRevoked,
            Action::Grant,
            &grant.path,
            None,
        )
        .await;
        Ok(())
    }

    /// The agent-level SPIFFE ID for a grantee named by ID or by agent name,
    /// which must be of this tenant.
    fn agent_id_of(&self, agent: &str) -> Result<String, VaultError> {
        let parsed = if agent.starts_with("spiffe://") {
            WorkloadIdentity::parse(agent, DEFAULT_ID_PATTERN)
        } else {
            WorkloadIdentity::new(&self.workload.trust_domain, &self.workload.tenant, agent)
        }
        .map_err(|e| VaultError::invalid("agent_id", e.to_string()))?;
        if parsed.tenant != self.workload.tenant
            || parsed.trust_domain != self.workload.trust_domain
        {
            return Err(VaultError::invalid(
                "agent_id",
                format!("must name an agent of tenant `{}`", self.workload.tenant),
            ));
        }
        Ok(parsed.spiffe_id)
    }

    /// Mints a scoped bearer token. A scope covering a critical secret (or a
    /// sensitive one, when so configured) yields a token that works only after
    /// an approver says yes.
    pub async fn request_token(
        &self,
        caller: &Caller,
        req: TokenRequest,
    ) -> Result<TokenIssued, VaultError> {
        let access = self.access(caller).await?;
        let scope = TokenScope::parse(&req.scope)
            .map_err(|e| VaultError::invalid("scope", e.to_string()))?;
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&req.ttl_seconds) {
            return Err(VaultError::invalid(
                "ttl_seconds",
                format!("must be between 1 and {MAX_TOKEN_TTL_SECONDS}"),
            ));
        }
        if req.max_uses == Some(0) {
            return Err(VaultError::invalid("max_uses", "must be at least 1"));
        }
        if req.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(VaultError::invalid("description", "longer than 1024 bytes"));
        }
        // Secrets the caller may not read count as nothing there: a token
        // never reaches them, and they neither refuse it nor raise its tier.
        let mut covered = Vec::new();
        for record in self.covered_by(&scope.pattern).await? {
            if self.may_read(&access, &Resource::of(&record)).await? {
                covered.push(record);
            }
        }
        if covered.is_empty() {
            self.authorize(&access, Action::Token, Resource::missing(&scope.pattern))
                .await?;
        }
        for record in &covered {
            self.authorize(&access, Action::Token, Resource::of(record))
                .await?;
        }
        let tier = covered
            .iter()
            .map(|r| r.tier)
            .max()
            .unwrap_or(Tier::Standard);
        let unguarded = if self.access.sensitive_needs_approval {
            Tier::Standard
        } else {
            Tier::Sensitive
        };
        let needs_approval = tier > unguarded;
        let now = Utc::now();
        let token = random_id("avt_", 32);
        let hash = token_hash(&token);
        let approval = needs_approval.then(|| ApprovalRecord {
            approval_id: random_id("ap_", 12),
            token_hash: hash.clone(),
            scope: req.scope.clone(),
            tier,
            requested_by: caller.spiffe_id.clone(),
            created_at: now,
            status: ApprovalStatus::Pending,
            decided_by: None,
            decided_at: None,
        });
        let record = TokenRecord {
            hash,
            scope: req.scope.clone(),
            expires_at: now + chrono::Duration::seconds(req.ttl_seconds as i64),
            max_uses: req.max_uses,
            approval_id: approval.as_ref().map(|a| a.approval_id.clone()),
            description: req.description.clone(),
            created_at: now,
            created_by: caller.spiffe_id.clone(),
            agent_id: self.workload.spiffe_id.clone(),
            role: caller.role.clone(),
            tier: tier.max(unguarded),
        };
        self.store
            .create_token(&self.workload.tenant, &record, approval.as_ref())
            .await?;
        let approval_status = if needs_approval {
            ApprovalStatus::Pending
        } else {
            ApprovalStatus::NotRequired
        };
        tracing::info!(
            caller = %caller.spiffe_id, scope = %req.scope, approval = approval_status.as_str(), "token issued"
        );
        let mut event = self.event(EventKind::TokenIssued, caller, Action::Token, &req.scope);
        event.reasons = vec![format!("approval {}", approval_status.as_str())];
        self.audit_all(vec![event]).await;
        Ok(TokenIssued {
            token: SecretValue::new(token),
            scope: req.scope,
            expires_at: record.expires_at,
            max_uses: req.max_uses,
            uses_remaining: req.max_uses,
            approval_status,
            approval_id: record.approval_id,
            status: needs_approval.then_some("pending"),
        })
    }

    /// The existing secrets a token pattern covers.
    async fn covered_by(&self, pattern: &str) -> Result<Vec<SecretRecord>, VaultError> {
        let Some(prefix) = pattern.strip_suffix('*') else {
            let path = SecretPath::parse(pattern)
                .map_err(|e| VaultError::invalid("scope", e.to_string()))?;
            return Ok(self.record(&path).await?.into_iter().collect());
        };
        let mut covered = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.records(prefix, after.as_deref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|r| r.path.clone());
            covered.extend(page);
            if !full {
                return Ok(covered);
            }
        }
    }

    /// Approvals the caller may see: every one for an approver, else its own requests.
    pub async fn approvals(&self, caller: &Caller) -> Result<Vec<ApprovalView>, VaultError> {
        let access = self.access(caller).await?;
        let approver = self
            .decide_with(
                &access,
                Action::Approve,
                Resource::missing("approvals"),
                &[],
            )?
            .allow;
        let mut approvals: Vec<ApprovalRecord> = self
            .store
            .approvals(&self.workload.tenant)
            .await?
            .into_iter()
            .filter(|a| approver || a.requested_by == caller.spiffe_id)
            .collect();
        approvals.sort_by_key(|a| std::cmp::Reverse(a.created_at));
        Ok(approvals.into_iter().map(ApprovalView::from).collect())
    }

    /// An approver's yes or no on a pending token request; nobody decides their own.
    pub async fn decide_approval(
        &self,
        caller: &Caller,
        approval_id: &str,
        approve: bool,
    ) -> Result<ApprovalView, VaultError> {
        let access = self.access(caller).await?;
        self.authorize(
            &access,
            Action::Approve,
            Resource::missing(format!("approvals/{approval_id}")),
        )
        .await?;
        let mut approval = self
            .store
            .approvals(&self.workload.tenant)
            .await?
            .into_iter()
            .find(|a| a.approval_id == approval_id)
            .ok_or_else(|| VaultError::NotFound(format!("no approval `{approval_id}`")))?;
        if approval.requested_by == caller.spiffe_id {
            let own = VaultError::Denied {
                reasons: vec!["nobody may decide their own request".into()],
            };
            let path = format!("approvals/{approval_id}");
            return Err(self
                .audit_refusal(caller, Some(Action::Approve), Some(&path), own)
                .await);
        }
        if approval.status != ApprovalStatus::Pending {
            return Err(VaultError::AlreadyDecided(format!(
                "approval `{approval_id}` is already {}",
                approval.status.as_str()
            )));
        }
        approval.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        approval.decided_by = Some(caller.spiffe_id.clone());
        approval.decided_at = Some(Utc::now());
        if !self
            .store
            .decide_approval(&self.workload.tenant, &approval)
            .await?
        {
            return Err(VaultError::AlreadyDecided(format!(
                "approval `{approval_id}` was decided meanwhile"
            )));
        }
        tracing::info!(
            caller = %caller.spiffe_id, approval_id, status = approval.status.as_str(), "approval decided"
        );
        let path = format!("approvals/{approval_id}");
        let mut event = self.event(EventKind::Approval, caller, Action::Approve, &path);
        event.reasons = vec![approval.status.as_str().to_owned()];
        self.audit_all(vec![event]).await;
        Ok(approval.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_exact_paths_and_prefixes() {
        assert!(covers("a/b", "a/b"));
        assert!(!covers("a/b", "a/bc"));
        assert!(covers("a/*", "a/b"));
        assert!(covers("a/*", "a/b/c"));
        assert!(!covers("a/*", "a"));
        assert!(!covers("a/*", "ab/c"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (random_id("avt_", 32), random_id("avt_", 32));
        assert_ne!(a, b);
        assert!(a.starts_with("avt_") && a.len() > 40);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
