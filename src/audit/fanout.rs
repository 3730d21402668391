//! One follower of a tenant's audit stream per sidecar, shared by all of its
//! open audit streams (`GET /v1/audit/stream`).
//!
//! Why: a follower waits on the store with a blocking read on a connection of
//! its own, so one follower per stream meant one Redis connection per open
//! SSE client, and a few hundred idle clients could hold as many connections.
//! Here the first stream starts one follower task, which reads whatever the
//! tenant's stream appends and broadcasts it in process; every stream keeps
//! its own cursor and its own policy scoping (that stays in the vault), and
//! catches up from the store by plain range reads when it starts behind the
//! follower or falls behind it. The task ends with its last stream, and at
//! most `max_streams` streams are open at once (a clear 503 beyond).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::audit::{AuditEntry, AuditId};
use crate::store::{AuditFollower, Store};

/// The most events one read of the stream returns.
pub const MAX_BATCH: usize = 1000;
/// Batches a slow stream may fall behind by before it catches up from the store.
const BACKLOG: usize = 64;
/// How long one blocking read of the store waits.
const FOLLOW_WAIT: Duration = Duration::from_secs(15);
/// The pause before the follower tries again after the store failed it.
const RETRY: Duration = Duration::from_secs(1);

/// What the follower hands every open stream.
#[derive(Debug)]
pub enum Batch {
    /// The tenant's next events, read from the store after `after`.
    Entries {
        after: AuditId,
        entries: Vec<AuditEntry>,
    },
    /// The store failed the follower; it retries after [`RETRY`].
    Unavailable(String),
}

/// Over the cap on open audit streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this sidecar serves its maximum of {0} audit streams for the tenant; close one or retry shortly"
)]
pub struct TooManyStreams(pub usize);

/// The shared follower of one tenant's audit stream.
pub struct Fanout {
    store: Arc<dyn Store>,
    tenant: String,
    max_streams: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The running follower's channel; `None` while no stream is open.
    sender: Option<broadcast::Sender<Arc<Batch>>>,
    streams: usize,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, tenant: &str, max_streams: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            tenant: tenant.to_owned(),
            max_streams,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place among the open streams, receiving every batch the follower
    /// reads from now on; starts the follower if none runs.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription, TooManyStreams> {
        let mut state = self.state();
        if state.streams >= self.max_streams {
            return Err(TooManyStreams(self.max_streams));
        }
        let receiver = match &state.sender {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(BACKLOG);
                state.sender = Some(sender.clone());
                tokio::spawn(self.clone().follow(sender));
                receiver
            }
        };
        state.streams += 1;
        Ok(Subscription {
            receiver,
            fanout: self.clone(),
        })
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.state().streams
    }

    /// Reads the tenant's stream from its newest event on and broadcasts
    /// what comes, until no stream listens any more.
    async fn follow(self: Arc<Self>, sender: broadcast::Sender<Arc<Batch>>) {
        let mut follower: Option<Box<dyn AuditFollower>> = None;
        let mut cursor: Option<AuditId> = None;
        loop {
            {
                // Under the lock, so a stream subscribing now either finds
                // this follower still running or starts the next one.
                let mut state = self.state();
                if sender.receiver_count() == 0 {
                    state.sender = None;
                    return;
                }
            }
            let read = async {
                let after = match cursor {
                    Some(after) => after,
                    None => self
                        .store
                        .audit_newest(&self.tenant, 1)
                        .await?
                        .first()
                        .map_or(AuditId::START, |e| e.id),
                };
                cursor = Some(after);
                let mut reader = match follower.take() {
                    Some(reader) => reader,
                    None => self.store.audit_follower(&self.tenant).await?,
                };
                let entries = reader.after(after, MAX_BATCH, FOLLOW_WAIT).await?;
                follower = Some(reader);
                Ok::<_, crate::store::StoreError>((after, entries))
            };
            let read = tokio::select! {
                read = read => Some(read),
                // The last stream closed: stop waiting on the store.
                () = sender.closed() => None,
            };
            match read {
                // A read cut short may leave its reply on the connection: start afresh.
                None => follower = None,
                Some(Ok((_, entries))) if entries.is_empty() => {}
                Some(Ok((after, entries))) => {
                    cursor = entries.last().map(|e| e.id);
                    let _ = sender.send(Arc::new(Batch::Entries { after, entries }));
                }
                Some(Err(e)) => {
                    follower = None;
                    tracing::warn!(error = %e, "audit follower: storage unavailable; retrying");
                    let _ = sender.send(Arc::new(Batch::Unavailable(e.to_string())));
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = sender.closed() => {}
                    }
                }
            }
        }
    }
}

/// One open stream's place: the batches the follower broadcasts. Frees
/// its place when dropped.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Batch>>,
    fanout: Arc<Fanout>,
}

impl Subscription {
    /// The next batch; `Lagged` when this stream fell too far behind (it
    /// must catch up from the store), `Closed` never while it is open.
    pub async fn recv(&mut self) -> Result<Arc<Batch>, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.fanout.state();
        state.streams = state.streams.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn streams_share_one_follower_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap());
        let fanout = Fanout::new(store, "t", 2);
        let one = fanout.subscribe().unwrap();
        let two = fanout.subscribe().unwrap();
        assert_eq!(fanout.subscribe().err(), Some(TooManyStreams(2)));
        assert_eq!(fanout.streams(), 2);
        {
            let state = fanout.state();
            let sender = state.sender.as_ref().expect("one follower");
            assert_eq!(sender.receiver_count(), 2);
        }
        drop(one);
        let _three = fanout.subscribe().unwrap();
        drop(two);
        assert_eq!(fanout.streams(), 1);
    }
}
