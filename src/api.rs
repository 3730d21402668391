//! The HTTP/1.1 front end of the contract (`api.md`): routing, JSON bodies, and
//! the single mapping from domain error codes to HTTP statuses.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::AuditEntry;
use crate::identity::{Caller, Peer};
use crate::metrics::Metrics;
use crate::model::ApprovalStatus;
use crate::ratelimit::{RateLimiter, RateSettings};
use crate::vault::{
    current_vault, ErrorCode, ImportRequest, MetadataUpdate, PutRequest, SecretValue, TokenRequest,
    Vault, VaultError, VaultWatch,
};

/// A whole body, or the open-ended body of an SSE stream.
pub type ResponseBody = BoxBody<Bytes, Infallible>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default limit on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

const REQUEST_ID: &str = "x-request-id";
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
    }
}

/// A failed request: a domain error, or a method the route does not serve.
enum ApiError {
    Vault(VaultError),
    MethodNotAllowed(&'static str),
    /// The caller is over its rate; it may try again after this long.
    RateLimited(Duration),
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        Self::Vault(e)
    }
}

type Answer = Result<Response<ResponseBody>, ApiError>;

/// Serves the contract for one vault.
pub struct Api {
    vault: VaultWatch,
    metrics: Arc<Metrics>,
    max_body_bytes: usize,
    rates: RateLimiter,
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

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl ErrorBody<'static> {
    fn of(e: &VaultError) -> Self {
        Self {
            code: e.code().as_str(),
            message: e.to_string(),
        }
    }
}

impl Api {
    pub fn new(
        vault: VaultWatch,
        metrics: Arc<Metrics>,
        max_body_bytes: usize,
        rates: RateSettings,
    ) -> Self {
        Self {
            vault,
            metrics,
            max_body_bytes,
            rates: RateLimiter::new(rates),
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
                let caller =
                    Caller::new(vault.workload(), peer, bearer).with_request_id(&request_id);
                match self.rates.check(&caller.spiffe_id) {
                    Err(wait) if op != "health" => Err(ApiError::RateLimited(wait)),
                    _ => self.route(&vault, &caller, req).await,
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
                    error_response(status_of(code), code.as_str(), e.to_string()),
                    code.as_str(),
                )
            }
        };
        if is_head {
            *response.body_mut() = full(Bytes::new());
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

    async fn route<B>(&self, vault: &Vault, caller: &Caller, req: Request<B>) -> Answer
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
                let body: BatchRequest = self.json_body(req).await?;
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
                let body: ImportRequest = self.json_body(req).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.import(caller, body).await?,
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
                let body: RollbackRequest = self.json_body(req).await?;
                let written = vault.rollback(caller, secret, body.version).await?;
                Ok(json_response(StatusCode::OK, &written))
            }
            Some(("rotate", Some(secret))) => {
                post("POST")?;
                let body: RotateRequest = self.json_body(req).await?;
                let grace = body.grace_period_seconds.map(Duration::from_secs);
                let rotated = vault.rotate(caller, secret, body.value, grace).await?;
                Ok(json_response(StatusCode::OK, &rotated))
            }
            Some(("grants", None)) => match method {
                Method::POST => {
                    let body: GrantRequest = self.json_body(req).await?;
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
                let body: TokenRequest = self.json_body(req).await?;
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
            Method::GET => {
                let version = query.number::<u64>("version")?;
                if version == Some(0) {
                    return Err(VaultError::invalid("version", "versions start at 1").into());
                }
                let secret = vault.get(caller, path, version).await?;
                Ok(json_response(StatusCode::OK, &secret))
            }
            Method::HEAD => match vault.exists(caller, path).await? {
                true => Ok(empty_response(StatusCode::OK)),
                false => Err(VaultError::NotFound(format!("no secret at `{path}`")).into()),
            },
            Method::PUT => {
                let body: PutRequest = self.json_body(req).await?;
                let written = vault.put(caller, path, body).await?;
                Ok(json_response(StatusCode::OK, &written))
            }
            Method::PATCH => {
                let update: MetadataUpdate = self.json_body(req).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &vault.update(caller, path, update).await?,
                ))
            }
            Method::DELETE => {
                vault.delete(caller, path).await?;
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
    async fn audit_stream(&self, vault: &Vault, caller: &Caller, last: Option<&str>) -> Answer {
        let mut follow = vault.audit_follow(caller, last).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let hello = format!(": audit events after {}\nretry: 1000\n\n", follow.cursor());
            if tx.send(Bytes::from(hello)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    next = follow.next(SSE_HEARTBEAT) => next,
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

    async fn health(&self, vault: &Vault) -> Answer {
        let health = vault.health().await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "identity": health.identity,
                "storage": health.storage,
            }),
        ))
    }

    /// Reads the body within the size limit and decodes it, naming the
    /// offending field on failure without echoing any value.
    async fn json_body<T: DeserializeOwned, B>(&self, req: Request<B>) -> Result<T, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let too_large = || VaultError::TooLarge {
            what: "body".into(),
            limit: self.max_body_bytes,
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes) {
            return Err(too_large().into());
        }
        let bytes = Limited::new(req.into_body(), self.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    VaultError::invalid("body", "could not read the request body")
                }
            })?
            .to_bytes();
        Ok(decode_json(&bytes)?)
    }
}

