//! Where the domain meets the audit log. Events are emitted at a few central
//! points so that every front end audits alike: refusals where they are
//! decided (`authorize`, credential checks), successes once at the end of each
//! operation. Reading the audit log is itself a policy decision (`audit`).

use std::collections::HashMap;
use std::time::Duration;

use super::access::Access;
use super::{Vault, VaultError};
use crate::audit::{
    AuditEntry, AuditError, AuditEvent, AuditId, Auditor, Batch, EventKind, Guard, Subscription,
    TooManyStreams, MAX_READ,
};
use crate::identity::Caller;
use crate::model::{Grant, SecretPath, Tier};
use crate::policy::{Action, EventInput, Resource, TokenClaims};

/// Events `GET /v1/audit` returns when the caller names no limit.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

impl From<TooManyStreams> for VaultError {
    fn from(e: TooManyStreams) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<AuditError> for VaultError {
    fn from(e: AuditError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Actions that change state; under `audit.fail_closed` they run only while
/// the audit log takes events.
fn changes_state(action: Action) -> bool {
    !matches!(action, Action::Read | Action::List | Action::Audit)
}

impl Vault {
    pub(super) fn event(
        &self,
        kind: EventKind,
        caller: &Caller,
        action: Action,
        path: &str,
    ) -> AuditEvent {
        AuditEvent::new(kind, caller)
            .action(action.as_str())
            .path(path)
    }

    /// Records a completed operation. Never fails: an event the store cannot
    /// take waits in memory and is retried.
    pub(super) async fn audit_done(
        &self,
        caller: &Caller,
        kind: EventKind,
        action: Action,
        path: &str,
        version: Option<u64>,
    ) {
        let event = self.event(kind, caller, action, path).version(version);
        self.note_changes(std::slice::from_ref(&event));
        let _ = self.audit.record(vec![event], Guard::BestEffort).await;
    }

    /// A completed change by this sidecar makes the leak guard's automata
    /// stale at once; the store's announcement of it may still be on the way.
    fn note_changes(&self, events: &[AuditEvent]) {
        let changes_values = |kind| {
            matches!(
                kind,
                EventKind::Written
                    | EventKind::Updated
                    | EventKind::RolledBack
                    | EventKind::Rotated
                    | EventKind::Deleted
                    | EventKind::Imported
                    | EventKind::GrantCreated
                    | EventKind::GrantRevoked
            )
        };
        if events.iter().any(|e| changes_values(e.event)) {
            self.redactor.changed();
        }
    }

    /// Records an event a front end decided on its own, such as an Envoy
    /// check. Never fails: an event the store cannot take waits in memory.
    pub async fn audit_event(&self, event: AuditEvent) {
        let _ = self.audit.record(vec![event], Guard::BestEffort).await;
    }

    /// Records several completed changes at once (an import).
    pub(super) async fn audit_all(&self, events: Vec<AuditEvent>) {
        self.note_changes(&events);
        let _ = self.audit.record(events, Guard::BestEffort).await;
    }

    /// Records a read before its value goes out. Under `audit.fail_closed` the
    /// value of a secret at or above `audit.strict_reads` (critical by
    /// default) goes out only once its event is stored.
    pub(super) async fn audit_read(
        &self,
        caller: &Caller,
        path: &str,
        version: Option<u64>,
        tier: Tier,
    ) -> Result<(), VaultError> {
        let event = self
            .event(EventKind::Accessed, caller, Action::Read, path)
            .version(version);
        let strict = self.audit.settings().strict_reads;
        let guard = match strict.is_some_and(|from| tier >= from) {
            true => Guard::Disclosure,
            false => Guard::BestEffort,
        };
        Ok(self.audit.record(vec![event], guard).await?)
    }

    /// Records a refused request (policy denial or bad credentials) and hands
    /// the error back; other errors pass through unrecorded.
    pub(super) async fn audit_refusal(
        &self,
        caller: &Caller,
        action: Option<Action>,
        path: Option<&str>,
        error: VaultError,
    ) -> VaultError {
        let reasons = match &error {
            VaultError::Denied { reasons } => reasons.clone(),
            VaultError::Unauthenticated(why) => vec![why.clone()],
            _ => return error,
        };
        let mut event =
            AuditEvent::new(EventKind::Denied, caller).refused(error.code().as_str(), reasons);
        event.action = action.map(|a| a.as_str().to_owned());
        event.path = path.map(str::to_owned);
        let _ = self.audit.record(vec![event], Guard::BestEffort).await;
        error
    }

    /// What an allowed decision must still pass: under `audit.fail_closed`,
    /// a change or a critical read does not run while the audit log is down.
    pub(super) async fn audit_gate(
        &self,
        caller: &Caller,
        action: Action,
        path: &str,
        tier: Option<Tier>,
    ) -> Result<(), VaultError> {
        if !(changes_state(action) || (action == Action::Read && tier == Some(Tier::Critical))) {
            return Ok(());
        }
        let Err(e) = self.audit.check_open() else {
            return Ok(());
        };
        let refused = self
            .event(EventKind::Denied, caller, action, path)
            .refused("unavailable", vec![e.to_string()]);
        let _ = self.audit.record(vec![refused], Guard::BestEffort).await;
        Err(e.into())
    }

    /// Up to `limit` of the newest audit events the caller may see, newest
    /// first. An auditor role sees the tenant's every event; any other
    /// caller, among the newest [`MAX_READ`] events, its own and those about
    /// secrets it may read (the policy's `audit` action decides each).
    pub async fn audit_log(
        &self,
        caller: &Caller,
        limit: Option<usize>,
    ) -> Result<Vec<AuditEntry>, VaultError> {
        let limit = limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
        if !(1..=MAX_READ).contains(&limit) {
            return Err(VaultError::invalid(
                "limit",
                format!("must be between 1 and {MAX_READ}"),
            ));
        }
        let access = self.access(caller).await?;
        let scope = self.audit_scope(&access).await?;
        let entries = match scope {
            AuditScope::Tenant => self.audit.newest(limit).await?,
            AuditScope::Caller => {
                let mut seen = self
                    .audit_visible(&access, self.audit.newest(MAX_READ).await?)
                    .await?;
                seen.truncate(limit);
                seen
            }
        };
        self.audit_done(caller, EventKind::AuditRead, Action::Audit, "audit", None)
            .await;
        Ok(entries)
    }

    /// Whether the caller sees the whole tenant's audit log (the policy's
    /// `audit` action without an event), or only what [`Self::audit_visible`] keeps.
    async fn audit_scope(&self, access: &Access<'_>) -> Result<AuditScope, VaultError> {
        let whole = self
            .decide_with(access, Action::Audit, Resource::missing("audit"), &[])?
            .allow;
        Ok(if whole {
            AuditScope::Tenant
        } else {
            AuditScope::Caller
        })
    }

    /// The entries the caller may see, in their order: the policy decides
    /// each (`audit`, with the event and the secret it is about as it is now).
    /// Each path is looked up once.
    async fn audit_visible(
        &self,
        access: &Access<'_>,
        entries: Vec<AuditEntry>,
    ) -> Result<Vec<AuditEntry>, VaultError> {
        let mut resources: HashMap<String, Resource> = HashMap::new();
        let mut grants: Option<Vec<Grant>> = None;
        let mut visible = Vec::new();
        for entry in entries {
            let event = &entry.event;
            let resource = match event.path.as_deref().filter(|_| about_a_secret(event)) {
                Some(path) => match resources.get(path) {
                    Some(known) => known.clone(),
                    None => {
                        let found = match SecretPath::parse(path) {
                            Ok(exact) => {
                                super::access::resource(self.record(&exact).await?.as_ref(), path)
                            }
                            Err(_) => Resource::missing(path),
                        };
                        resources.insert(path.to_owned(), found.clone());
                        found
                    }
                },
                None => Resource::missing(event.path.as_deref().unwrap_or("")),
            };
            let grants = match (&grants, resource.owner.as_deref()) {
                (Some(loaded), _) => loaded.as_slice(),
                (None, Some(owner)) if owner != self.workload.spiffe_id => {
                    grants.insert(self.store.grants(&self.workload.tenant).await?)
                }
                (None, _) => &[],
            };
            let input = EventInput {
                caller: event.spiffe_id.clone(),
                kind: event.event.as_str().to_owned(),
                action: event.action.clone(),
            };
            if self
                .decide_input(access, Action::Audit, resource, grants, Some(input))?
                .allow
            {
                visible.push(entry);
            }
        }
        Ok(visible)
    }

    /// Follows the audit events the caller may see (as [`Self::audit_log`]
    /// scopes them) from every sidecar sharing the store: after `after` (an
    /// id this stream handed out), else from now. The caller's credentials
    /// are checked once, when the stream opens.
    pub async fn audit_follow(
        &self,
        caller: &Caller,
        after: Option<&str>,
    ) -> Result<AuditFollow, VaultError> {
        let after = after
            .map(|id| id.parse::<AuditId>())
            .transpose()
            .map_err(|e| VaultError::invalid("Last-Event-ID", e))?;
        // An id from the future would follow nothing until that time comes.
        let horizon = chrono::Utc::now().timestamp_millis() + 24 * 3600 * 1000;
        if after.is_some_and(|id| i64::try_from(id.ms).map_or(true, |ms| ms > horizon)) {
            return Err(VaultError::invalid(
                "Last-Event-ID",
                "names an event later than this sidecar's clock allows",
            ));
        }
        let access = self.access(caller).await?;
        let scope = self.audit_scope(&access).await?;
        let cursor = match after {
            Some(id) => id,
            None => self
                .audit
                .newest(1)
                .await?
                .first()
                .map_or(AuditId::START, |e| e.id),
        };
        let subscription = self.audit.subscribe()?;
        self.audit_done(
            caller,
            EventKind::AuditRead,
            Action::Audit,
            "audit/stream",
            None,
        )
        .await;
        Ok(AuditFollow {
            auditor: self.audit.clone(),
            subscription,
            catching_up: true,
            cursor,
            scope,
            caller: caller.clone(),
            token: access.token,
        })
    }
}

/// How much of the tenant's audit log a caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuditScope {
    /// Every event: an auditor role.
    Tenant,
    /// Its own events and those about secrets it may read.
    Caller,
}

/// Whether an event's path names a secret (rather than a prefix, a
/// namespace, a token scope, an approval or the audit log itself).
fn about_a_secret(event: &AuditEvent) -> bool {
    !matches!(
        event.action.as_deref(),
        Some("list" | "import" | "token" | "approve" | "audit") | None
    )
}

/// An open follow of the audit stream; resumes after the last event it
/// returned. It reads what the tenant's shared follower broadcasts, and the
/// store directly only to catch up (from its start, or after falling behind).
pub struct AuditFollow {
    auditor: Auditor,
    /// This stream's place among the open ones (freed when dropped).
    subscription: Subscription,
    /// Reading the store from `cursor` until it has caught up with the follower.
    catching_up: bool,
    cursor: AuditId,
    scope: AuditScope,
    /// Who follows, with the claims of the token it opened the stream with:
    /// each event is shown only if the policy lets this caller see it.
    caller: Caller,
    token: Option<TokenClaims>,
}

impl AuditFollow {
    /// The id of the last event returned (or where the follow started).
    pub fn cursor(&self) -> AuditId {
        self.cursor
    }

    /// The next events the caller may see, oldest first, waiting up to
    /// `wait` for one; empty when none came (or none of those it may see).
    /// `vault` is the one that opened the follow (or its successor after an
    /// SVID rotation), whose policy decides.
    pub async fn next(
        &mut self,
        vault: &Vault,
        wait: Duration,
    ) -> Result<Vec<AuditEntry>, VaultError> {
        use tokio::sync::broadcast::error::RecvError;
        let deadline = tokio::time::Instant::now() + wait;
        let entries = loop {
            if self.catching_up {
                let entries = self.auditor.after(self.cursor, MAX_READ).await?;
                self.catching_up = entries.len() >= MAX_READ;
                if !entries.is_empty() {
                    break entries;
                }
                continue;
            }
            let batch = match tokio::time::timeout_at(deadline, self.subscription.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Ok(batch)) => batch,
                // Fell behind the follower: what it dropped is in the store.
                Ok(Err(RecvError::Lagged(_))) => {
                    self.catching_up = true;
                    continue;
                }
                Ok(Err(RecvError::Closed)) => {
                    return Err(VaultError::Unavailable("the audit follower stopped".into()))
                }
            };
            match &*batch {
                Batch::Unavailable(why) => return Err(VaultError::Storage(why.clone())),
                // Events between this stream's cursor and the batch may exist.
                Batch::Entries { after, .. } if *after > self.cursor => self.catching_up = true,
                Batch::Entries { entries, .. } => {
                    let fresh: Vec<AuditEntry> = entries
                        .iter()
                        .filter(|e| e.id > self.cursor)
                        .cloned()
                        .collect();
                    if !fresh.is_empty() {
                        break fresh;
                    }
                }
            }
        };
        if let Some(last) = entries.last() {
            self.cursor = last.id;
        }
        match self.scope {
            AuditScope::Tenant => Ok(entries),
            AuditScope::Caller => {
                let access = Access {
                    caller: &self.caller,
                    token: self.token.clone(),
                };
                vault.audit_visible(&access, entries).await
            }
        }
    }
}
