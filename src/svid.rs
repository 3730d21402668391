//! The pod's X.509-SVID: streamed from the SPIFFE Workload API and followed
//! through rotations, or made locally for `agentvault dev`. Readers look at the
//! current state or subscribe to changes; nothing here ever makes a reader wait
//! on the Workload API, and a lost Workload API never takes a delivered SVID away.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use spiffe::transport::Endpoint;
use spiffe::{SpiffeId, WorkloadApiClient, X509Context, X509Svid};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::backoff::Backoff;

/// First retry delay after the Workload API failed; it doubles per failure.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How far back a self-signed SVID's validity starts, for clocks slightly behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("workload API endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("SPIFFE ID `{id}`: {reason}")]
    SpiffeId { id: String, reason: String },
    #[error("invalid X.509-SVID: {0}")]
    Invalid(String),
    #[error("cannot make a self-signed SVID: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("SVID lifetime {0:?} is out of range")]
    Ttl(Duration),
    #[error("no SVID after {waited:?}: {reason}")]
    NotReady { waited: Duration, reason: String },
    #[error("the SVID source stopped without an SVID: {0}")]
    Stopped(String),
}

/// One X.509-SVID with what the sidecar needs from it. Debug never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Svid {
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8 DER; wiped from memory when dropped.
    pub private_key_der: Zeroizing<Vec<u8>>,
    /// DER CA certificates of the SVID's own trust domain.
    pub bundle_der: Vec<Vec<u8>>,
    /// Of the leaf certificate.
    pub not_after: DateTime<Utc>,
}

impl Svid {
    /// Takes an SVID the spiffe crate has already checked against the
    /// X.509-SVID rules (one SPIFFE ID URI SAN, leaf not a CA, signing
    /// certificates are CAs, the key is PKCS#8).
    fn from_x509(svid: &X509Svid, bundle_der: Vec<Vec<u8>>) -> Result<Self, SvidError> {
        Ok(Self {
            spiffe_id: svid.spiffe_id().to_string(),
            cert_chain_der: svid
                .cert_chain()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
            private_key_der: Zeroizing::new(svid.private_key().as_bytes().to_vec()),
            bundle_der,
            not_after: leaf_not_after(svid.leaf().as_bytes())?,
        })
    }

    /// The default SVID of a Workload API update and its trust domain's bundle.
    fn from_context(context: &X509Context) -> Result<Self, SvidError> {
        let svid = context
            .default_svid()
            .ok_or_else(|| SvidError::Invalid("the update holds no SVID".into()))?;
        let bundle = context
            .bundle_set()
            .get(svid.spiffe_id().trust_domain())
            .map(|b| {
                b.authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        Self::from_x509(svid, bundle)
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_chain_len", &self.cert_chain_der.len())
            .field("private_key_der", &"<redacted>")
            .field("bundle_len", &self.bundle_der.len())
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn leaf_not_after(leaf_der: &[u8]) -> Result<DateTime<Utc>, SvidError> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| SvidError::Invalid(format!("leaf certificate: {e}")))?;
    let seconds = leaf.validity().not_after.timestamp();
    DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| SvidError::Invalid(format!("leaf not_after {seconds} is out of range")))
}

#[derive(Clone, Debug)]
pub enum SvidState {
    /// Why there is no SVID yet, e.g. "workload API unreachable: …".
    Pending(String),
    Ready(Arc<Svid>),
}

impl SvidState {
    pub fn svid(&self) -> Option<&Arc<Svid>> {
        match self {
            Self::Ready(svid) => Some(svid),
            Self::Pending(_) => None,
        }
    }

    fn is_ready(&self) -> bool {
        self.svid().is_some()
    }
}

/// A live source of the current SVID; clones share it.
#[derive(Clone)]
pub struct SvidSource {
    rx: watch::Receiver<SvidState>,
    /// Keeps a fixed source's channel open, so subscribers wait for a change
    /// that never comes instead of seeing the source as gone.
    _fixed: Option<Arc<watch::Sender<SvidState>>>,
}

impl fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SvidSource")
            .field(&*self.rx.borrow())
            .finish()
    }
}

