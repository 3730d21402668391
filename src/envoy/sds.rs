//! `envoy.service.secret.v3.SecretDiscoveryService`: Envoy's TLS contexts
//! and filters take the pod's SVID, its trust bundle and agentvault secrets
//! from here, and get every change pushed on the open stream.
//!
//! Resources are named as SPIRE's agent names them, so Envoy configs written
//! for SPIRE's SDS work unchanged:
//! - `default`: the X.509-SVID as `tls_certificate` (PEM chain and key);
//! - `ROOTCA`: the SVID's trust bundle as `validation_context`;
//! - `secret:<path>`: the active version of an agentvault secret as
//!   `generic_secret`, read as the Envoy caller through [`Vault::get`], so
//!   policy, tiers, expiry and audit are those of any read.
//!
//! Guarantees:
//! - xDS semantics: every response has its own `version_info` (`system_version_info`
//!   for delta) and nonce; an ACK or NACK is matched by nonce; a NACK is
//!   logged with Envoy's `error_detail` and counted, and nothing is resent
//!   until the resource changes again, so Envoy keeps the last version it
//!   accepted. Subscriptions may change on the same stream; streams are
//!   independent of one another.
//! - A resource the caller may not read, that does not exist or has expired
//!   is left out of responses (removed, for delta, when Envoy had it), logged
//!   and audited as a denial once per stream and change of reason. A read
//!   that fails for a transient reason (storage down) keeps what Envoy has.
//! - Push: a new SVID, and a new active version, expiry, deletion or change
//!   of access of a watched secret (written through any sidecar sharing the
//!   store) is pushed to every stream that watches it. Secret changes come
//!   from the store's change announcements ([`Store::changes`]), not from
//!   polling; expiries from a timer at the served version's `expires_at`.
//! - Encoded resources are held in zeroizing buffers and wiped when replaced
//!   or when the stream ends; the plaintext copies made while encoding are
//!   wiped at once. A secret's value goes only into the `generic_secret` it
//!   is served as: never into a log line, an error, an audit event or a metric.
//! - Not announced, so not pushed: a change of the Rego policy files itself;
//!   it applies to the next change of the secret or the next stream.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, GenericSecret, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::Sha256;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zeroize::{Zeroize, Zeroizing};

use crate::audit::{AuditEvent, EventKind};
use crate::identity::{Caller, Peer};
use crate::metrics::Metrics;
use crate::store::{follow_changes, Change, Store};
use crate::svid::{Svid, SvidSource, SvidState};
use crate::vault::{current_vault, ErrorCode, Vault, VaultError, VaultState, VaultWatch};

/// The only resource type this service serves.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The pod's X.509-SVID, as SPIRE's SDS names it.
pub const SVID_RESOURCE: &str = "default";
/// The SVID's trust bundle, as SPIRE's SDS names it.
pub const BUNDLE_RESOURCE: &str = "ROOTCA";
/// `secret:<path>` names an agentvault secret.
pub const SECRET_PREFIX: &str = "secret:";

/// Announcements buffered per stream; a stream that falls further behind
/// re-reads everything it watches.
const EVENT_BUFFER: usize = 1024;
/// Responses queued per stream before its task waits for Envoy to read.
const RESPONSE_BUFFER: usize = 16;
/// After an announcement that changed nothing, the secret is read again
/// after these delays. The cached store applies each announcement before
/// handing it on, so this is a safety net for a read that still raced with
/// the write (e.g. a replica behind), not the usual path.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_millis(500),
];
/// Margin past `expires_at` before an expired secret is read again.
const EXPIRY_MARGIN: Duration = Duration::from_millis(5);
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(3600);

/// Requests this service refuses outright (the stream ends with the status).
#[derive(Debug, thiserror::Error)]
enum SdsError {
    #[error("type_url `{0}` is not served here: this SDS serves only {SECRET_TYPE_URL}")]
    TypeUrl(String),
    #[error("the caller's credentials are unknown")]
    NoPeer,
}

