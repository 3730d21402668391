//! The HTTP/1.1 front end of the contract (`api.md`): routing, JSON bodies, and
//! the single mapping from domain error codes to HTTP statuses.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::compat;
use super::http::{
    empty_response, full, json_bytes_response, json_response, Answer, ApiError, BodyReader,
    BoxError, Query,
};
use crate::audit::{AuditEntry, AuditEvent, EventKind};
use crate::identity::{Caller, Peer, UnmappedCallers};
use crate::metrics::Metrics;
use crate::model::ApprovalStatus;
use crate::ratelimit::{RateLimiter, RateSettings};
use crate::vault::{
    current_vault, ErrorCode, IdempotencyKey, ImportRequest, MetadataUpdate, PutRequest,
    SecretValue, TokenRequest, Vault, VaultError, VaultWatch,
};

pub use super::http::ResponseBody;

/// Default limit on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

const REQUEST_ID: &str = "x-request-id";
/// The OpenAPI 3.1 document of this API, served at `GET /v1/openapi.json`.
/// It lives beside the routes so that a change to one shows in the other's
/// diff; `tests/openapi.rs` fails when they disagree.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");
/// An idle audit stream sends a comment this often, so proxies and clients
/// can tell a quiet stream from a dead one.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// The HTTP status for a contract error code; the only place this mapping lives.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PolicyDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Expired => StatusCode::GONE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// Serves the contract for one vault.
pub struct Api {
    vault: VaultWatch,
    metrics: Arc<Metrics>,
    bodies: BodyReader,
    rates: RateLimiter,
    /// What a caller that no role rule matches may do.
    unmapped: UnmappedCallers,
    /// Set when the server shuts down, so open audit streams end and the
    /// connections can drain.
    closing: tokio::sync::watch::Sender<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    paths: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    agent_id: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    value: SecretValue,
    #[serde(default)]
    grace_period_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactRequest {
    text: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl ErrorBody<'static> {
    fn of(e: &VaultError) -> Self {
        Self {
            code: e.code().as_str(),
            message: excerpt_message(e),
        }
    }
}

impl Api {
    pub fn new(
        vault: VaultWatch,
        metrics: Arc<Metrics>,
        max_body_bytes: usize,
        rates: RateSettings,
        unmapped: UnmappedCallers,
    ) -> Self {
        Self {
            vault,
            metrics,
            bodies: BodyReader { max_body_bytes },
            rates: RateLimiter::new(rates),
            unmapped,
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Answers one request from `peer`. Never fails: every error becomes a
    /// contract error response.
    pub async fn handle<B>(&self, peer: &Peer, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let request_id = request_id(&req);
        let method = req.method().clone();
        let uri_path = req.uri().path().to_owned();
        let op = operation(&method, &uri_path);
        let is_head = method == Method::HEAD;
        let answer = match (current_vault(&self.vault), bearer(&req)) {
            (Ok(vault), Ok(bearer)) => {
                let unmapped = peer.role.is_none() && self.unmapped == UnmappedCallers::Refuse;
                let mut caller =
                    Caller::new(vault.workload(), peer, bearer).with_request_id(&request_id);
                if unmapped {
                    caller = caller.token_only();
                }
                match self.rates.check(&caller.spiffe_id) {
                    Err(wait) if !is_public(op) => Err(ApiError::RateLimited(wait)),
                    _ if unmapped && caller.bearer.is_none() && !is_public(op) => {
                        Err(refuse_unmapped(&vault, &caller).await)
                    }
                    // Reads are most requests: theirs is the one route not
                    // boxed. The others' future is the largest (7.6 KB),
                    // and a read's would move it twice.
                    _ => match (&method, split_route(&uri_path)) {
                        (&Method::GET, Some(("secrets", Some(secret)))) => {
                            let query = Query::parse(req.uri().query());
                            self.read_secret(&vault, &caller, secret, &query).await
                        }
                        _ => Box::pin(self.route(&vault, &caller, req)).await,
                    },
                }
            }
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        };
        let (mut response, outcome) = match answer {
            Ok(response) => (response, "ok"),
            Err(ApiError::MethodNotAllowed(allow)) => {
                let mut r = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed here; use {allow}"),
                );
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                (r, "method_not_allowed")
            }
            Err(ApiError::RateLimited(wait)) => {
                let code = ErrorCode::RateLimited;
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                let mut r = error_response(
                    status_of(code),
                    code.as_str(),
                    format!("caller is over its request rate; retry after {seconds}s"),
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
                (r, code.as_str())
            }
            Err(ApiError::Unmapped(reason)) => {
                let code = ErrorCode::PolicyDenied;
                let body = json!({ "error": {
                    "code": code.as_str(),
                    "message": reason,
                    "reasons": [reason],
                }});
                (json_response(status_of(code), &body), code.as_str())
            }
            Err(ApiError::Vault(VaultError::Denied { reasons })) => {
                let code = ErrorCode::PolicyDenied;
                let body = json!({ "error": {
                    "code": code.as_str(),
                    "message": "the policy denied this request",
                    "reasons": reasons,
                }});
                (json_response(status_of(code), &body), code.as_str())
            }
            Err(ApiError::Vault(e)) => {
                let code = e.code();
                if matches!(e, VaultError::Storage(_)) {
                    self.metrics.storage_error();
                }
                if code == ErrorCode::Internal {
                    tracing::error!(request_id = %request_id, error = %e, "request failed");
                }
                (
                    error_response(status_of(code), code.as_str(), excerpt_message(&e)),
                    code.as_str(),
                )
            }
        };
        if is_head {
            *response.body_mut() = full(Bytes::new());
        }
        // Every 503 is worth retrying (the store is back, a stream slot
        // frees up); say when, as the connection limits do.
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .entry(RETRY_AFTER)
                .or_insert(HeaderValue::from_static("1"));
        }
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        let elapsed = started.elapsed();
        self.metrics.observe(op, outcome, elapsed);
        tracing::info!(
            request_id = %request_id, uid = peer.cred.uid, pid = ?peer.cred.pid, role = ?peer.role,
            method = %method, path = %uri_path, status = response.status().as_u16(),
            micros = elapsed.as_micros() as u64, "request"
        );
        response
    }

    async fn route<B>(&self, vault: &Arc<Vault>, caller: &Caller, req: Request<B>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_owned();
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        let post = |allowed| match method {
            Method::POST => Ok(()),
            _ => Err(ApiError::MethodNotAllowed(allowed)),
        };
        let get = |allowed| match method {
            Method::GET => Ok(()),
            _ => Err(ApiError::MethodNotAllowed(allowed)),
        };
        match split_route(&path) {
            Some(("health", None)) => {
                get("GET")?;
                self.health(vault).await
            }
            Some(("openapi.json", None)) => {
                get("GET")?;
                Ok(openapi_response())
            }
            Some(("secrets", None)) => {
                get("GET")?;
                let limit = query.number::<usize>("limit")?;
                let prefix = query.get("prefix").unwrap_or("");
                let page = vault
                    .list(caller, prefix, limit, query.get("cursor"))
                    .await?;
                Ok(json_response(StatusCode::OK, &page))
            }
            Some(("secrets", Some(secret))) => {
                self.secret(vault, caller, method.clone(), secret, &query, req)
                    .await
            }
            Some(("batch", None)) => {
                post("POST")?;
                let body: BatchRequest = self.bodies.json(req).await?;
                let result = vault.batch(caller, &body.paths).await?;
                let errors: serde_json::Map<String, serde_json::Value> = result
                    .errors
                    .iter()
                    .map(|(path, e)| (path.clone(), json!(ErrorBody::of(e))))
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "secrets": result.secrets, "errors": errors }),
                ))
            }
            Some(("import", None)) => {
                post("POST")?;
                let key = idempotency_key(&req)?;
                let body: ImportRequest = self.bodies.json(req).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.import(caller, body, key.as_ref()).await?,
                ))
            }
            Some(("versions", Some(secret))) => {
                get("GET")?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.versions(caller, secret).await?,
                ))
            }
            Some(("rollback", Some(secret))) => {
                post("POST")?;
                let key = idempotency_key(&req)?;
                let body: RollbackRequest = self.bodies.json(req).await?;
                let written = vault
                    .rollback(caller, secret, body.version, key.as_ref())
                    .await?;
                Ok(json_response(StatusCode::OK, &written))
            }
            Some(("rotate", Some(secret))) => {
                post("POST")?;
                let key = idempotency_key(&req)?;
                let body: RotateRequest = self.bodies.json(req).await?;
                let grace = body.grace_period_seconds.map(Duration::from_secs);
                let rotated = vault
                    .rotate(caller, secret, body.value, grace, key.as_ref())
                    .await?;
                Ok(json_response(StatusCode::OK, &rotated))
            }
            Some(("grants", None)) => match method {
                Method::POST => {
                    let body: GrantRequest = self.bodies.json(req).await?;
                    let grant = vault
                        .create_grant(caller, &body.agent_id, &body.path)
                        .await?;
                    Ok(json_response(StatusCode::CREATED, &grant))
                }
                Method::GET => Ok(json_response(StatusCode::OK, &vault.grants(caller).await?)),
                _ => Err(ApiError::MethodNotAllowed("GET, POST")),
            },
            Some(("grants", Some(id))) => match method {
                Method::DELETE => {
                    vault.delete_grant(caller, id).await?;
                    Ok(empty_response(StatusCode::NO_CONTENT))
                }
                _ => Err(ApiError::MethodNotAllowed("DELETE")),
            },
            Some(("tokens", None)) => {
                post("POST")?;
                let body: TokenRequest = self.bodies.json(req).await?;
                let issued = vault.request_token(caller, body).await?;
                let status = match issued.approval_status {
                    ApprovalStatus::Pending => StatusCode::ACCEPTED,
                    _ => StatusCode::CREATED,
                };
                Ok(json_response(status, &issued))
            }
            Some(("approvals", None)) => {
                get("GET")?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.approvals(caller).await?,
                ))
            }
            Some(("audit", None)) => {
                get("GET")?;
                let items = vault.audit_log(caller, query.number("limit")?).await?;
                Ok(json_response(StatusCode::OK, &json!({ "items": items })))
            }
            Some(("audit", Some("stream"))) => {
                get("GET")?;
                let last = req
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .or(query.get("last_event_id"))
                    .filter(|v| !v.is_empty());
                self.audit_stream(vault, caller, last).await
            }
            Some(("redact", None)) => {
                post("POST")?;
                self.redact(vault, caller, req).await
            }
            Some(("vault", rest)) => {
                compat::route(&self.bodies, vault, caller, rest, &query, req).await
            }
            Some(("approvals", Some(rest))) => {
                post("POST")?;
                let (id, approve) = match rest.rsplit_once('/') {
                    Some((id, "approve")) => (id, true),
                    Some((id, "deny")) => (id, false),
                    _ => return Err(VaultError::NotFound(format!("no route for `{path}`")).into()),
                };
                Ok(json_response(
                    StatusCode::OK,
                    &vault.decide_approval(caller, id, approve).await?,
                ))
            }
            _ => Err(VaultError::NotFound(format!("no route for `{path}`")).into()),
        }
    }

    /// `GET /v1/secrets/{path}`: the secret's value and metadata.
    async fn read_secret(
        &self,
        vault: &Vault,
        caller: &Caller,
        path: &str,
        query: &Query,
    ) -> Answer {
        let version = query.number::<u64>("version")?;
        if version == Some(0) {
            return Err(VaultError::invalid("version", "versions start at 1").into());
        }
        let secret = vault.get(caller, path, version).await?;
        Ok(json_bytes_response(StatusCode::OK, secret.to_json()))
    }

    async fn secret<B>(
        &self,
        vault: &Vault,
        caller: &Caller,
        method: Method,
        path: &str,
        query: &Query,
        req: Request<B>,
    ) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match method {
            Method::GET => self.read_secret(vault, caller, path, query).await,
            Method::HEAD => match vault.exists(caller, path).await? {
                true => Ok(empty_response(StatusCode::OK)),
                false => Err(VaultError::NotFound(format!("no secret at `{path}`")).into()),
            },
            Method::PUT => {
                let key = idempotency_key(&req)?;
                let body: PutRequest = self.bodies.json(req).await?;
                let written = vault
                    .put_idempotent(caller, path, body, key.as_ref())
                    .await?;
                Ok(json_response(StatusCode::OK, &written))
            }
            Method::PATCH => {
                let key = idempotency_key(&req)?;
                let update: MetadataUpdate = self.bodies.json(req).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.update(caller, path, update, key.as_ref()).await?,
                ))
            }
            Method::DELETE => {
                let key = idempotency_key(&req)?;
                vault.delete(caller, path, key.as_ref()).await?;
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            _ => Err(ApiError::MethodNotAllowed("GET, HEAD, PUT, PATCH, DELETE")),
        }
    }

    /// Ends every open audit stream; called when the server stops accepting.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// `GET /v1/audit/stream`: Server-Sent Events following the tenant's
    /// audit stream after `last` (else from now), with heartbeat comments.
    async fn audit_stream(
        &self,
        vault: &Arc<Vault>,
        caller: &Caller,
        last: Option<&str>,
    ) -> Answer {
        let mut follow = vault.audit_follow(caller, last).await?;
        let vault = vault.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let hello = format!(": audit events after {}\nretry: 1000\n\n", follow.cursor());
            if tx.send(Bytes::from(hello)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    next = follow.next(&vault, SSE_HEARTBEAT) => next,
                    _ = closing.wait_for(|closed| *closed) => return,
                    () = tx.closed() => return,
                };
                let frame = match next {
                    Ok(entries) if entries.is_empty() => ": heartbeat\n\n".to_owned(),
                    Ok(entries) => entries.iter().map(sse_message).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "audit stream: storage unavailable; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        ": storage unavailable; retrying\n\n".to_owned()
                    }
                };
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(SseBody(rx).boxed());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        Ok(response)
    }

    /// `POST /v1/redact`: the caller's readable secret values, and their
    /// encodings, replaced in `text` (the leak guard, `vault/redact.rs`).
    async fn redact<B>(&self, vault: &Vault, caller: &Caller, req: Request<B>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let body: RedactRequest = self.bodies.json(req).await?;
        let redaction = vault.redact(caller, &body.text).await?;
        self.metrics.redaction(&redaction, body.text.len());
        Ok(json_response(StatusCode::OK, &redaction))
    }

    async fn health(&self, vault: &Vault) -> Answer {
        let health = vault.health().await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "identity": health.identity,
                "tenant": health.tenant,
                "storage": health.storage,
            }),
        ))
    }
}