impl SvidSource {
    /// Follows the Workload API at `endpoint` (`unix:///path` as in
    /// `SPIFFE_ENDPOINT_SOCKET`, `tcp://ip:port`, or a bare socket path):
    /// streams X.509-SVID updates (FetchX509SVID) and keeps the newest default
    /// SVID. While the API is unreachable or after its stream ends, it retries
    /// forever with jittered exponential backoff (100 ms doubling to 5 s); the
    /// state stays `Pending(reason)` until the first SVID arrives, and a
    /// delivered SVID stays `Ready` through later outages (it is valid until
    /// its `not_after`).
    ///
    /// Returns at once; must be called inside a tokio runtime, where it spawns
    /// the task that follows the API. The task ends when every clone of this
    /// source and every receiver from [`Self::subscribe`] is dropped. A
    /// malformed endpoint leaves the source `Pending` with the reason, and
    /// [`Self::ready`] reports it as [`SvidError::Stopped`].
    pub fn workload_api(endpoint: &str) -> Self {
        let (tx, rx) = watch::channel(SvidState::Pending(format!(
            "connecting to the workload API at {endpoint}"
        )));
        match parse_endpoint(endpoint) {
            Ok(target) => {
                tokio::spawn(follow(target, tx));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot follow the workload API");
                tx.send_replace(SvidState::Pending(e.to_string()));
            }
        }
        Self { rx, _fixed: None }
    }

    /// A self-signed SVID for `agentvault dev`: EC P-256 key, URI SAN
    /// `spiffe_id`, valid from a minute ago for `ttl`, its own certificate as
    /// the bundle. The source never changes.
    pub fn self_signed(spiffe_id: &str, ttl: Duration) -> Result<Self, SvidError> {
        let svid = self_signed_svid(spiffe_id, ttl)?;
        let (tx, rx) = watch::channel(SvidState::Ready(Arc::new(svid)));
        Ok(Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        })
    }

    pub fn current(&self) -> SvidState {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every new state; an SVID identical to the current
    /// one (e.g. re-sent after a reconnect) is not a change.
    pub fn subscribe(&self) -> watch::Receiver<SvidState> {
        self.rx.clone()
    }

    /// Waits until an SVID is ready or `timeout` passes.
    pub async fn ready(&self, timeout: Duration) -> Result<Arc<Svid>, SvidError> {
        let mut rx = self.rx.clone();
        let stopped = match tokio::time::timeout(timeout, rx.wait_for(SvidState::is_ready)).await {
            Ok(Ok(state)) => {
                if let Some(svid) = state.svid() {
                    return Ok(svid.clone());
                }
                false
            }
            Ok(Err(_)) => true,
            Err(_) => false,
        };
        let reason = match &*rx.borrow() {
            SvidState::Ready(svid) => return Ok(svid.clone()),
            SvidState::Pending(reason) => reason.clone(),
        };
        Err(if stopped {
            SvidError::Stopped(reason)
        } else {
            SvidError::NotReady {
                waited: timeout,
                reason,
            }
        })
    }
}

/// Checks a Workload API endpoint the way [`SvidSource::workload_api`] reads
/// it, so configuration can reject a bad one up front.
pub fn validate_endpoint(endpoint: &str) -> Result<(), SvidError> {
    parse_endpoint(endpoint).map(|_| ())
}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint, SvidError> {
    let bad = |reason: String| SvidError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    if endpoint.starts_with("unix:") || endpoint.starts_with("tcp:") {
        return Endpoint::parse(endpoint).map_err(|e| bad(e.to_string()));
    }
    if endpoint.is_empty() || endpoint.contains("://") {
        return Err(bad(
            "expected unix:///path, tcp://ip:port or a socket path".into()
        ));
    }
    Ok(Endpoint::Unix(PathBuf::from(endpoint)))
}

