//! Where the domain meets the audit log. Events are emitted at a few central
//! points so that every front end audits alike: refusals where they are
//! decided (`authorize`, credential checks), successes once at the end of each
//! operation. Reading the audit log is itself a policy decision (`audit`).

use std::time::Duration;

use super::{Vault, VaultError};
use crate::audit::{
    AuditEntry, AuditError, AuditEvent, AuditId, Auditor, EventKind, Guard, MAX_READ,
};
use crate::identity::Caller;
use crate::model::Tier;
use crate::policy::{Action, Resource};
use crate::store::AuditFollower;

/// Events `GET /v1/audit` returns when the caller names no limit.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

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
        let _ = self.audit.record(vec![event], Guard::BestEffort).await;
    }

    /// Records several completed changes at once (an import).
    pub(super) async fn audit_all(&self, events: Vec<AuditEvent>) {
        let _ = self.audit.record(events, Guard::BestEffort).await;
    }

    /// Records a read before its value goes out. Under `audit.fail_closed` a
    /// critical secret's value goes out only once its event is stored.
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
        let guard = match tier {
            Tier::Critical => Guard::Disclosure,
            _ => Guard::BestEffort,
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

    /// Up to `limit` of the tenant's newest audit events, newest first.
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
        self.authorize(&access, Action::Audit, Resource::missing("audit"))
            .await?;
        let entries = self.audit.newest(limit).await?;
        self.audit_done(caller, EventKind::AuditRead, Action::Audit, "audit", None)
            .await;
        Ok(entries)
    }

    /// Follows the tenant's audit events from every sidecar sharing the
    /// store: after `after` (an id this stream handed out), else from now.
    /// The caller is authorized once, when the stream opens.
    pub async fn audit_follow(
        &self,
        caller: &Caller,
        after: Option<&str>,
    ) -> Result<AuditFollow, VaultError> {
        let after = after
            .map(|id| id.parse::<AuditId>())
            .transpose()
            .map_err(|e| VaultError::invalid("Last-Event-ID", e))?;
        let access = self.access(caller).await?;
        self.authorize(&access, Action::Audit, Resource::missing("audit"))
            .await?;
        let cursor = match after {
            Some(id) => id,
            None => self
                .audit
                .newest(1)
                .await?
                .first()
                .map_or(AuditId::START, |e| e.id),
        };
        let follower = self.audit.follower().await?;
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
            follower: Some(follower),
            cursor,
        })
    }
}

/// An open follow of the audit stream; resumes after the last event it returned.
pub struct AuditFollow {
    auditor: Auditor,
    /// Dropped after a store error and opened again on the next call.
    follower: Option<Box<dyn AuditFollower>>,
    cursor: AuditId,
}

impl AuditFollow {
    /// The id of the last event returned (or where the follow started).
    pub fn cursor(&self) -> AuditId {
        self.cursor
    }

    /// The next events, oldest first, waiting up to `wait` for one; empty
    /// when none came.
    pub async fn next(&mut self, wait: Duration) -> Result<Vec<AuditEntry>, VaultError> {
        let mut follower = match self.follower.take() {
            Some(f) => f,
            None => self.auditor.follower().await?,
        };
        let entries = follower.after(self.cursor, MAX_READ, wait).await?;
        self.follower = Some(follower);
        if let Some(last) = entries.last() {
            self.cursor = last.id;
        }
        Ok(entries)
    }
}