/// Decodes JSON strictly (unknown fields and trailing data are errors). The
/// message names the field; serde's own text is cut where it would quote input.
fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, VaultError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = match e.path().to_string() {
            unknown if unknown == "." || unknown.contains('?') => "body".to_owned(),
            path => path,
        };
        VaultError::invalid(&field, sanitize_serde_message(&e.inner().to_string()))
    })?;
    de.end()
        .map_err(|e| VaultError::invalid("body", sanitize_serde_message(&e.to_string())))?;
    Ok(value)
}

fn sanitize_serde_message(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    if message.starts_with("invalid type")
        || message.starts_with("invalid value")
        || message.starts_with("invalid length")
    {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("expected {expected}"),
            None => "invalid value".to_owned(),
        }
    } else {
        message.to_owned()
    }
}

/// The bearer token of `Authorization: Bearer …`; any other Authorization is refused.
fn bearer<B>(req: &Request<B>) -> Result<Option<String>, VaultError> {
    let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Some(t.trim().to_owned()))
        .ok_or_else(|| VaultError::Unauthenticated("expected `Authorization: Bearer avt_…`".into()))
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
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
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

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, VaultError> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| VaultError::invalid(name, "must be a non-negative integer"))
            })
            .transpose()
    }
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
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

fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response<ResponseBody> {
    json_response(status, &json!({ "error": ErrorBody { code, message } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field_and_hide_values() {
        let err = decode_json::<PutRequest>(br#"{"value": 1234567}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "value"),
            "{err}"
        );
        assert!(!err.to_string().contains("1234567"), "{err}");

        let err = decode_json::<PutRequest>(br#"{"value": "x", "cas": "sk-secret"}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "cas"),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-secret"), "{err}");

        let err = decode_json::<PutRequest>(br#"{"value": "x", "tier": "gold"}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "tier"),
            "{err}"
        );

        let err = decode_json::<PutRequest>(br#"{"value": "x", "valeu": 1}"#).unwrap_err();
        assert!(err.to_string().contains("valeu"), "{err}");

        let err = decode_json::<PutRequest>(br#"{"value": "x"} trailing"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "body"),
            "{err}"
        );
    }

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
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn operations_are_a_fixed_set() {
        assert_eq!(operation(&Method::GET, "/v1/secrets/a/b"), "get");
        assert_eq!(operation(&Method::GET, "/v1/secrets"), "list");
        assert_eq!(operation(&Method::PATCH, "/v1/secrets/x"), "update");
        assert_eq!(operation(&Method::POST, "/v1/secrets/x"), "other");
        assert_eq!(operation(&Method::POST, "/v1/rotate/a/b"), "rotate");
        assert_eq!(operation(&Method::GET, "/nope/123"), "other");
    }
}