impl From<SdsError> for Status {
    /// The one map from this service's refusals to gRPC statuses.
    fn from(e: SdsError) -> Self {
        match e {
            SdsError::TypeUrl(_) => Status::invalid_argument(e.to_string()),
            SdsError::NoPeer => Status::permission_denied(e.to_string()),
        }
    }
}

/// Why a requested resource is not in a response.
#[derive(Debug, thiserror::Error)]
enum Absence {
    #[error("`{0}` is not a resource this service serves (default, ROOTCA or secret:<path>)")]
    UnknownName(String),
    #[error("no X.509-SVID yet: {0}")]
    NoSvid(String),
    #[error("the SVID came without a trust bundle")]
    NoBundle,
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl Absence {
    /// The contract code it is logged, counted and audited with.
    fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownName(_) | Self::NoBundle => ErrorCode::NotFound,
            Self::NoSvid(_) => ErrorCode::Unavailable,
            Self::Vault(e) => match e.code() {
                ErrorCode::RateLimited => ErrorCode::Unavailable,
                code => code,
            },
        }
    }

    /// A refusal the vault has audited already (a secret hidden from the caller).
    fn is_audited(&self) -> bool {
        matches!(self, Self::Vault(VaultError::Hidden(_)))
    }

    /// A failure that says nothing about the resource itself: what Envoy
    /// already has stays.
    fn is_transient(&self) -> bool {
        self.code() == ErrorCode::Unavailable
    }
}

/// The kind of Secret a resource is served as (the `type` label of metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TlsCertificate,
    ValidationContext,
    GenericSecret,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::TlsCertificate => "tls_certificate",
            Self::ValidationContext => "validation_context",
            Self::GenericSecret => "generic_secret",
        }
    }
}

/// One resource as served: its encoded `Secret` (wiped when the last holder
/// drops it) and a version that changes exactly when its content does.
#[derive(Clone)]
struct Served {
    version: String,
    kind: Kind,
    encoded: Arc<Zeroizing<Vec<u8>>>,
    expires_at: Option<DateTime<Utc>>,
}

impl Served {
    fn any(&self) -> Any {
        Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: self.encoded.to_vec(),
        }
    }
}

/// What the change follower tells the streams.
#[derive(Debug, Clone)]
enum Event {
    /// The secret at this path changed.
    Secret(String),
    /// Anything may have changed (grants, a resync, a new subscription).
    All,
}

/// Which xDS variant a stream speaks (the `api` label of metrics).
#[derive(Debug, Clone, Copy)]
enum Api {
    Sotw,
    Delta,
    Fetch,
}

impl Api {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sotw => "sotw",
            Self::Delta => "delta",
            Self::Fetch => "fetch",
        }
    }
}

