//! The audit trail: one event per access, change and denial, appended to the
//! tenant's stream in the store (a Redis stream shared by every sidecar of the
//! tenant, or the embedded store) and mirrored as one JSON line on the log
//! (tracing target `audit`).
//!
//! An event holds identities, a path, a version number and reasons, and no
//! field that could carry a secret value or a token: [`AuditEvent`] has none,
//! and its constructors take a [`Caller`] without copying its bearer token.
//!
//! Events wait in a bounded in-memory queue for one writer task that stores
//! them in batches, and retries while the store cannot take them. With
//! `fail_closed`, operations that change state or disclose a critical secret
//! refuse to run (`unavailable`) while the store refuses events, and a
//! critical read is answered only once its event is stored.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::oneshot;

use crate::identity::Caller;
use crate::store::{AuditFollower, Store, StoreError};

/// Default number of events a tenant's stream keeps (approximately).
pub const DEFAULT_MAX_LEN: usize = 100_000;
/// Default number of events held in memory while the store cannot take them.
pub const DEFAULT_BUFFER: usize = 10_000;
/// How often buffered events are retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Most events one read returns.
pub const MAX_READ: usize = 1000;

/// What happened. The names are the contract of the audit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A secret (or its metadata or version list) was read.
    Accessed,
    /// A request was refused: by the policy, for its credentials, or because
    /// the audit sink was down under `fail_closed`.
    Denied,
    Written,
    Updated,
    RolledBack,
    Rotated,
    Deleted,
    Listed,
    Imported,
    GrantCreated,
    GrantRevoked,
    TokenIssued,
    Approval,
    /// The audit log itself was read or followed.
    AuditRead,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        Self::Accessed,
        Self::Denied,
        Self::Written,
        Self::Updated,
        Self::RolledBack,
        Self::Rotated,
        Self::Deleted,
        Self::Listed,
        Self::Imported,
        Self::GrantCreated,
        Self::GrantRevoked,
        Self::TokenIssued,
        Self::Approval,
        Self::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accessed => "vault.accessed",
            Self::Denied => "vault.denied",
            Self::Written => "vault.written",
            Self::Updated => "vault.updated",
            Self::RolledBack => "vault.rolled_back",
            Self::Rotated => "vault.rotated",
            Self::Deleted => "vault.deleted",
            Self::Listed => "vault.listed",
            Self::Imported => "vault.imported",
            Self::GrantCreated => "vault.grant_created",
            Self::GrantRevoked => "vault.grant_revoked",
            Self::TokenIssued => "vault.token_issued",
            Self::Approval => "vault.approval",
            Self::AuditRead => "vault.audit_read",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit event `{s}`"))
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One audit event. Every field is an identifier, a path, a number, a
/// contract code or a policy reason; there is deliberately no field for a
/// value, a token or free text from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub ts: DateTime<Utc>,
    pub event: EventKind,
    /// The caller's effective SPIFFE ID (`…/<agent>[/<role>]`).
    pub spiffe_id: String,
    pub role: Option<String>,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The policy action (`read`, `write`, …); `null` when refused before one was known.
    pub action: Option<String>,
    /// The secret path, prefix, namespace, grant pattern or token scope.
    pub path: Option<String>,
    pub version: Option<u64>,
    /// `ok`, or the contract error code the caller got.
    pub outcome: String,
    pub reasons: Vec<String>,
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// A successful `kind` by `caller`.
    pub fn new(kind: EventKind, caller: &Caller) -> Self {
        Self {
            ts: Utc::now(),
            event: kind,
            spiffe_id: caller.spiffe_id.clone(),
            role: caller.role.clone(),
            uid: Some(caller.cred.uid),
            pid: caller.cred.pid,
            action: None,
            path: None,
            version: None,
            outcome: "ok".to_owned(),
            reasons: Vec::new(),
            request_id: caller.request_id.clone(),
        }
    }

    pub fn action(mut self, action: &str) -> Self {
        self.action = Some(action.to_owned());
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    pub fn version(mut self, version: Option<u64>) -> Self {
        self.version = version;
        self
    }

    /// A refusal with the contract code the caller got and why.
    pub fn refused(mut self, outcome: &str, reasons: Vec<String>) -> Self {
        self.event = EventKind::Denied;
        self.outcome = outcome.to_owned();
        self.reasons = reasons;
        self
    }
}

