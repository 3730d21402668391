//! The Envoy front end: Envoy's external authorization API
//! (`envoy.service.auth.v3.Authorization/Check`) over gRPC on a Unix socket,
//! answering with the same Rego as the socket API, in the OPA-Envoy plugin's
//! input and result shapes, plus credential injection: a secret read through
//! the vault (policy, tiers, expiry, audit) and set as a header on the
//! upstream request, so the app never holds it. On the same socket, Envoy's
//! Secret Discovery Service (`envoy.service.secret.v3.SecretDiscoveryService`)
//! serves the pod's SVID, its trust bundle and agentvault secrets, and pushes
//! every change.
//!
//! `server` owns the socket, the caller check and the one tonic router;
//! `authz` answers a Check; `input` builds the policy input; `result` reads
//! the policy's answer; `sds` serves and pushes secrets.

mod authz;
mod input;
mod result;
mod sds;
mod server;

pub use self::authz::EnvoyAuthz;
pub use self::input::{
    build as build_input, build_for as build_input_for, struct_to_json, CheckInput, InputError,
    SubjectInput, Want,
};
pub use self::sds::{EnvoySds, BUNDLE_RESOURCE, SECRET_PREFIX, SECRET_TYPE_URL, SVID_RESOURCE};
pub use self::server::{serve, EnvoyServer, PeerGuard, ENVOY_ROLE};

use std::path::PathBuf;

/// The rule a Check evaluates unless `envoy.decision_rule` names another:
/// the OPA-Envoy plugin's default, so its users' policies run unchanged.
pub const DEFAULT_DECISION_RULE: &str = "data.envoy.authz.allow";

/// The `context_extensions` key through which Envoy names the calling app's role.
pub const ROLE_EXTENSION: &str = "agentvault_role";

/// What a Check answers when the policy cannot be evaluated or gives a
/// result of the wrong shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Deny (403); the default.
    #[default]
    Deny,
    /// Let the request through untouched (no headers, no credential).
    Allow,
}

/// The Envoy front end's settings (config section `envoy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoySettings {
    /// The Unix socket Envoy's ext_authz filter calls.
    pub socket: PathBuf,
    /// The Rego rule each Check evaluates.
    pub decision_rule: String,
    /// Parse JSON and form bodies Envoy forwards into `input.parsed_body`.
    pub parse_body: bool,
    pub on_error: OnError,
}
