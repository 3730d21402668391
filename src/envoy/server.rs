//! The gRPC server Envoy talks to: one tonic router on a Unix socket,
//! serving `envoy.service.auth.v3.Authorization`,
//! `envoy.service.secret.v3.SecretDiscoveryService` and `grpc.health.v1.Health`
//! side by side. Every call, and every stream when it opens, passes
//! [`PeerGuard`] first: only a process the role map names `envoy` gets in.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tonic::service::Interceptor;
use tonic::transport::server::{Router, UdsConnectInfo};
use tonic::{Request, Status};

use super::authz::{AuthzService, EnvoyAuthz};
use super::sds::{EnvoySds, SdsService};
use crate::identity::{Peer, PeerCred, RoleMap};
use crate::listen::BoundSocket;

/// The role the role map must give Envoy's process (`--role envoy=uid:N`).
pub const ENVOY_ROLE: &str = "envoy";

/// How long shutdown waits for Checks in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Lets in only the peer the role map names [`ENVOY_ROLE`], by its
/// `SO_PEERCRED` credentials, and hands that [`Peer`] to the handlers.
/// Everyone else gets `PERMISSION_DENIED`.
#[derive(Clone)]
pub struct PeerGuard {
    roles: Arc<RoleMap>,
}

impl Interceptor for PeerGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
        let cred = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let peer = Peer::identify(&self.roles, cred);
        if peer.role.as_deref() != Some(ENVOY_ROLE) {
            tracing::warn!(uid = cred.uid, pid = ?cred.pid, "envoy socket refused a caller that is not Envoy");
            return Err(Status::permission_denied(format!(
                "uid {} is not the role `{ENVOY_ROLE}` (--role {ENVOY_ROLE}=uid:N)",
                cred.uid
            )));
        }
        request.extensions_mut().insert(peer);
        Ok(request)
    }
}

/// A bound Envoy socket and the services it will serve.
pub struct EnvoyServer {
    socket: BoundSocket,
    router: Router,
    health: tonic_health::server::HealthReporter,
}

impl EnvoyServer {
    /// The router with the Check, SDS and health services, each behind the guard.
    pub fn new(
        socket: BoundSocket,
        roles: Arc<RoleMap>,
        authz: Arc<EnvoyAuthz>,
        sds: Arc<EnvoySds>,
    ) -> Self {
        let guard = PeerGuard { roles };
        let (health, health_service) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                health_service,
                guard.clone(),
            ))
            .add_service(AuthorizationServer::with_interceptor(
                AuthzService(authz),
                guard.clone(),
            ))
            .add_service(SecretDiscoveryServiceServer::with_interceptor(
                SdsService(sds),
                guard,
            ));
        Self {
            socket,
            router,
            health,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.socket.path()
    }
}

/// Serves until `shutdown` resolves, then stops accepting, removes the
/// socket and waits up to ten seconds for Checks in flight.
pub async fn serve(server: EnvoyServer, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    server
        .health
        .set_serving::<AuthorizationServer<AuthzService>>()
        .await;
    server
        .health
        .set_serving::<SecretDiscoveryServiceServer<SdsService>>()
        .await;
    let incoming = futures_util::stream::unfold(server.socket, |socket| async move {
        loop {
            match socket.accept().await {
                Ok(stream) => return Some((Ok::<_, io::Error>(stream), socket)),
                Err(e) => {
                    tracing::warn!(error = %e, "envoy socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server
        .router
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stopped_tx.send(());
        });
    tokio::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        _ = stopped_rx => {
            tracing::info!("shutting down: draining Envoy checks");
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut serving).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("Envoy checks still open after {DRAIN_TIMEOUT:?}; closing them");
                    Ok(())
                }
            }
        }
    };
    result.map_err(io::Error::other)
}