async fn follow(endpoint: Endpoint, tx: watch::Sender<SvidState>) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    let mut last_reason = String::new();
    loop {
        let reason = tokio::select! {
            () = tx.closed() => return,
            reason = stream_svids(&endpoint, &tx, &mut backoff) => reason,
        };
        // Warn once per outage and per new reason; the retries in between are noise.
        let news = backoff.is_fresh() || reason != last_reason;
        let delay = backoff.next_delay();
        match tx.borrow().svid() {
            Some(svid) if news => tracing::warn!(
                reason = %reason,
                spiffe_id = %svid.spiffe_id,
                not_after = %svid.not_after,
                retry_in = ?delay,
                "lost the workload API; keeping the current SVID"
            ),
            None if news => tracing::warn!(reason = %reason, retry_in = ?delay, "no SVID yet"),
            _ => {
                tracing::debug!(reason = %reason, retry_in = ?delay, "workload API still unavailable")
            }
        }
        tx.send_if_modified(|state| match state {
            SvidState::Pending(current) if *current != reason => {
                current.clone_from(&reason);
                true
            }
            _ => false,
        });
        last_reason = reason;
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Follows one FetchX509SVID stream and returns why it ended.
async fn stream_svids(
    endpoint: &Endpoint,
    tx: &watch::Sender<SvidState>,
    backoff: &mut Backoff,
) -> String {
    let client = match WorkloadApiClient::connect(endpoint.clone()).await {
        Ok(client) => client,
        Err(e) => return format!("workload API unreachable: {}", with_sources(&e)),
    };
    let mut updates = match client.stream_x509_contexts().await {
        Ok(updates) => updates,
        Err(e) => return format!("workload API refused FetchX509SVID: {}", with_sources(&e)),
    };
    while let Some(update) = updates.next().await {
        let context = match update {
            Ok(context) => context,
            Err(e) => return format!("workload API stream failed: {}", with_sources(&e)),
        };
        let svid = match Svid::from_context(&context) {
            Ok(svid) => svid,
            Err(e) => return format!("workload API sent a bad update: {e}"),
        };
        backoff.reset();
        publish(tx, svid);
    }
    "workload API closed the stream".into()
}

/// An error and its sources, each said once: tonic's own messages (e.g.
/// "transport error") hide the cause (e.g. the socket does not exist).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn publish(tx: &watch::Sender<SvidState>, svid: Svid) {
    tx.send_if_modified(|state| {
        if matches!(state, SvidState::Ready(current) if **current == svid) {
            return false;
        }
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            not_after = %svid.not_after,
            "X.509-SVID updated"
        );
        *state = SvidState::Ready(Arc::new(svid));
        true
    });
}

