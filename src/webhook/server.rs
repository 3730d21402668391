//! HTTPS (tokio-rustls + hyper 1) for the admission webhook.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::review::{self, Verdict};
use super::tls::ReloadingCert;
use super::WebhookError;
use crate::inject::{InjectorConfig, Selection};

/// Larger than any pod the API server accepts (its own request limit is 3 MiB).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub injector: InjectorConfig,
    /// How often the certificate files are checked for changes.
    pub cert_check_interval: Duration,
}

/// Serves until `shutdown` completes, then drains open connections.
/// `on_bound` is told the bound address (useful with port 0).
pub async fn run(
    settings: WebhookSettings,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let cert = ReloadingCert::load(&settings.tls_cert, &settings.tls_key)?;
    let acceptor = TlsAcceptor::from(cert.server_config()?);
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| WebhookError::Listen {
                addr: settings.listen,
                source,
            })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebhookError::Listen {
            addr: settings.listen,
            source,
        })?;
    on_bound(bound);
    let watcher = tokio::spawn(Arc::clone(&cert).watch(settings.cert_check_interval));
    let injector = Arc::new(settings.injector);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let injector = Arc::clone(&injector);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let injector = Arc::clone(&injector);
                async move { Ok::<_, Infallible>(route(req, &injector).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    watcher.abort();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
    Ok(())
}

async fn route(req: Request<Incoming>, injector: &InjectorConfig) -> Response<Full<Bytes>> {
    let selection = match req.uri().path() {
        "/healthz" | "/readyz" => {
            return match *req.method() {
                Method::GET | Method::HEAD => {
                    json_response(StatusCode::OK, &json!({"status": "ok"}))
                }
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        "/mutate" => Selection::OptIn,
        "/mutate/namespace" => Selection::OptOut,
        _ => return error(StatusCode::NOT_FOUND, "no such route"),
    };
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    match review::answer(&body, injector, selection) {
        Ok(answer) => {
            match &answer.verdict {
                Verdict::Injected { operations } => tracing::info!(
                    uid = %answer.uid, namespace = ?answer.namespace, object = %answer.object,
                    operations, "sidecar injected"
                ),
                Verdict::Skipped(skip) => tracing::info!(
                    uid = %answer.uid, namespace = ?answer.namespace, object = %answer.object,
                    reason = skip.reason(), "not injected"
                ),
                Verdict::Ignored => tracing::debug!(uid = %answer.uid, "not a pod being created"),
                Verdict::Denied(message) => tracing::warn!(
                    uid = %answer.uid, namespace = ?answer.namespace, object = %answer.object,
                    reason = %message, "pod refused"
                ),
            }
            json_response(StatusCode::OK, &answer.review)
        }
        Err(e) => {
            tracing::warn!(error = %e, "bad admission request");
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": message}))
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
