//! The mutating admission webhook: the Kubernetes API server sends every pod
//! it is about to create (as the MutatingWebhookConfiguration selects) and
//! gets back the JSONPatch that adds the agentvault sidecar.
//!
//! Routes: `POST /mutate` (pods that opt in), `POST /mutate/namespace` (pods
//! of a namespace that opts in: every pod that does not opt out), `GET
//! /healthz`, `GET /readyz`. A sibling front end: it shares only the pure
//! injection in [`crate::inject`].

pub mod review;
pub mod server;
mod tls;

pub use server::{run, WebhookSettings};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
