//! Assembles a sidecar from [`Settings`]: keyring, store (behind the
//! sealed-record cache unless it is off), policy, metrics and the socket, then
//! the vault once the SVID names the workload. Until then every request
//! answers `unavailable` with the reason.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::audit::{self, Auditor};
use crate::config::{IdentitySettings, Settings, StorageSettings};
use crate::crypto::{CryptoError, KeyScope, Keyring};
use crate::envoy::{self, EnvoyAuthz, EnvoySds, EnvoyServer};
use crate::expiry::Notifier;
use crate::identity::{IdentityError, WorkloadIdentity};
use crate::listen::BoundSocket;
use crate::metrics::{self, Metrics};
use crate::policy::{PolicyEngine, PolicyError};
use crate::socket::api::Api;
use crate::socket::server;
use crate::store::{CachedStore, EmbeddedStore, RedisStore, Store, StoreError};
use crate::svid::{SvidError, SvidSource, SvidState};
use crate::vault::{Vault, VaultState, VaultWatch};

/// How long the dev identity's self-signed SVID is valid.
const DEV_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the policy directory is checked for changes.
const POLICY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keyring(#[from] CryptoError),
    /// A master keyring opens every tenant's records; `serve` takes one only when told to.
    #[error("keyring {0} is a master keyring, which can open every tenant's secrets: give serve a tenant keyring (`agentvault keygen --tenant NAME --master FILE OUT`) or pass --allow-master-keyring")]
    MasterKeyring(PathBuf),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("the SVID's SPIFFE ID does not name an agent: {0}")]
    Identity(#[from] IdentityError),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics address {addr}: {source}; another sidecar on this machine? give each its own --metrics-addr (127.0.0.1:0 picks a free port) or --metrics-addr off")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started sidecar: everything is bound, nothing is served yet.
pub struct Sidecar {
    socket: BoundSocket,
    /// The Envoy ext_authz server, when `envoy.socket` is set.
    envoy: Option<EnvoyServer>,
    api: Arc<Api>,
    settings: Settings,
    vault: VaultWatch,
    storage: &'static str,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fatal: oneshot::Receiver<StartError>,
}

impl Sidecar {
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let keyring = if settings.create_keyring {
            Keyring::load_or_create(&settings.keyring)?
        } else {
            Keyring::load(&settings.keyring)?
        };
        if *keyring.scope() == KeyScope::Master && !settings.allow_master_keyring {
            return Err(StartError::MasterKeyring(settings.keyring.clone()));
        }
        // A known identity is checked against the keyring before anything is served.
        if let IdentitySettings::Fixed(identity) = &settings.identity {
            keyring.tenant_cipher(&identity.tenant)?;
        }
        let store: Arc<dyn Store> = match &settings.storage {
            StorageSettings::Embedded(path) => Arc::new(EmbeddedStore::open(path)?),
            StorageSettings::Redis(target) => Arc::new(RedisStore::with_security(
                target.clone(),
                settings.redis_security.clone(),
            )),
        };
        let storage = store.kind();
        let metrics = Arc::new(Metrics::new());
        let cache = settings.cache.enabled().then(|| {
            Arc::new(CachedStore::new(
                store.clone(),
                settings.cache,
                metrics.clone(),
            ))
        });
        let store = cache.clone().map_or(store, |c| c as Arc<dyn Store>);
        // The Envoy decision rule is compiled beside agentvault's own, and
        // required only when the Envoy front end is on.
        let rules = settings
            .envoy
            .iter()
            .map(|e| e.decision_rule.clone())
            .collect();
        let policy = Arc::new(PolicyEngine::load_with(
            settings.policy_dir.as_deref(),
            settings.policy.clone(),
            rules,
        )?);
        let mut tasks = Vec::new();
        if settings.policy_dir.is_some() {
            tasks.push(policy.watch(POLICY_RELOAD_INTERVAL));
        }
        let svids = match &settings.identity {
            IdentitySettings::Fixed(identity) => {
                SvidSource::self_signed(&identity.spiffe_id, DEV_SVID_TTL)?
            }
            IdentitySettings::WorkloadApi { endpoint, .. } => SvidSource::workload_api(endpoint),
        };
        let (vault_tx, vault) =
            watch::channel(VaultState::Starting("waiting for an X.509-SVID".into()));
        let (fatal_tx, fatal) = oneshot::channel();
        // The Envoy SDS service follows the same SVID and store changes.
        let sds_inputs = (svids.clone(), store.clone());
        let assembly = Assembly {
            store,
            cache,
            keyring,
            policy,
            metrics: metrics.clone(),
            settings: settings.clone(),
        };
        tasks.push(tokio::spawn(assembly.follow(svids, vault_tx, fatal_tx)));
        let api = Arc::new(Api::new(
            vault.clone(),
            metrics.clone(),
            settings.max_body_bytes,
            settings.rates,
            settings.unmapped_callers,
        ));
        let metrics_addr = match settings.metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Metrics { addr, source })?;
                let bound = listener.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(metrics::serve(listener, metrics.clone())));
                Some(bound)
            }
            None => None,
        };
        let socket = BoundSocket::bind(&settings.socket, settings.socket_mode)
            .await
            .map_err(|source| StartError::Socket {
                path: settings.socket.clone(),
                source,
            })?;
        let envoy = match &settings.envoy {
            Some(envoy) => {
                if !settings
                    .roles
                    .rules()
                    .iter()
                    .any(|r| r.role == envoy::ENVOY_ROLE)
                {
                    tracing::warn!(
                        "the Envoy socket is on but no rule maps role `envoy` \
                         (--role envoy=uid:N); every Check will be refused"
                    );
                }
                let bound = BoundSocket::bind(&envoy.socket, settings.socket_mode)
                    .await
                    .map_err(|source| StartError::Socket {
                        path: envoy.socket.clone(),
                        source,
                    })?;
                let authz = EnvoyAuthz::new(vault.clone(), &settings.roles, envoy, metrics.clone());
                let roles = Arc::new(settings.roles.clone());
                let (svids, store) = sds_inputs;
                let sds = EnvoySds::new(vault.clone(), svids, store, metrics.clone());
                Some(EnvoyServer::new(
                    bound,
                    roles,
                    Arc::new(authz),
                    Arc::new(sds),
                ))
            }
            None => None,
        };
        Ok(Self {
            socket,
            envoy,
            api,
            settings,
            vault,
            storage,
            metrics_addr,
            metrics,
            tasks,
            fatal,
        })
    }

    pub fn socket_path(&self) -> &std::path::Path {
        self.socket.path()
    }

    /// The Envoy ext_authz socket, when configured.
    pub fn envoy_socket_path(&self) -> Option<&std::path::Path> {
        self.envoy.as_ref().map(EnvoyServer::path)
    }

    /// The workload identity, once the vault is ready.
    pub fn identity(&self) -> Option<WorkloadIdentity> {
        match &*self.vault.borrow() {
            VaultState::Ready(vault) => Some(vault.workload().clone()),
            VaultState::Starting(_) => None,
        }
    }

    /// Waits until the vault is ready (the SVID arrived) or `timeout` passes.
    pub async fn ready(&mut self, timeout: Duration) -> Option<WorkloadIdentity> {
        let mut vault = self.vault.clone();
        let _ = tokio::time::timeout(
            timeout,
            vault.wait_for(|state| matches!(state, VaultState::Ready(_))),
        )
        .await;
        self.identity()
    }

    pub fn storage(&self) -> &'static str {
        self.storage
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until `shutdown` resolves, then drains and removes the socket.
    /// Fails if the SVID turns out not to name an agent.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let mut fatal = self.fatal;
        let mut failure = None;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let trigger = async {
            tokio::select! {
                () = shutdown => {},
                Ok(e) = &mut fatal => failure = Some(e),
            }
            stop_tx.send_replace(true);
        };
        let api = server::serve(
            self.socket,
            self.api,
            Arc::new(self.settings.roles.clone()),
            self.settings.connections,
            self.metrics.clone(),
            stopped(stop_rx.clone()),
        );
        let envoy = async {
            if let Some(envoy) = self.envoy {
                if let Err(e) = envoy::serve(envoy, stopped(stop_rx.clone())).await {
                    tracing::error!(error = %e, "the Envoy gRPC server failed");
                }
            }
        };
        tokio::join!(trigger, api, envoy);
        for task in self.tasks {
            task.abort();
        }
        failure.map_or(Ok(()), Err)
    }
}