/// A position in a tenant's audit stream, `<millis>-<seq>` as Redis stream
/// ids are. Ids only grow, so a follower resumes after the last one it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AuditId {
    pub ms: u64,
    pub seq: u64,
}

impl AuditId {
    /// Before every event: following from here replays the whole stream.
    pub const START: AuditId = AuditId { ms: 0, seq: 0 };
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for AuditId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an audit event id (<millis>-<seq>)");
        let (ms, seq) = s.trim().split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for AuditId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuditId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A stored event with its id in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: AuditId,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Hooks for counting what the domain does, so that the domain needs no
/// metrics library. Every label a hook gets comes from a small fixed set.
pub trait Telemetry: Send + Sync {
    /// One policy decision took `elapsed`.
    fn policy_evaluated(&self, elapsed: Duration);
    /// One audit event was emitted.
    fn audit_event(&self, kind: EventKind);
    /// Events now waiting in memory for the store.
    fn audit_buffered(&self, waiting: usize);
}

/// Counts nothing.
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn policy_evaluated(&self, _: Duration) {}
    fn audit_event(&self, _: EventKind) {}
    fn audit_buffered(&self, _: usize) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// Events a tenant's stream keeps, approximately (Redis `MAXLEN ~`).
    pub max_len: usize,
    /// Refuse writes and critical reads while events cannot be stored.
    pub fail_closed: bool,
    /// Events kept in memory while the store is down; the oldest go first.
    pub buffer: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_MAX_LEN,
            fail_closed: true,
            buffer: DEFAULT_BUFFER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The event could not be stored and the operation must fail closed.
    #[error("the audit log is unavailable: {0}")]
    Unavailable(String),
}

/// How much an operation depends on its event being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Answer anyway; a failed event is buffered and retried.
    BestEffort,
    /// The operation discloses a critical secret: under `fail_closed` it is
    /// refused unless its event is stored first.
    Disclosure,
}

/// Appends one tenant's events. Cheap to clone.
///
/// Events are logged at once and stored by one writer task ([`Auditor::run`])
/// that appends whatever has queued up in one batch (group commit), so a
/// request does not wait for its own round trip to the store unless it must:
/// a critical disclosure under `fail_closed` waits until its event is stored.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tenant: String,
    settings: AuditSettings,
    telemetry: Arc<dyn Telemetry>,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    /// Set when the store refused a batch; cleared when one is stored.
    failing: AtomicBool,
}

/// Events logged but not stored yet, oldest first. Only the writer removes
/// events from the front, and only the `in_flight` ones it is appending.
#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    in_flight: usize,
}

struct Queued {
    event: AuditEvent,
    /// Told whether the event was stored, for a disclosure that waits on it.
    stored: Option<oneshot::Sender<Result<(), String>>>,
}

/// Events appended to the store in one round trip at the most.
const BATCH: usize = 256;