fn self_signed_svid(spiffe_id: &str, ttl: Duration) -> Result<Svid, SvidError> {
    let id = SpiffeId::new(spiffe_id).map_err(|e| SvidError::SpiffeId {
        id: spiffe_id.to_owned(),
        reason: e.to_string(),
    })?;
    let now = Utc::now().timestamp();
    let not_after = i64::try_from(ttl.as_secs())
        .ok()
        .and_then(|ttl| now.checked_add(ttl))
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or(SvidError::Ttl(ttl))?;
    let not_before = time::OffsetDateTime::from_unix_timestamp(now - CLOCK_SKEW.as_secs() as i64)
        .map_err(|e| SvidError::Invalid(format!("system clock: {e}")))?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "agentvault dev");
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key)?;

    let der = cert.der().to_vec();
    let x509 = X509Svid::parse_from_der(&der, key.serialized_der())
        .map_err(|e| SvidError::Invalid(e.to_string()))?;
    Svid::from_x509(&x509, vec![der])
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    const ID: &str = "spiffe://dev.local/agent/dev/dev-agent";

    #[test]
    fn parses_endpoints() {
        for (input, path) in [
            ("unix:///run/spire/agent.sock", "/run/spire/agent.sock"),
            ("unix:/run/spire/agent.sock", "/run/spire/agent.sock"),
            ("/run/spire/agent.sock", "/run/spire/agent.sock"),
            ("agent.sock", "agent.sock"),
        ] {
            assert_eq!(
                parse_endpoint(input).unwrap(),
                Endpoint::Unix(PathBuf::from(path)),
                "{input}"
            );
        }
        assert!(matches!(
            parse_endpoint("tcp://127.0.0.1:8081").unwrap(),
            Endpoint::Tcp { port: 8081, .. }
        ));
        for bad in [
            "",
            "unix://host/sock",
            "http://x/y",
            "tcp://localhost:1",
            "unix:",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn self_signed_svid_names_the_id_and_lasts_the_ttl() {
        let ttl = Duration::from_secs(3600);
        let svid = self_signed_svid(ID, ttl).unwrap();
        assert_eq!(svid.spiffe_id, ID);
        assert_eq!(svid.cert_chain_der.len(), 1);
        assert_eq!(svid.bundle_der, svid.cert_chain_der);

        let (_, leaf) = x509_parser::parse_x509_certificate(&svid.cert_chain_der[0]).unwrap();
        let sans: Vec<_> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(uri) => uri.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, [ID]);
        assert!(!leaf.is_ca());

        let lifetime = svid.not_after - Utc::now();
        assert!(
            lifetime <= chrono::Duration::seconds(3600)
                && lifetime > chrono::Duration::seconds(3590),
            "{lifetime}"
        );
        let not_before = leaf.validity().not_before.timestamp();
        assert!(not_before <= Utc::now().timestamp() - 59);

        let key = KeyPair::try_from(svid.private_key_der.as_slice()).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            key.public_key_raw(),
            leaf.public_key().subject_public_key.data.as_ref()
        );
    }

    #[test]
    fn self_signed_rejects_bad_ids_and_ttls() {
        for bad in [
            "dev-agent",
            "spiffe://",
            "spiffe://Dev Local/x",
            "https://td/x",
        ] {
            assert!(
                matches!(
                    self_signed_svid(bad, Duration::from_secs(60)),
                    Err(SvidError::SpiffeId { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            self_signed_svid(ID, Duration::MAX),
            Err(SvidError::Ttl(_))
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let svid = self_signed_svid(ID, Duration::from_secs(60)).unwrap();
        let debug = format!("{svid:?} {:?}", SvidState::Ready(Arc::new(svid.clone())));
        assert!(
            debug.contains(ID) && debug.contains("<redacted>"),
            "{debug}"
        );
        let key_prefix = format!("{:?}", &svid.private_key_der[..16]);
        assert!(!debug.contains(key_prefix.trim_end_matches(']')), "{debug}");
    }

    #[tokio::test]
    async fn fixed_source_is_ready_and_stays_open() {
        let source = SvidSource::self_signed(ID, Duration::from_secs(60)).unwrap();
        let svid = source.ready(Duration::ZERO).await.unwrap();
        assert_eq!(svid.spiffe_id, ID);
        let mut rx = source.subscribe();
        let change = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        assert!(
            change.is_err(),
            "a fixed source must neither change nor close"
        );
    }

    #[tokio::test]
    async fn bad_endpoint_is_reported_by_ready() {
        let source = SvidSource::workload_api("http://nowhere");
        match source.ready(Duration::from_secs(1)).await {
            Err(SvidError::Stopped(reason)) => assert!(reason.contains("http://nowhere")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_task_ends_when_every_receiver_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(SvidState::Pending(String::new()));
        let task = tokio::spawn(follow(Endpoint::Unix(dir.path().join("none.sock")), tx));
        let extra = rx.clone();
        drop(rx);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!task.is_finished());
        drop(extra);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task ends")
            .unwrap();
    }

    #[tokio::test]
    async fn unreachable_api_stays_pending_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let source = SvidSource::workload_api(&dir.path().join("none.sock").to_string_lossy());
        match source.ready(Duration::from_millis(300)).await {
            Err(SvidError::NotReady { reason, .. }) => {
                assert!(reason.contains("unreachable"), "{reason}");
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(source.current(), SvidState::Pending(_)));
    }
}
