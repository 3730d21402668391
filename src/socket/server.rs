//! The socket API's server: on a socket bound by [`crate::listen`], tags
//! every connection with the caller's kernel credentials, serves HTTP/1.1, and
//! drains in-flight requests on shutdown before removing the socket.
//!
//! Every connection is bounded ([`ConnectionLimits`]): a request's headers
//! must be complete within `header_timeout` of their first byte (slowloris
//! clients are cut off), an
//! idle keep-alive connection is closed after `idle_timeout`, and at most
//! `max_connections` are open at once, `max_per_uid` of them for any one uid.
//! A client over a cap is answered `503 unavailable` (the contract's JSON
//! error, `Retry-After: 1`) and disconnected, rather than left waiting. When
//! the process runs out of file descriptors, accepting backs off
//! exponentially (the log says so once per interval, not once per attempt)
//! and a reserved descriptor is spent to tell the waiting client 503 too.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::api::Api;
use super::framing::Framed;
use crate::identity::{Peer, PeerCred, RoleMap};
use crate::listen::{BoundSocket, ConnectionTelemetry};

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept-error backoff: from the first to the longest pause.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Accept errors are logged at most once per this interval, with a count.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Connections being told 503 at once; beyond this they are just closed.
const MAX_REFUSING: usize = 64;

/// Limits on the socket's connections (`limits.*` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must be complete this long after their first
    /// byte arrived (the wait before it is the idle timeout's).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once, over all callers.
    pub max_connections: usize,
    /// Connections open at once from one uid.
    pub max_per_uid: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_per_uid: 256,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the sidecar is serving its maximum of {0} connections; retry shortly")]
    Overall(usize),
    #[error("uid {uid} has its maximum of {max} connections open; close some or retry shortly")]
    PerUid { uid: u32, max: usize },
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::Overall(_) => "max_connections",
            Self::PerUid { .. } => "max_per_uid",
        }
    }
}

/// The open connections, overall and per uid.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for one more connection from `uid`, held until it is dropped.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refusal::Overall(self.limits.max_connections));
        }
        let mine = open.per_uid.entry(uid).or_default();
        if *mine >= self.limits.max_per_uid {
            return Err(Refusal::PerUid {
                uid,
                max: self.limits.max_per_uid,
            });
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot {
            admission: self.clone(),
            uid,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; frees its place when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.per_uid.get_mut(&self.uid) {
            *mine -= 1;
            if *mine == 0 {
                open.per_uid.remove(&self.uid);
            }
        }
    }
}

/// When a connection last finished a request, and how many it has in flight.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
                return;
            }
            tokio::time::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(10))).await;
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The contract's `503 unavailable` body for a refused connection.
fn refusal_body(message: &str) -> Vec<u8> {
    serde_json::json!({ "error": { "code": "unavailable", "message": message } })
        .to_string()
        .into_bytes()
}