/// The SDS service: resolves resource names for the Envoy caller and fans
/// the store's change announcements out to the open streams.
pub struct EnvoySds {
    vault: VaultWatch,
    svids: SvidSource,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    /// Keys the resource versions, so a version says nothing about a value.
    version_key: Zeroizing<[u8; 32]>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for EnvoySds {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl EnvoySds {
    /// Starts following the store's changes for the workload's tenant once
    /// the vault is ready. Needs a Tokio runtime.
    pub fn new(
        vault: VaultWatch,
        svids: SvidSource,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let follower = tokio::spawn(follow_store_changes(vault.clone(), store, events.clone()));
        Self {
            vault,
            svids,
            metrics,
            events,
            version_key: Zeroizing::new(rand::random()),
            follower,
        }
    }

    async fn resolve(&self, envoy: &Peer, name: &str) -> Result<Served, Absence> {
        match name {
            SVID_RESOURCE => {
                let svid = self.svid()?;
                Ok(self.seal(name, Kind::TlsCertificate, tls_certificate(&svid), None))
            }
            BUNDLE_RESOURCE => {
                let svid = self.svid()?;
                if svid.bundle_der.is_empty() {
                    return Err(Absence::NoBundle);
                }
                Ok(self.seal(
                    name,
                    Kind::ValidationContext,
                    validation_context(&svid),
                    None,
                ))
            }
            _ => match name.strip_prefix(SECRET_PREFIX) {
                Some(path) => self.read_secret(envoy, name, path).await,
                None => Err(Absence::UnknownName(name.to_owned())),
            },
        }
    }

    fn svid(&self) -> Result<Arc<Svid>, Absence> {
        match self.svids.current() {
            SvidState::Ready(svid) => Ok(svid),
            SvidState::Pending(why) => Err(Absence::NoSvid(why)),
        }
    }

    async fn read_secret(&self, envoy: &Peer, name: &str, path: &str) -> Result<Served, Absence> {
        let vault = current_vault(&self.vault)?;
        let caller = Caller::new(vault.workload(), envoy, None);
        let secret = vault.get(&caller, path, None).await?;
        let generic = secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(Specifier::InlineString(secret.value.expose().to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        });
        Ok(self.seal(
            name,
            Kind::GenericSecret,
            generic,
            secret.metadata.expires_at,
        ))
    }

    /// Encodes the Secret, wipes the plaintext copies the message held, and
    /// versions the encoding.
    fn seal(
        &self,
        name: &str,
        kind: Kind,
        content: secret::Type,
        expires_at: Option<DateTime<Utc>>,
    ) -> Served {
        let mut message = Secret {
            name: name.to_owned(),
            r#type: Some(content),
        };
        let encoded = Zeroizing::new(message.encode_to_vec());
        scrub(&mut message);
        Served {
            version: self.version_of(&encoded),
            kind,
            encoded: Arc::new(encoded),
            expires_at,
        }
    }

    /// A version for `bytes`: keyed, so it tells nothing about a value.
    fn version_of(&self, bytes: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.version_key.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(bytes);
        hex(&mac.finalize().into_bytes()[..8])
    }

    /// Logs, counts and audits a resource left out of responses. A policy
    /// denial, shown or hidden as a missing secret, was audited by the vault
    /// already; a transient failure is logged only.
    async fn report_absence(&self, envoy: &Peer, name: &str, absence: &Absence) {
        let code = absence.code();
        self.metrics.sds_left_out(code.as_str());
        if absence.is_transient() {
            tracing::warn!(resource = %name, error = %absence, "SDS resource unavailable for now");
            return;
        }
        tracing::info!(resource = %name, code = code.as_str(), reason = %absence, "SDS resource left out");
        if code == ErrorCode::PolicyDenied || absence.is_audited() {
            return;
        }
        let Ok(vault) = current_vault(&self.vault) else {
            return;
        };
        audit_absence(&vault, envoy, name, code, absence).await;
    }

    fn stream_opened(&self, api: Api) -> OpenStream {
        self.metrics.sds_streams(api.as_str(), 1);
        OpenStream {
            metrics: self.metrics.clone(),
            api,
        }
    }

    fn pushed<'a>(&self, api: Api, served: impl IntoIterator<Item = &'a Served>) {
        self.metrics
            .sds_push(api.as_str(), served.into_iter().map(|s| s.kind.as_str()));
    }

    /// Counts and logs Envoy's rejection of a response.
    fn nacked(
        &self,
        api: Api,
        nonce: &str,
        version: &str,
        detail: &envoy_types::pb::google::rpc::Status,
    ) {
        self.metrics.sds_nack(api.as_str());
        tracing::warn!(
            api = api.as_str(),
            nonce,
            last_accepted_version = version,
            code = detail.code,
            error_detail = %detail.message,
            "Envoy rejected an SDS response (NACK); it keeps the last version it accepted"
        );
    }
}

async fn audit_absence(vault: &Vault, envoy: &Peer, name: &str, code: ErrorCode, why: &Absence) {
    let caller = Caller::new(vault.workload(), envoy, None);
    let path = name.strip_prefix(SECRET_PREFIX).unwrap_or(name);
    let event = AuditEvent::new(EventKind::Denied, &caller)
        .action("read")
        .path(path)
        .refused(code.as_str(), vec![format!("SDS resource `{name}`: {why}")]);
    vault.audit_event(event).await;
}

/// Keeps `agentvault_sds_streams_open` right however a stream ends.
struct OpenStream {
    metrics: Arc<Metrics>,
    api: Api,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.sds_streams(self.api.as_str(), -1);
    }
}