impl Auditor {
    pub fn new(
        store: Arc<dyn Store>,
        tenant: &str,
        settings: AuditSettings,
        telemetry: Arc<dyn Telemetry>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                tenant: tenant.to_owned(),
                settings,
                telemetry,
                queue: Mutex::new(Queue::default()),
                wake: tokio::sync::Notify::new(),
                failing: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> AuditSettings {
        self.inner.settings
    }

    pub fn telemetry(&self) -> &dyn Telemetry {
        self.inner.telemetry.as_ref()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Events logged but not stored yet.
    pub fn waiting(&self) -> usize {
        self.queue().items.len()
    }

    fn failing(&self) -> bool {
        self.inner.failing.load(Ordering::Acquire)
    }

    /// Whether an operation that must fail closed may run now: not while the
    /// store refuses events.
    pub fn check_open(&self) -> Result<(), AuditError> {
        if self.inner.settings.fail_closed && self.failing() {
            return Err(AuditError::Unavailable(
                "the audit log cannot store events".into(),
            ));
        }
        Ok(())
    }

    /// Logs, counts and queues events for the store. Fails only for a
    /// [`Guard::Disclosure`] under `fail_closed` whose event could not be
    /// stored; it is then kept as a refusal, since the caller gets nothing.
    pub async fn record(&self, events: Vec<AuditEvent>, guard: Guard) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let strict = guard == Guard::Disclosure && self.inner.settings.fail_closed;
        if strict && self.failing() {
            let refusals = events.into_iter().map(refusal).collect();
            self.push(refusals, None);
            return Err(AuditError::Unavailable(
                "the audit log cannot store events".into(),
            ));
        }
        if !strict {
            self.push(events, None);
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.push(events, Some(tx));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(AuditError::Unavailable(why)),
            Err(_) => Err(AuditError::Unavailable("the audit writer stopped".into())),
        }
    }

    /// Logs events and queues them; `stored` is told about the last one.
    fn push(
        &self,
        events: Vec<AuditEvent>,
        mut stored: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        for event in &events {
            self.mirror(event);
        }
        let cap = self.inner.settings.buffer.max(1);
        let last = events.len().saturating_sub(1);
        let (waiting, dropped) = {
            let mut queue = self.queue();
            queue
                .items
                .extend(events.into_iter().enumerate().map(|(i, event)| Queued {
                    event,
                    stored: if i == last { stored.take() } else { None },
                }));
            // Over the cap, the oldest events not being appended right now go.
            let excess = queue.items.len().saturating_sub(cap);
            let from = queue.in_flight.min(queue.items.len());
            let dropped = excess.min(queue.items.len() - from);
            for gone in queue.items.drain(from..from + dropped) {
                if let Some(stored) = gone.stored {
                    let _ = stored.send(Err("the audit buffer overflowed".into()));
                }
            }
            (queue.items.len(), dropped)
        };
        if dropped > 0 {
            tracing::error!(
                dropped,
                "audit buffer full; dropped the oldest events (they remain in the log)"
            );
        }
        self.inner.telemetry.audit_buffered(waiting);
        self.inner.wake.notify_one();
    }

    /// The JSON line on the log, and the count.
    fn mirror(&self, event: &AuditEvent) {
        self.inner.telemetry.audit_event(event.event);
        match serde_json::to_string(event) {
            Ok(line) => tracing::info!(target: "audit", "{line}"),
            Err(e) => tracing::error!(target: "audit", error = %e, "unencodable audit event"),
        }
    }

    /// Stores queued events in batches, oldest first, until the task is
    /// dropped; while the store refuses them, tries again every `retry`.
    pub async fn run(self, retry: Duration) {
        loop {
            let (batch, mut waiters) = {
                let mut queue = self.queue();
                let n = queue.items.len().min(BATCH);
                queue.in_flight = n;
                let batch: Vec<AuditEvent> = queue
                    .items
                    .iter()
                    .take(n)
                    .map(|q| q.event.clone())
                    .collect();
                let waiters: Vec<(usize, oneshot::Sender<Result<(), String>>)> = queue
                    .items
                    .iter_mut()
                    .take(n)
                    .enumerate()
                    .filter_map(|(i, q)| q.stored.take().map(|tx| (i, tx)))
                    .collect();
                (batch, waiters)
            };
            if batch.is_empty() {
                self.inner.wake.notified().await;
                continue;
            }
            let appended = self
                .inner
                .store
                .append_audit(&self.inner.tenant, &batch, self.inner.settings.max_len)
                .await;
            match appended {
                Ok(_) => {
                    let was_failing = self.inner.failing.swap(false, Ordering::AcqRel);
                    let waiting = {
                        let mut queue = self.queue();
                        queue.items.drain(..batch.len());
                        queue.in_flight = 0;
                        queue.items.len()
                    };
                    if was_failing {
                        tracing::info!(
                            stored = batch.len(),
                            waiting,
                            "the audit log takes events again"
                        );
                    }
                    self.inner.telemetry.audit_buffered(waiting);
                    for (_, tx) in waiters {
                        let _ = tx.send(Ok(()));
                    }
                }
                Err(e) => {
                    if !self.inner.failing.swap(true, Ordering::AcqRel) {
                        tracing::warn!(error = %e, waiting = self.waiting(), "audit events could not be stored; keeping them to retry");
                    }
                    // A disclosure waiting on its event is refused, and its
                    // event kept as the refusal it became.
                    {
                        let mut queue = self.queue();
                        for (i, _) in &waiters {
                            if let Some(q) = queue.items.get_mut(*i) {
                                q.event = refusal(q.event.clone());
                                self.mirror(&q.event);
                            }
                        }
                        queue.in_flight = 0;
                    }
                    for (_, tx) in waiters.drain(..) {
                        let _ = tx.send(Err(e.to_string()));
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// The newest `limit` events, newest first, including every event this
    /// sidecar logged before the call (unless the store refuses them).
    pub async fn newest(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.settle().await;
        self.inner
            .store
            .audit_newest(&self.inner.tenant, limit)
            .await
    }

    /// Waits, a second at the most, until what is queued now has been stored
    /// or the store has refused it.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.waiting() > 0 && !self.failing() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A reader that waits for events after an id.
    pub async fn follower(&self) -> Result<Box<dyn AuditFollower>, StoreError> {
        self.inner.store.audit_follower(&self.inner.tenant).await
    }
}

/// The event of an operation that was refused because it could not be audited.
fn refusal(event: AuditEvent) -> AuditEvent {
    event.refused(
        "unavailable",
        vec!["the audit log is unavailable; refused under audit.fail_closed".into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Peer, PeerCred, RoleMap, WorkloadIdentity};

    fn caller() -> Caller {
        let workload = WorkloadIdentity::new("td", "acme", "bot").unwrap();
        let peer = Peer::identify(
            &RoleMap::default(),
            PeerCred {
                pid: Some(42),
                uid: 1000,
                gid: 1000,
            },
        );
        Caller::new(&workload, &peer, Some("avt_secret-token".into())).with_request_id("req-1")
    }

    #[test]
    fn events_carry_identity_and_never_the_token() {
        let event = AuditEvent::new(EventKind::Accessed, &caller())
            .action("read")
            .path("prod/db")
            .version(Some(3));
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "vault.accessed");
        assert_eq!(json["spiffe_id"], "spiffe://td/agent/acme/bot");
        assert_eq!(json["uid"], 1000);
        assert_eq!(json["pid"], 42);
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["outcome"], "ok");
        assert!(!json.to_string().contains("avt_"), "{json}");
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);

        let denied = event.refused("policy_denied", vec!["no".into()]);
        assert_eq!(denied.event, EventKind::Denied);
    }

    #[test]
    fn event_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert!(kind.as_str().starts_with("vault."));
        }
        assert!("vault.nope".parse::<EventKind>().is_err());
    }

    #[test]
    fn ids_parse_order_and_round_trip() {
        let a: AuditId = "1700000000000-0".parse().unwrap();
        let b: AuditId = "1700000000000-1".parse().unwrap();
        let c: AuditId = "1700000000001-0".parse().unwrap();
        assert!(AuditId::START < a && a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-1");
        for bad in ["", "12", "a-1", "1-b", "-1", "1-", "1-2-3"] {
            assert!(bad.parse::<AuditId>().is_err(), "{bad}");
        }
        let entry = AuditEntry {
            id: c,
            event: AuditEvent::new(EventKind::Listed, &caller()),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["id"], "1700000000001-0");
        assert_eq!(json["event"], "vault.listed");
        assert_eq!(serde_json::from_value::<AuditEntry>(json).unwrap(), entry);
    }
}