fn refusal_response(message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(refusal_body(message))));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// Accept errors, logged once per [`ACCEPT_LOG_INTERVAL`] with how many
/// there were, and the pause before the next accept.
struct AcceptErrors {
    backoff: Duration,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl AcceptErrors {
    fn new() -> Self {
        Self {
            backoff: ACCEPT_BACKOFF_MIN,
            unlogged: 0,
            last_log: None,
        }
    }

    /// Records one error; returns how long to pause.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|at| at.elapsed() >= ACCEPT_LOG_INTERVAL)
        {
            tracing::warn!(
                error = %error,
                errors = self.unlogged,
                backoff_ms = self.backoff.as_millis() as u64,
                "accepting connections fails; backing off"
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE) | Some(Errno::NFILE)
    )
}

/// A descriptor kept in reserve, so that with the file limit reached one
/// waiting client can still be accepted and told 503.
fn reserve_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Serves `api` on the socket until `shutdown` resolves, then removes the
/// socket and waits up to ten seconds for open requests to finish.
pub async fn serve(
    socket: BoundSocket,
    api: Arc<Api>,
    roles: Arc<RoleMap>,
    limits: ConnectionLimits,
    telemetry: Arc<dyn ConnectionTelemetry>,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(limits);
    let refusing = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut errors = AcceptErrors::new();
    let mut reserve = reserve_descriptor();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(stream) => {
                    errors.succeeded();
                    stream
                }
                Err(e) => {
                    telemetry.accept_error();
                    if out_of_descriptors(&e) {
                        if let Some(spare) = reserve.take() {
                            drop(spare);
                            refuse_waiting_client(&socket, telemetry.as_ref()).await;
                            reserve = reserve_descriptor();
                        }
                    }
                    let pause = errors.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let cred = match stream.peer_cred() {
            Ok(c) => PeerCred {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read SO_PEERCRED; dropping connection");
                continue;
            }
        };
        let slot = match admission.admit(cred.uid) {
            Ok(slot) => slot,
            Err(refusal) => {
                telemetry.refused(refusal.reason());
                tracing::debug!(
                    uid = cred.uid,
                    reason = refusal.reason(),
                    "connection refused"
                );
                refuse(stream, refusal, limits, refusing.clone());
                continue;
            }
        };
        let peer = Arc::new(Peer::identify(&roles, cred));
        connections.spawn(serve_connection(
            stream,
            peer,
            api.clone(),
            limits,
            slot,
            telemetry.clone(),
            stopped.clone(),
        ));
    }
    // Close the listener and remove the socket first, so new clients fail fast
    // instead of queueing on a socket that will never answer.
    drop(socket);
    // Open audit streams never finish on their own.
    api.close();
    tracing::info!("shutting down: draining open connections");
    stop.send_replace(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        connections.abort_all();
    }
}

/// Serves one admitted connection until it ends, times out idle, or the
/// server stops (then in-flight requests finish first).
async fn serve_connection(
    stream: UnixStream,
    peer: Arc<Peer>,
    api: Arc<Api>,
    limits: ConnectionLimits,
    slot: Slot,
    telemetry: Arc<dyn ConnectionTelemetry>,
    mut stopped: watch::Receiver<bool>,
) {
    telemetry.opened();
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let (api, peer) = (api.clone(), peer.clone());
            let busy = InFlight::new(&activity);
            async move {
                let response = api.handle(&peer, req).await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    // Requests framed by both Content-Length and Transfer-Encoding are
    // refused beneath hyper, which cannot be told to (see `framing`).
    let stream = Framed::new(stream);
    let refusals = stream.refusals();
    // The header timeout is timed by the framing guard, which sees a head
    // split over reads; hyper's own would arm a timer for every request.
    let head = stream.head_clock();
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            // The connection first: the head clock is read after each of its reads.
            biased;
            ended = conn.as_mut() => break ended,
            // Earlier requests are answered first; the 400 goes out last.
            () = refusals.notified(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // Cut off without an answer, as slowloris clients get nothing.
            () = head.overdue(limits.header_timeout) => {
                telemetry.timed_out("header");
                tracing::debug!(uid = slot.uid, "connection closed: request headers too slow");
                break Ok(());
            }
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                telemetry.timed_out("idle");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = stopped.wait_for(|stop| *stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(slot);
    telemetry.closed();
}

/// Answers a connection over a cap with 503 and closes it. Up to
/// [`MAX_REFUSING`] at a time read the request first (a clean HTTP
/// exchange); beyond that the answer is written at once, unread, so a flood
/// costs no task per connection and still gets an answer.
fn refuse(
    stream: UnixStream,
    refusal: Refusal,
    limits: ConnectionLimits,
    refusing: Arc<AtomicUsize>,
) {
    let message = refusal.to_string();
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::Relaxed);
        answer_unread(&stream, &message);
        return;
    }
    tokio::spawn(async move {
        let service = service_fn(move |_req: Request<Incoming>| {
            let response = refusal_response(&message);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// With the descriptor limit reached: accepts the client waiting first (on
/// the descriptor just freed), writes it a 503 without reading its request,
/// and closes it.
async fn refuse_waiting_client(socket: &BoundSocket, telemetry: &dyn ConnectionTelemetry) {
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(10), socket.accept()).await
    else {
        return;
    };
    telemetry.refused("no_file_descriptors");
    answer_unread(
        &stream,
        "the sidecar is out of file descriptors; retry shortly",
    );
}

/// Writes a whole `503` response without reading the request. Best effort:
/// a socket buffer takes this at once, or the client gets nothing.
fn answer_unread(stream: &UnixStream, message: &str) {
    let body = refusal_body(message);
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let _ = stream.try_write(&answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_uid: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_per_uid,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn a_uid_over_its_cap_is_refused_while_others_are_admitted() {
        let admission = Admission::new(limits(10, 2));
        let a1 = admission.admit(1000).unwrap();
        let _a2 = admission.admit(1000).unwrap();
        assert_eq!(
            admission.admit(1000).unwrap_err(),
            Refusal::PerUid { uid: 1000, max: 2 }
        );
        let _b = admission.admit(1001).unwrap();
        assert_eq!(admission.open(), 3);
        drop(a1);
        let _a3 = admission.admit(1000).unwrap();
    }

    #[test]
    fn the_overall_cap_holds_across_uids_and_frees_on_drop() {
        let admission = Admission::new(limits(3, 3));
        let slots: Vec<Slot> = (0..3).map(|uid| admission.admit(uid).unwrap()).collect();
        assert_eq!(admission.admit(7).unwrap_err(), Refusal::Overall(3));
        drop(slots);
        assert_eq!(admission.open(), 0);
        assert!(admission.open.lock().unwrap().per_uid.is_empty());
        admission.admit(7).unwrap();
    }

    #[test]
    fn refusals_say_which_cap_and_name_the_uid() {
        let overall = Refusal::Overall(1024).to_string();
        assert!(overall.contains("1024"), "{overall}");
        let mine = Refusal::PerUid { uid: 1000, max: 8 }.to_string();
        assert!(mine.contains("uid 1000") && mine.contains('8'), "{mine}");
        let body: serde_json::Value = serde_json::from_slice(&refusal_body(&mine)).unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
    }

    #[test]
    fn accept_errors_back_off_exponentially_and_log_once_per_interval() {
        let mut errors = AcceptErrors::new();
        let e = std::io::Error::from_raw_os_error(24);
        assert!(out_of_descriptors(&e));
        let pauses: Vec<Duration> = (0..10).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        // Logged once; the other nine wait for the next interval's line.
        assert_eq!(errors.unlogged, 9);
        errors.succeeded();
        assert_eq!(errors.failed(&e), ACCEPT_BACKOFF_MIN);
    }
}
