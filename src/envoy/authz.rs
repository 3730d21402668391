//! `Authorization/Check`: one decision of the configured rule on the
//! sidecar's policy set, then the credentials the decision asks for, read
//! through the vault as the Envoy caller, then one audit event and the answer.
//!
//! Guarantees: a request whose credential cannot be read is denied, never
//! forwarded without it; a secret's value goes only into the `OkHttpResponse`
//! headers, never into a log line, an error, an audit event or a metric.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::{Code, Status as RpcStatus};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::input::{CheckInput, InputError, SubjectInput};
use super::result::{self, Injection, ResultError, Verdict};
use super::{EnvoySettings, OnError, ENVOY_ROLE, ROLE_EXTENSION};
use crate::audit::{AuditEvent, EventKind};
use crate::identity::{Caller, Peer, RoleMap};
use crate::metrics::Metrics;
use crate::policy::PolicyError;
use crate::vault::{current_vault, ErrorCode, SecretValue, Vault, VaultError, VaultWatch};

/// Why a Check was not simply decided by the policy.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("{0}")]
    NotReady(VaultError),
    #[error("malformed CheckRequest: {0}")]
    Malformed(#[from] InputError),
    #[error("role `{0}` (context_extensions.agentvault_role) is not a role this sidecar knows")]
    UnknownRole(String),
    #[error("the envoy policy failed: {0}")]
    Policy(#[from] PolicyError),
    #[error("the envoy policy gave a malformed decision: {0}")]
    Result(#[from] ResultError),
    #[error("credential injection failed: secret `{path}`: {source}")]
    Inject {
        path: String,
        #[source]
        source: VaultError,
    },
    #[error("credential injection failed: secret `{0}` cannot be an HTTP header value")]
    NotAHeaderValue(String),
}

impl CheckError {
    /// The one map from failures to what the app sees (the local reply's
    /// status) and to the audit outcome (a contract code).
    fn status_and_code(&self) -> (u16, ErrorCode) {
        match self {
            Self::NotReady(_) => (503, ErrorCode::Unavailable),
            Self::Malformed(_) => (400, ErrorCode::InvalidRequest),
            Self::UnknownRole(_) | Self::NotAHeaderValue(_) => (403, ErrorCode::PolicyDenied),
            Self::Result(ResultError::Inject(_)) => (403, ErrorCode::PolicyDenied),
            Self::Policy(_) | Self::Result(_) => (403, ErrorCode::Internal),
            Self::Inject { source, .. } => match source.code() {
                ErrorCode::Unavailable | ErrorCode::RateLimited => (503, ErrorCode::Unavailable),
                ErrorCode::Internal => (500, ErrorCode::Internal),
                ErrorCode::Expired => (403, ErrorCode::Expired),
                ErrorCode::NotFound => (403, ErrorCode::NotFound),
                _ => (403, ErrorCode::PolicyDenied),
            },
        }
    }

    /// Failures `envoy.on_error` decides about: the policy's own, except a
    /// malformed injection, which always denies.
    fn is_policy_failure(&self) -> bool {
        matches!(self, Self::Policy(_))
            || matches!(self, Self::Result(e) if !matches!(e, ResultError::Inject(_)))
    }
}

/// How a Check ended, for metrics: a fixed set of labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allowed,
    Denied,
    Error,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// A decided Check: what to answer, and the values to inject (kept apart
/// from everything that is logged or audited).
struct Answer {
    verdict: Verdict,
    injected: Vec<(Injection, SecretValue)>,
}

/// The ext_authz service.
pub struct EnvoyAuthz {
    vault: VaultWatch,
    /// Roles Envoy may name for an app: every role of the role map but `envoy`.
    known_roles: BTreeSet<String>,
    decision_rule: String,
    parse_body: bool,
    on_error: OnError,
    metrics: Arc<Metrics>,
}

impl EnvoyAuthz {
    pub fn new(
        vault: VaultWatch,
        roles: &RoleMap,
        settings: &EnvoySettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let known_roles = roles
            .rules()
            .iter()
            .map(|r| r.role.clone())
            .filter(|r| r != ENVOY_ROLE)
            .collect();
        Self {
            vault,
            known_roles,
            decision_rule: settings.decision_rule.clone(),
            parse_body: settings.parse_body,
            on_error: settings.on_error,
            metrics,
        }
    }

    /// Decides one Check from `envoy` (the peer the server let in).
    pub async fn decide(&self, envoy: &Peer, req: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let vault = match current_vault(&self.vault) {
            Ok(vault) => vault,
            Err(e) => {
                let error = CheckError::NotReady(e);
                tracing::warn!(error = %error, "envoy check before the vault is ready; denying");
                self.metrics
                    .envoy_check(Decision::Error.as_str(), started.elapsed());
                return denial_for(&error).verdict.into_response(Vec::new());
            }
        };
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let app_role = req
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(ROLE_EXTENSION))
            .cloned();
        let request_id = http
            .and_then(|h| h.headers.get("x-request-id").or(Some(&h.id)))
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
            })
            .cloned();
        let host = http.map(|h| h.host.clone()).unwrap_or_default();
        let method = http.map(|h| h.method.clone()).unwrap_or_default();

        let outcome = self
            .answer(
                &vault,
                envoy,
                req,
                app_role.as_deref(),
                request_id.as_deref(),
            )
            .await;
        let (answer, decision, outcome_code, reasons) = match outcome {
            Ok(answer) => {
                let decision = if answer.verdict.allowed {
                    Decision::Allowed
                } else {
                    Decision::Denied
                };
                let (code, reasons) = if answer.verdict.allowed {
                    ("ok", Vec::new())
                } else {
                    let reason = if answer.verdict.body.is_empty() {
                        "the envoy policy denied the request".to_owned()
                    } else {
                        answer.verdict.body.clone()
                    };
                    (ErrorCode::PolicyDenied.as_str(), vec![reason])
                };
                (answer, decision, code, reasons)
            }
            Err(error) if error.is_policy_failure() => {
                tracing::error!(error = %error, on_error = ?self.on_error, "envoy policy failed");
                let verdict = match self.on_error {
                    OnError::Deny => denial_for(&error).verdict,
                    OnError::Allow => Verdict::allow(),
                };
                let code = if verdict.allowed {
                    "ok"
                } else {
                    ErrorCode::Internal.as_str()
                };
                let answer = Answer {
                    verdict,
                    injected: Vec::new(),
                };
                (answer, Decision::Error, code, vec![error.to_string()])
            }
            Err(error) => {
                tracing::info!(error = %error, "envoy check denied");
                let code = error.status_and_code().1.as_str();
                (
                    denial_for(&error),
                    Decision::Denied,
                    code,
                    vec![error.to_string()],
                )
            }
        };

        let app_peer = Peer {
            cred: envoy.cred,
            role: app_role,
        };
        let mut subject = Caller::new(vault.workload(), &app_peer, None);
        subject.request_id = request_id;
        let mut event = AuditEvent::new(EventKind::EnvoyCheck, &subject)
            .action(&method.to_ascii_lowercase())
            .path(&host);
        event.outcome = outcome_code.to_owned();
        event.reasons = reasons;
        event.injected = answer
            .injected
            .iter()
            .map(|(injection, _)| injection.secret.clone())
            .collect();
        vault.audit_event(event).await;
        self.metrics
            .envoy_check(decision.as_str(), started.elapsed());
        answer.verdict.into_response(answer.injected)
    }

    async fn answer(
        &self,
        vault: &Vault,
        envoy: &Peer,
        req: &CheckRequest,
        app_role: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Answer, CheckError> {
        if let Some(role) = app_role.filter(|r| !self.known_roles.contains(*r)) {
            return Err(CheckError::UnknownRole(role.to_owned()));
        }
        let workload = vault.workload();
        let subject = SubjectInput {
            spiffe_id: &workload.spiffe_id,
            tenant: &workload.tenant,
            agent: &workload.agent,
            role: app_role,
        };
        let input = CheckInput {
            request: req,
            subject,
            parse_body: self.parse_body,
        };
        let value = vault.eval_rule::<_, CheckError>(&self.decision_rule, &input)?;
        let verdict = result::read(&value)?;
        let mut injected = Vec::with_capacity(verdict.inject.len());
        if !verdict.inject.is_empty() {
            let mut caller = Caller::new(workload, envoy, None);
            caller.request_id = request_id.map(str::to_owned);
            for injection in &verdict.inject {
                let secret =
                    vault
                        .get(&caller, &injection.secret, None)
                        .await
                        .map_err(|source| CheckError::Inject {
                            path: injection.secret.clone(),
                            source,
                        })?;
                let value = format!("{}{}", injection.prefix, secret.value.expose());
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(CheckError::NotAHeaderValue(injection.secret.clone()));
                }
                injected.push((injection.clone(), SecretValue::new(value)));
            }
        }
        Ok(Answer { verdict, injected })
    }
}

