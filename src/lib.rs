//! agentvault: identity-scoped secrets for AI agents. A per-pod sidecar that
//! serves envelope-encrypted secrets to local processes over a Unix socket.
//!
//! Layers, outermost first: [`cli`] → [`sidecar`] (assembly) → [`server`] and
//! [`api`] (HTTP front end) → [`vault`] (domain) → [`crypto`] and [`store`].
//! [`identity`] says who is asking; [`metrics`] counts what happened.

pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod dotenv;
pub mod expiry;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod sidecar;
pub mod store;
pub mod svid;
pub mod vault;
