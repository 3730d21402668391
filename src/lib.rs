//! agentvault: identity-scoped secrets for AI agents. A per-pod sidecar that
//! serves envelope-encrypted secrets to local processes over a Unix socket.
//!
//! Layers, outermost first: [`cli`] → [`sidecar`] (assembly) → the front ends
//! [`socket`] (HTTP over a Unix socket), [`envoy`] (Envoy ext_authz over gRPC) and
//! [`webhook`] (Kubernetes admission) → [`vault`] (domain) → [`crypto`] and [`store`].
//! [`identity`] says who is asking; [`metrics`] counts what happened.

pub mod allocator;
pub mod audit;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod envoy;
pub mod expiry;
pub mod fsmode;
pub mod identity;
pub mod inject;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod ratelimit;
pub mod sidecar;
pub mod socket;
pub mod store;
pub mod svid;
pub mod vault;
pub mod webhook;