/// What the vault is built from once the identity is known.
struct Assembly {
    store: Arc<dyn Store>,
    /// The same store as `store`, when it is cached: told the tenant once known.
    cache: Option<Arc<CachedStore>>,
    keyring: Keyring,
    policy: Arc<PolicyEngine>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Assembly {
    /// Follows the SVID source: publishes why the vault is not ready, builds it
    /// from the first SVID, and then keeps the SVID expiry metric current
    /// through rotations. Reports a fatal error if the SPIFFE ID names no agent.
    async fn follow(
        self,
        svids: SvidSource,
        vault_tx: watch::Sender<VaultState>,
        fatal: oneshot::Sender<StartError>,
    ) {
        let pattern = match &self.settings.identity {
            IdentitySettings::WorkloadApi { pattern, .. } => pattern.clone(),
            IdentitySettings::Fixed(_) => crate::identity::DEFAULT_ID_PATTERN.to_owned(),
        };
        let mut updates = svids.subscribe();
        let mut identity: Option<WorkloadIdentity> = None;
        loop {
            let state = updates.borrow_and_update().clone();
            match state {
                SvidState::Pending(why) if identity.is_none() => {
                    vault_tx.send_replace(VaultState::Starting(format!(
                        "waiting for an X.509-SVID: {why}"
                    )));
                }
                SvidState::Pending(_) => {}
                SvidState::Ready(svid) => {
                    self.metrics.svid_expiry(svid.not_after.timestamp());
                    match &identity {
                        None => match WorkloadIdentity::parse(&svid.spiffe_id, &pattern)
                            .map_err(StartError::from)
                            .and_then(|id| {
                                let cipher = self.keyring.tenant_cipher(&id.tenant)?;
                                Ok((id, cipher))
                            }) {
                            Ok((id, cipher)) => {
                                tracing::info!(identity = %id.spiffe_id, not_after = %svid.not_after, "SVID received");
                                if let Some(cache) = &self.cache {
                                    cache.watch(&id.tenant);
                                }
                                let auditor = Auditor::new(
                                    self.store.clone(),
                                    &id.tenant,
                                    self.settings.audit,
                                    self.metrics.clone(),
                                );
                                tokio::spawn(auditor.clone().run(audit::RETRY_INTERVAL));
                                let vault = Vault::new(
                                    self.store.clone(),
                                    cipher,
                                    id.clone(),
                                    self.settings.limits,
                                    self.policy.clone(),
                                    self.settings.access,
                                    auditor,
                                );
                                let vault = Arc::new(vault);
                                let notifier = Notifier::new(
                                    vault.clone(),
                                    self.metrics.clone(),
                                    self.settings.expiry_webhook.clone(),
                                );
                                tokio::spawn(notifier.run(self.settings.expiry_check_interval));
                                vault_tx.send_replace(VaultState::Ready(vault));
                                identity = Some(id);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot serve this SVID's workload");
                                let _ = fatal.send(e);
                                return;
                            }
                        },
                        Some(id) if id.spiffe_id != svid.spiffe_id => tracing::error!(
                            serving = %id.spiffe_id, rotated = %svid.spiffe_id,
                            "a rotated SVID names another workload; keeping the first identity"
                        ),
                        Some(_) => tracing::info!(not_after = %svid.not_after, "SVID rotated"),
                    }
                }
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
    }
}