/// The local reply for a failed Check: a JSON body with the contract code
/// and the reason.
fn denial_for(error: &CheckError) -> Answer {
    let (status, code) = error.status_and_code();
    let body = json!({"error": {"code": code.as_str(), "message": error.to_string()}});
    let mut verdict = Verdict::deny(status, body.to_string());
    verdict
        .headers
        .push(("content-type".into(), "application/json".into()));
    Answer {
        verdict,
        injected: Vec::new(),
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

impl Verdict {
    /// The CheckResponse Envoy acts on: OK with headers to set on the
    /// upstream request (the injected ones overwrite whatever the app sent),
    /// or PERMISSION_DENIED with the local reply.
    fn into_response(self, injected: Vec<(Injection, SecretValue)>) -> CheckResponse {
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| header(k, v, HeaderAppendAction::AppendIfExistsOrAdd));
        if self.allowed {
            let headers = headers
                .chain(injected.iter().map(|(injection, value)| {
                    header(
                        &injection.header,
                        value.expose(),
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    )
                }))
                .collect();
            CheckResponse {
                status: Some(RpcStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                dynamic_metadata: self.dynamic_metadata,
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove: self.request_headers_to_remove,
                    response_headers_to_add: self
                        .response_headers_to_add
                        .iter()
                        .map(|(k, v)| header(k, v, HeaderAppendAction::AppendIfExistsOrAdd))
                        .collect(),
                    ..Default::default()
                })),
            }
        } else {
            CheckResponse {
                status: Some(RpcStatus {
                    code: Code::PermissionDenied as i32,
                    ..Default::default()
                }),
                dynamic_metadata: self.dynamic_metadata,
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(self.http_status),
                    }),
                    headers: headers.collect(),
                    body: self.body,
                })),
            }
        }
    }
}

/// The gRPC face of [`EnvoyAuthz`]: the server's guard has put the Envoy
/// peer into the request's extensions.
pub struct AuthzService(pub Arc<EnvoyAuthz>);

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
        let req = request.into_inner();
        Ok(Response::new(self.0.decide(&peer, &req).await))
    }
}