/// The bearer token of `Authorization: Bearer …` (the scheme in any case, as
/// RFC 9110 §11.1 has it); any other Authorization is refused, and so is more
/// than one, since a proxy and the sidecar might each pick a different one.
fn bearer<B>(req: &Request<B>) -> Result<Option<String>, VaultError> {
    let mut values = req.headers().get_all(hyper::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(VaultError::invalid(
            "Authorization",
            "more than one Authorization header",
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .map(|token| Some(token.to_owned()))
        .ok_or_else(|| VaultError::Unauthenticated("expected `Authorization: Bearer avt_…`".into()))
}

/// The refusal of a local caller that no role matched and that presented no
/// token, under `unmapped_callers: refuse`; recorded in the audit like any denial.
async fn refuse_unmapped(vault: &Vault, caller: &Caller) -> ApiError {
    let reason = format!(
        "uid {} is mapped to no role on this sidecar; present a bearer token, or ask the \
         operator for a --role rule (or --unmapped-callers agent)",
        caller.cred.uid
    );
    let event = AuditEvent::new(EventKind::Denied, caller)
        .refused(ErrorCode::PolicyDenied.as_str(), vec![reason.clone()]);
    vault.audit_event(event).await;
    ApiError::Unmapped(reason)
}

/// The most of a caller's input an error message repeats: messages name a
/// path, an id or a field, and a short prefix is enough to recognise it.
const MAX_ECHO: usize = 80;

/// An error's message, with anything the caller sent quoted between
/// backticks cut to [`MAX_ECHO`] characters.
fn excerpt_message(e: &VaultError) -> String {
    let message = e.to_string();
    let mut out = String::with_capacity(message.len().min(4 * MAX_ECHO));
    for (i, part) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 && part.chars().count() > MAX_ECHO {
            out.extend(part.chars().take(MAX_ECHO));
            out.push('…');
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The request's `Idempotency-Key`, validated.
fn idempotency_key<B>(req: &Request<B>) -> Result<Option<IdempotencyKey>, VaultError> {
    let mut keys = req.headers().get_all("idempotency-key").iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return match req.headers().contains_key("idempotency-key") {
            true => Err(VaultError::invalid(
                "Idempotency-Key",
                "sent more than once",
            )),
            false => Ok(None),
        };
    };
    let key = key
        .to_str()
        .map_err(|_| VaultError::invalid("Idempotency-Key", "not visible ASCII"))?;
    IdempotencyKey::parse(key).map(Some)
}

fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: a v4 UUID, hyphenated, lowercase; written straight
/// into its string (`to_string` goes through the formatting machinery, a
/// noticeable share of a cached read).
fn new_request_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Splits `/v1/<resource>[/<rest>]`; `rest` is a secret path for per-secret routes.
fn split_route(path: &str) -> Option<(&str, Option<&str>)> {
    let route = path.strip_prefix("/v1/")?;
    Some(match route.split_once('/') {
        Some((resource, rest)) => (resource, Some(rest)),
        None => (route, None),
    })
}

/// The operation label for metrics: a fixed set, never a path.
fn operation(method: &Method, path: &str) -> &'static str {
    match (split_route(path), method) {
        (Some(("health", None)), _) => "health",
        (Some(("openapi.json", None)), _) => "openapi",
        (Some(("secrets", None)), _) => "list",
        (Some(("batch", None)), _) => "batch",
        (Some(("import", None)), _) => "import",
        (Some(("versions", Some(_))), _) => "versions",
        (Some(("rollback", Some(_))), _) => "rollback",
        (Some(("rotate", Some(_))), _) => "rotate",
        (Some(("grants", _)), _) => "grant",
        (Some(("tokens", None)), _) => "token",
        (Some(("approvals", _)), _) => "approval",
        (Some(("audit", None)), _) => "audit",
        (Some(("audit", Some(_))), _) => "audit_stream",
        (Some(("vault", _)), _) => "compat",
        (Some(("redact", None)), _) => "redact",
        (Some(("secrets", Some(_))), m) => match *m {
            Method::GET => "get",
            Method::HEAD => "head",
            Method::PUT => "put",
            Method::PATCH => "update",
            Method::DELETE => "delete",
            _ => "other",
        },
        _ => "other",
    }
}

/// One audit event as an SSE message: `id:` is its stream id, `data:` its JSON
/// (one line: JSON strings escape their newlines).
fn sse_message(entry: &AuditEntry) -> String {
    match serde_json::to_string(entry) {
        Ok(data) => format!("id: {}\ndata: {data}\n\n", entry.id),
        Err(_) => String::new(),
    }
}

/// The body of an SSE stream: whatever the feeding task sends, until it stops.
struct SseBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Operations any local caller may use without a role or token, and that no
/// rate limit cuts off: they tell a client what it is talking to and hold no secrets.
fn is_public(op: &str) -> bool {
    matches!(op, "health" | "openapi")
}

/// `GET /v1/openapi.json`: the embedded document as it is in the repository.
fn openapi_response() -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response<ResponseBody> {
    json_response(status, &json!({ "error": ErrorBody { code, message } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_its_contract_status() {
        let table = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::Unauthenticated, 401),
            (ErrorCode::PolicyDenied, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::Expired, 410),
            (ErrorCode::TooLarge, 413),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::Internal, 500),
            (ErrorCode::IdempotencyKeyReused, 422),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    fn with_auth(values: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        for v in values {
            req.headers_mut().append(
                hyper::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_single() {
        for v in [
            "Bearer avt_x",
            "bearer avt_x",
            "BEARER  avt_x ",
            "bEaReR avt_x",
        ] {
            assert_eq!(
                bearer(&with_auth(&[v])).unwrap().as_deref(),
                Some("avt_x"),
                "{v}"
            );
        }
        assert_eq!(bearer(&with_auth(&[])).unwrap(), None);
        for v in ["Basic abc", "Bearer", "Bearer   ", "Bearerx avt_x", "avt_x"] {
            let err = bearer(&with_auth(&[v])).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Unauthenticated, "{v}");
        }
        let err = bearer(&with_auth(&["Bearer a", "Bearer b"])).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn messages_echo_only_a_short_prefix_of_input() {
        let long = "p".repeat(5000);
        let message = excerpt_message(&VaultError::NotFound(format!("no route for `{long}`")));
        assert!(message.starts_with("no route for `ppp"), "{message}");
        assert!(message.ends_with("…`"), "{message}");
        assert!(message.chars().count() < MAX_ECHO + 20, "{message}");
        let short = VaultError::NotFound("no secret at `a/b`".into());
        assert_eq!(excerpt_message(&short), "no secret at `a/b`");
    }

    #[test]
    fn fresh_request_ids_are_hyphenated_lowercase_v4_uuids() {
        let id = new_request_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id, parsed.hyphenated().to_string());
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn operations_are_a_fixed_set() {
        assert_eq!(operation(&Method::GET, "/v1/secrets/a/b"), "get");
        assert_eq!(operation(&Method::GET, "/v1/secrets"), "list");
        assert_eq!(operation(&Method::PATCH, "/v1/secrets/x"), "update");
        assert_eq!(operation(&Method::POST, "/v1/secrets/x"), "other");
        assert_eq!(operation(&Method::POST, "/v1/rotate/a/b"), "rotate");
        assert_eq!(operation(&Method::GET, "/nope/123"), "other");
        assert_eq!(operation(&Method::GET, "/v1/openapi.json"), "openapi");
        assert!(is_public("openapi") && is_public("health") && !is_public("get"));
    }
}
