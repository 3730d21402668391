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
//!
//! Audit streams (SSE) of the tenant share one follower of the store per
//! sidecar, fanned out in process ([`fanout`]), up to `max_streams` at once.

mod fanout;

pub use self::fanout::{Batch, Subscription, TooManyStreams};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::identity::Caller;
pub use crate::model::audit::{AuditEntry, AuditEvent, AuditId, EventKind};
use crate::model::Tier;
use crate::store::{Store, StoreError};

/// Default number of events a tenant's stream keeps (approximately).
pub const DEFAULT_MAX_LEN: usize = 100_000;
/// Default number of events held in memory while the store cannot take them.
pub const DEFAULT_BUFFER: usize = 10_000;
/// The longest pause between retries of buffered events; the first retry
/// comes after [`FIRST_RETRY`], doubling from there, so that writes and strict
/// reads (refused while events wait) recover as soon as the store does.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(50);
const FIRST_RETRY: Duration = Duration::from_millis(5);
/// Most events one read returns.
pub const MAX_READ: usize = fanout::MAX_BATCH;
/// Default number of audit streams (SSE) a sidecar serves a tenant at once.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// Events are made from a [`Caller`] here, above the vocabulary, which
/// knows nothing of callers; the constructor copies no bearer token.
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
            injected: Vec::new(),
        }
    }
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
    /// Reads of secrets of this tier or above are answered only once their
    /// event is stored (a group-committed batch); `None`: no read waits.
    /// Applies under `fail_closed`.
    pub strict_reads: Option<Tier>,
    /// Audit streams (SSE) open at once; one more answers 503.
    pub max_streams: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_MAX_LEN,
            fail_closed: true,
            buffer: DEFAULT_BUFFER,
            strict_reads: Some(Tier::Critical),
            max_streams: DEFAULT_MAX_STREAMS,
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
    /// The one follower every open audit stream shares.
    fanout: Arc<fanout::Fanout>,
}

/// Events logged but not stored yet, oldest first, but for the `in_flight`
/// ones the writer has taken out to append (older than all of these): it
/// drops them once stored, and puts them back at the front if refused.
#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    in_flight: usize,
}

impl Queue {
    fn waiting(&self) -> usize {
        self.items.len() + self.in_flight
    }
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
                store: store.clone(),
                tenant: tenant.to_owned(),
                settings,
                telemetry,
                queue: Mutex::new(Queue::default()),
                wake: tokio::sync::Notify::new(),
                failing: AtomicBool::new(false),
                fanout: fanout::Fanout::new(store.clone(), tenant, settings.max_streams),
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
        self.queue().waiting()
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
            let dropped = queue.waiting().saturating_sub(cap).min(queue.items.len());
            for gone in queue.items.drain(..dropped) {
                if let Some(stored) = gone.stored {
                    let _ = stored.send(Err("the audit buffer overflowed".into()));
                }
            }
            (queue.waiting(), dropped)
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

    /// Logs and counts an event the store has appended already, in the same
    /// atomic step as the change it records (a write's), so it is not queued.
    pub fn committed(&self, event: &AuditEvent) {
        self.mirror(event);
    }

    /// The JSON line on the log, and the count.
    fn mirror(&self, event: &AuditEvent) {
        self.inner.telemetry.audit_event(event.event);
        // Encoding is most of a warm read's audit cost: skip it when the line
        // would be filtered out anyway.
        if !tracing::enabled!(target: "audit", tracing::Level::INFO) {
            return;
        }
        match serde_json::to_string(event) {
            Ok(line) => tracing::info!(target: "audit", "{line}"),
            Err(e) => tracing::error!(target: "audit", error = %e, "unencodable audit event"),
        }
    }

    /// Stores queued events in batches, oldest first, until the task is
    /// dropped; while the store refuses them, tries again after a pause that
    /// doubles from [`FIRST_RETRY`] up to `retry`, jittered so that the
    /// sidecars of a fleet that lost Redis together do not retry in step.
    pub async fn run(self, retry: Duration) {
        let mut backoff = Backoff::new(FIRST_RETRY, retry);
        loop {
            let (mut batch, mut waiters) = {
                let mut queue = self.queue();
                let n = queue.items.len().min(BATCH);
                queue.in_flight = n;
                let mut waiters: Vec<(usize, oneshot::Sender<Result<(), String>>)> = Vec::new();
                let batch: Vec<AuditEvent> = queue
                    .items
                    .drain(..n)
                    .enumerate()
                    .map(|(i, q)| {
                        waiters.extend(q.stored.map(|tx| (i, tx)));
                        q.event
                    })
                    .collect();
                (batch, waiters)
            };
            if batch.is_empty() {
                self.inner.wake.notified().await;
                // Under load, the requests already running push their events
                // within this yield: one append then carries them all.
                tokio::task::yield_now().await;
                continue;
            }
            let appended = self
                .inner
                .store
                .append_audit(&self.inner.tenant, &batch, self.inner.settings.max_len)
                .await;
            match appended {
                Ok(_) => {
                    backoff.reset();
                    let was_failing = self.inner.failing.swap(false, Ordering::AcqRel);
                    let waiting = {
                        let mut queue = self.queue();
                        queue.in_flight = 0;
                        queue.waiting()
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
                    for (i, _) in &waiters {
                        if let Some(event) = batch.get_mut(*i) {
                            *event = refusal(event.clone());
                            self.mirror(event);
                        }
                    }
                    {
                        let mut queue = self.queue();
                        queue.in_flight = 0;
                        for event in batch.drain(..).rev() {
                            queue.items.push_front(Queued {
                                event,
                                stored: None,
                            });
                        }
                    }
                    for (_, tx) in waiters.drain(..) {
                        let _ = tx.send(Err(e.to_string()));
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
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

    /// A place among the tenant's open audit streams: every batch of events
    /// the shared follower reads from now on, unless `max_streams` are open.
    pub fn subscribe(&self) -> Result<Subscription, TooManyStreams> {
        self.inner.fanout.subscribe()
    }

    /// Audit streams open now.
    pub fn streams(&self) -> usize {
        self.inner.fanout.streams()
    }

    /// Up to `limit` events after `after`, oldest first, without waiting.
    pub async fn after(&self, after: AuditId, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner
            .store
            .audit_after(&self.inner.tenant, after, limit)
            .await
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
            let front = if kind == EventKind::EnvoyCheck {
                "envoy."
            } else {
                "vault."
            };
            assert!(kind.as_str().starts_with(front), "{kind}");
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