fn tls_certificate(svid: &Svid) -> secret::Type {
    let chain: Vec<pem::Pem> = svid
        .cert_chain_der
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.clone()))
        .collect();
    let key = pem::Pem::new("PRIVATE KEY", svid.private_key_der.to_vec());
    let key_pem = pem::encode_config(&key, pem_config());
    key.into_contents().zeroize();
    secret::Type::TlsCertificate(TlsCertificate {
        certificate_chain: Some(inline_bytes(
            pem::encode_many_config(&chain, pem_config()).into_bytes(),
        )),
        private_key: Some(inline_bytes(key_pem.into_bytes())),
        ..Default::default()
    })
}

fn validation_context(svid: &Svid) -> secret::Type {
    let bundle: Vec<pem::Pem> = svid
        .bundle_der
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.clone()))
        .collect();
    secret::Type::ValidationContext(CertificateValidationContext {
        trusted_ca: Some(inline_bytes(
            pem::encode_many_config(&bundle, pem_config()).into_bytes(),
        )),
        ..Default::default()
    })
}

fn pem_config() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

fn inline_bytes(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

/// Wipes the key and secret material a Secret message holds.
fn scrub(message: &mut Secret) {
    fn wipe(source: &mut Option<DataSource>) {
        match source.as_mut().and_then(|s| s.specifier.as_mut()) {
            Some(Specifier::InlineBytes(bytes)) => bytes.zeroize(),
            Some(Specifier::InlineString(text)) => text.zeroize(),
            _ => {}
        }
    }
    match &mut message.r#type {
        Some(secret::Type::TlsCertificate(tls)) => wipe(&mut tls.private_key),
        Some(secret::Type::GenericSecret(generic)) => {
            wipe(&mut generic.secret);
            generic.secrets.values_mut().for_each(|s| {
                if let Some(Specifier::InlineBytes(b)) = s.specifier.as_mut() {
                    b.zeroize();
                } else if let Some(Specifier::InlineString(t)) = s.specifier.as_mut() {
                    t.zeroize();
                }
            });
        }
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Follows the tenant's change announcements for as long as the service
/// lives, subscribing again (with backoff) whenever the subscription is lost,
/// and tells every stream to re-read all it watches after each (re)subscription.
async fn follow_store_changes(
    mut vault: VaultWatch,
    store: Arc<dyn Store>,
    events: broadcast::Sender<Event>,
) {
    let tenant = {
        let Ok(state) = vault.wait_for(|s| matches!(s, VaultState::Ready(_))).await else {
            return;
        };
        match &*state {
            VaultState::Ready(vault) => vault.workload().tenant.clone(),
            VaultState::Starting(_) => return,
        }
    };
    follow_changes(&*store, &tenant, "SDS", |mut changes| {
        let events = events.clone();
        async move {
            let _ = events.send(Event::All);
            while let Some(change) = changes.next().await {
                let event = match change {
                    Change::Secret(path) => Event::Secret(path),
                    Change::Grants | Change::Resync => Event::All,
                    Change::Tokens => continue,
                };
                let _ = events.send(event);
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}

/// What woke a stream up.
enum Wake {
    Svid,
    Names(Vec<String>),
    AllSecrets,
    Expiry,
    Recheck,
}

/// One stream's (or one fetch's) subscribed names and what they resolve to now.
struct Subscription {
    sds: Arc<EnvoySds>,
    envoy: Peer,
    names: BTreeSet<String>,
    served: BTreeMap<String, Served>,
    /// The reason each unserved name was last reported with, so a denial is
    /// logged and audited once per change of reason, not on every re-read.
    absent: BTreeMap<String, ErrorCode>,
    svids: watch::Receiver<SvidState>,
    svids_open: bool,
    events: broadcast::Receiver<Event>,
    events_open: bool,
    /// Names to read again, when, and which of [`RECHECKS`] that is.
    recheck: BTreeSet<String>,
    recheck_at: Option<(Instant, usize)>,
}

impl Subscription {
    fn new(sds: Arc<EnvoySds>, envoy: Peer) -> Self {
        let mut svids = sds.svids.subscribe();
        svids.borrow_and_update();
        let events = sds.events.subscribe();
        Self {
            sds,
            envoy,
            names: BTreeSet::new(),
            served: BTreeMap::new(),
            absent: BTreeMap::new(),
            svids,
            svids_open: true,
            events,
            events_open: true,
            recheck: BTreeSet::new(),
            recheck_at: None,
        }
    }

    /// Name → version of what is served now.
    fn versions(&self) -> BTreeMap<String, String> {
        self.served
            .iter()
            .map(|(name, s)| (name.clone(), s.version.clone()))
            .collect()
    }

    /// Subscribes to exactly `names`; true if what is served changed.
    async fn set_names(&mut self, names: BTreeSet<String>) -> bool {
        let gone: Vec<String> = self.names.difference(&names).cloned().collect();
        let added: Vec<String> = names.difference(&self.names).cloned().collect();
        let mut changed = self.remove(gone);
        changed |= self.add(added).await;
        changed
    }

    async fn add(&mut self, names: impl IntoIterator<Item = String>) -> bool {
        let mut changed = false;
        for name in names {
            if self.names.insert(name.clone()) {
                changed |= self.refresh(&name).await;
            }
        }
        changed
    }

    fn remove(&mut self, names: impl IntoIterator<Item = String>) -> bool {
        let mut changed = false;
        for name in names {
            self.names.remove(&name);
            self.absent.remove(&name);
            self.recheck.remove(&name);
            changed |= self.served.remove(&name).is_some();
        }
        changed
    }

    /// Resolves one subscribed name again; true if what is served changed.
    async fn refresh(&mut self, name: &str) -> bool {
        match self.sds.resolve(&self.envoy, name).await {
            Ok(served) => {
                self.absent.remove(name);
                let same = self
                    .served
                    .get(name)
                    .is_some_and(|old| old.version == served.version);
                self.served.insert(name.to_owned(), served);
                !same
            }
            Err(absence) => {
                let code = absence.code();
                if self.absent.get(name) != Some(&code) {
                    self.sds.report_absence(&self.envoy, name, &absence).await;
                    self.absent.insert(name.to_owned(), code);
                }
                if absence.is_transient() {
                    return false;
                }
                self.served.remove(name).is_some()
            }
        }
    }

    /// Refreshes `names`; those that did not change are read again after
    /// the next delay of [`RECHECKS`] from `round`.
    async fn refresh_announced(&mut self, names: Vec<String>, round: usize) -> bool {
        let mut changed = false;
        for name in names {
            if !self.names.contains(&name) {
                continue;
            }
            if self.refresh(&name).await {
                changed = true;
            } else if round < RECHECKS.len() {
                self.recheck.insert(name);
            }
        }
        if !self.recheck.is_empty() && round < RECHECKS.len() {
            let at = Instant::now() + RECHECKS[round];
            let keep = self.recheck_at.is_some_and(|(when, _)| when <= at);
            if !keep {
                self.recheck_at = Some((at, round + 1));
            }
        }
        changed
    }

    fn secret_names(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| n.starts_with(SECRET_PREFIX))
            .cloned()
            .collect()
    }

    /// When the next served secret expires, plus a margin.
    fn next_expiry(&self) -> Option<Instant> {
        let at = self.served.values().filter_map(|s| s.expires_at).min()?;
        // Capped, so a far-off expiry never overflows the clock; waking
        // early only finds nothing due.
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(EXPIRY_WAIT_MAX);
        Some(Instant::now() + wait + EXPIRY_MARGIN)
    }

    /// Waits for something that may change what is served. Cancel-safe.
    async fn next_wake(&mut self) -> Wake {
        loop {
            let expiry = self.next_expiry();
            let recheck = self.recheck_at.map(|(at, _)| at);
            let far = Instant::now() + EXPIRY_WAIT_MAX;
            tokio::select! {
                changed = self.svids.changed(), if self.svids_open => {
                    if changed.is_err() {
                        self.svids_open = false;
                        continue;
                    }
                    if self.names.contains(SVID_RESOURCE) || self.names.contains(BUNDLE_RESOURCE) {
                        return Wake::Svid;
                    }
                }
                event = self.events.recv(), if self.events_open => match event {
                    Ok(Event::Secret(path)) => {
                        let name = format!("{SECRET_PREFIX}{path}");
                        if self.names.contains(&name) {
                            return Wake::Names(vec![name]);
                        }
                    }
                    Ok(Event::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Wake::AllSecrets;
                    }
                    Err(broadcast::error::RecvError::Closed) => self.events_open = false,
                },
                () = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    return Wake::Expiry;
                }
                () = tokio::time::sleep_until(recheck.unwrap_or(far)), if recheck.is_some() => {
                    return Wake::Recheck;
                }
                // Nothing left that could change what is served.
                else => return std::future::pending().await,
            }
        }
    }

    /// Acts on a wake-up; true if what is served changed.
    async fn on_wake(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Svid => {
                let mut changed = false;
                for name in [SVID_RESOURCE, BUNDLE_RESOURCE] {
                    if self.names.contains(name) {
                        changed |= self.refresh(name).await;
                    }
                }
                changed
            }
            Wake::Names(names) => self.refresh_announced(names, 0).await,
            Wake::AllSecrets => {
                let names = self.secret_names();
                self.refresh_announced(names, 0).await
            }
            Wake::Expiry => {
                let now = Utc::now();
                let due: Vec<String> = self
                    .served
                    .iter()
                    .filter(|(_, s)| s.expires_at.is_some_and(|at| at <= now))
                    .map(|(name, _)| name.clone())
                    .collect();
                let mut changed = false;
                for name in due {
                    changed |= self.refresh(&name).await;
                }
                changed
            }
            Wake::Recheck => {
                let round = self.recheck_at.take().map_or(RECHECKS.len(), |(_, r)| r);
                let names = std::mem::take(&mut self.recheck).into_iter().collect();
                self.refresh_announced(names, round).await
            }
        }
    }
}

/// One turn of a stream's loop.
enum Step<R> {
    Request(R),
    Wake(Wake),
    End,
}

async fn next_step<R>(
    inbound: &mut Streaming<R>,
    sub: &mut Subscription,
    closed: &mpsc::Sender<impl Send>,
) -> Step<R> {
    tokio::select! {
        request = inbound.next() => match request {
            Some(Ok(request)) => Step::Request(request),
            Some(Err(status)) => {
                tracing::debug!(error = %status, "SDS stream ended by Envoy");
                Step::End
            }
            None => Step::End,
        },
        wake = sub.next_wake() => Step::Wake(wake),
        () = closed.closed() => Step::End,
    }
}

fn check_type_url(type_url: &str) -> Result<(), SdsError> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(SdsError::TypeUrl(type_url.to_owned()))
    }
}

/// StreamSecrets: every response holds every subscribed resource that can
/// be served, and goes out when that set or a version in it changed.
async fn run_sotw(
    sds: Arc<EnvoySds>,
    envoy: Peer,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let _open = sds.stream_opened(Api::Sotw);
    let mut sub = Subscription::new(sds.clone(), envoy);
    let mut sent: Option<BTreeMap<String, String>> = None;
    let mut last_nonce = String::new();
    let mut version: u64 = 0;
    loop {
        let dirty = match next_step(&mut inbound, &mut sub, &tx).await {
            Step::End => return,
            Step::Wake(wake) => sub.on_wake(wake).await,
            Step::Request(req) => {
                if let Err(e) = check_type_url(&req.type_url) {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                if !req.response_nonce.is_empty() && req.response_nonce != last_nonce {
                    tracing::debug!(nonce = %req.response_nonce, "SDS request with a stale nonce ignored");
                    continue;
                }
                if let Some(detail) = &req.error_detail {
                    sds.nacked(Api::Sotw, &req.response_nonce, &req.version_info, detail);
                } else if !req.response_nonce.is_empty() {
                    tracing::debug!(version = %req.version_info, nonce = %req.response_nonce, "SDS response accepted");
                }
                let initial = req.response_nonce.is_empty();
                let names = req.resource_names.into_iter().collect();
                sub.set_names(names).await || initial
            }
        };
        if !dirty {
            continue;
        }
        let versions = sub.versions();
        let unchanged = match &sent {
            Some(previous) => *previous == versions,
            // Envoy takes a response without the secret it asked for as an
            // error; until something can be served, it waits.
            None => versions.is_empty(),
        };
        if unchanged {
            continue;
        }
        version += 1;
        last_nonce = nonce();
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            resources: sub.served.values().map(Served::any).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: last_nonce.clone(),
            ..Default::default()
        };
        sds.pushed(Api::Sotw, sub.served.values());
        tracing::debug!(version, nonce = %last_nonce, resources = ?versions.keys().collect::<Vec<_>>(), "SDS push");
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
        sent = Some(versions);
    }
}

/// DeltaSecrets: a response holds the resources whose version Envoy does
/// not have, and names those it had that can no longer be served.
async fn run_delta(
    sds: Arc<EnvoySds>,
    envoy: Peer,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let _open = sds.stream_opened(Api::Delta);
    let mut sub = Subscription::new(sds.clone(), envoy);
    // What Envoy holds, by name: what it said it had, then what was sent.
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let mut first = true;
    let mut version: u64 = 0;
    loop {
        let dirty = match next_step(&mut inbound, &mut sub, &tx).await {
            Step::End => return,
            Step::Wake(wake) => sub.on_wake(wake).await,
            Step::Request(req) => {
                if let Err(e) = check_type_url(&req.type_url) {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                if first {
                    known = req.initial_resource_versions.clone().into_iter().collect();
                    first = false;
                }
                if let Some(detail) = &req.error_detail {
                    sds.nacked(Api::Delta, &req.response_nonce, "", detail);
                } else if !req.response_nonce.is_empty() {
                    tracing::debug!(nonce = %req.response_nonce, "SDS delta response accepted");
                }
                for name in &req.resource_names_unsubscribe {
                    known.remove(name);
                }
                sub.remove(req.resource_names_unsubscribe);
                let subscribed = !req.resource_names_subscribe.is_empty();
                sub.add(req.resource_names_subscribe).await;
                subscribed
            }
        };
        if !dirty {
            continue;
        }
        let changed: Vec<(&String, &Served)> = sub
            .served
            .iter()
            .filter(|(name, s)| known.get(*name) != Some(&s.version))
            .collect();
        let removed: Vec<String> = known
            .keys()
            .filter(|name| sub.names.contains(*name) && !sub.served.contains_key(*name))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            continue;
        }
        version += 1;
        let nonce = nonce();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            resources: changed
                .iter()
                .map(|(name, s)| Resource {
                    name: (*name).clone(),
                    version: s.version.clone(),
                    resource: Some(s.any()),
                    ..Default::default()
                })
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        sds.pushed(Api::Delta, changed.iter().map(|(_, s)| *s));
        tracing::debug!(version, nonce = %nonce, updated = ?changed.iter().map(|(n, _)| n).collect::<Vec<_>>(), removed = ?removed, "SDS delta push");
        for (name, s) in &changed {
            known.insert((*name).clone(), s.version.clone());
        }
        for name in &removed {
            known.remove(name);
        }
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// The gRPC face of [`EnvoySds`]: the server's guard has put the Envoy peer
/// into the request's extensions.
pub struct SdsService(pub Arc<EnvoySds>);

fn envoy_peer<T>(request: &Request<T>) -> Result<Peer, SdsError> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or(SdsError::NoPeer)
}

type Responses<T> = ReceiverStream<Result<T, Status>>;

/// Runs one stream of Envoy's requests on a task of its own, answering on
/// the response stream it returns.
fn open_stream<Req, Resp, Fut>(
    sds: Arc<EnvoySds>,
    request: Request<Streaming<Req>>,
    run: impl FnOnce(Arc<EnvoySds>, Peer, Streaming<Req>, mpsc::Sender<Result<Resp, Status>>) -> Fut,
) -> Result<Response<Responses<Resp>>, Status>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let envoy = envoy_peer(&request)?;
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    tokio::spawn(run(sds, envoy, request.into_inner(), tx));
    Ok(Response::new(ReceiverStream::new(rx)))
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = Responses<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Responses<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        open_stream(self.0.clone(), request, run_delta)
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        open_stream(self.0.clone(), request, run_sotw)
    }

    /// One resolution of the named resources; `version_info` changes exactly
    /// when one of them does.
    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let envoy = envoy_peer(&request)?;
        let req = request.into_inner();
        check_type_url(&req.type_url)?;
        let mut sub = Subscription::new(self.0.clone(), envoy);
        sub.set_names(req.resource_names.into_iter().collect())
            .await;
        let listing: String = sub
            .served
            .iter()
            .map(|(name, s)| format!("{name}={};", s.version))
            .collect();
        let version = self.0.version_of(listing.as_bytes());
        self.0.pushed(Api::Fetch, sub.served.values());
        Ok(Response::new(DiscoveryResponse {
            version_info: version,
            resources: sub.served.values().map(Served::any).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_wipes_keys_and_values_but_not_certificates() {
        let mut tls = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline_bytes(b"CERT".to_vec())),
                private_key: Some(inline_bytes(b"KEY".to_vec())),
                ..Default::default()
            })),
        };
        scrub(&mut tls);
        let Some(secret::Type::TlsCertificate(t)) = &tls.r#type else {
            unreachable!()
        };
        assert_eq!(
            t.certificate_chain.as_ref().unwrap().specifier,
            Some(Specifier::InlineBytes(b"CERT".to_vec()))
        );
        assert_eq!(
            t.private_key.as_ref().unwrap().specifier,
            Some(Specifier::InlineBytes(Vec::new()))
        );

        let mut generic = Secret {
            name: "secret:a/b".into(),
            r#type: Some(secret::Type::GenericSecret(GenericSecret {
                secret: Some(DataSource {
                    specifier: Some(Specifier::InlineString("sk-1".into())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        scrub(&mut generic);
        let Some(secret::Type::GenericSecret(g)) = &generic.r#type else {
            unreachable!()
        };
        assert_eq!(
            g.secret.as_ref().unwrap().specifier,
            Some(Specifier::InlineString(String::new()))
        );
    }

    #[test]
    fn absences_map_to_contract_codes_and_only_unavailable_keeps_what_envoy_has() {
        let cases = [
            (Absence::UnknownName("x".into()), ErrorCode::NotFound, false),
            (
                Absence::NoSvid("later".into()),
                ErrorCode::Unavailable,
                true,
            ),
            (
                Absence::Vault(VaultError::Denied { reasons: vec![] }),
                ErrorCode::PolicyDenied,
                false,
            ),
            (
                Absence::Vault(VaultError::NotFound("gone".into())),
                ErrorCode::NotFound,
                false,
            ),
            (
                Absence::Vault(VaultError::Storage("down".into())),
                ErrorCode::Unavailable,
                true,
            ),
        ];
        for (absence, code, transient) in cases {
            assert_eq!(absence.code(), code, "{absence}");
            assert_eq!(absence.is_transient(), transient, "{absence}");
        }
    }

    #[test]
    fn only_the_secret_type_is_served() {
        assert!(check_type_url("").is_ok());
        assert!(check_type_url(SECRET_TYPE_URL).is_ok());
        let err =
            check_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster").unwrap_err();
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
    }
}
