//! A small HTTP/1.1 client for the sidecar's Unix socket, used by the CLI
//! commands, the tests and the benchmarks; and a gRPC channel over a Unix
//! socket for the Envoy socket's and the Workload API's clients.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sidecar at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the sidecar: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// An answer from the sidecar.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, or `Null` when it is empty or not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The contract error code, when the reply is an error.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }
}

/// One kept-alive connection; requests on it run one after another.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(socket: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.to_owned(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    pub async fn send(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        self.send_as(None, method, uri, body).await
    }

    /// Sends a request, presenting `token` as `Authorization: Bearer` when given.
    pub async fn send_as(
        &mut self,
        token: Option<&str>,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        self.send_with(token, method, uri, body, &[]).await
    }

    /// [`Self::send_as`] with extra request headers.
    pub async fn send_with(
        &mut self,
        token: Option<&str>,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, "agentvault");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: String,
}

/// A response whose body is read as it arrives (an SSE stream).
pub struct Streaming {
    pub status: u16,
    pub headers: HeaderMap,
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl Streaming {
    /// The next message with data; comments and bare fields are skipped.
    /// `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(end) = find_blank_line(&self.pending) {
                let block: Vec<u8> = self.pending.drain(..end.1).collect();
                if let Some(event) = parse_sse_block(&block[..end.0]) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                None => return Ok(None),
            }
        }
    }

    /// The rest of the body as a plain reply (for an error answer).
    pub async fn into_reply(self) -> Result<Reply, ClientError> {
        let mut body = self.pending;
        body.extend_from_slice(&self.body.collect().await?.to_bytes());
        Ok(Reply {
            status: self.status,
            headers: self.headers,
            body: Bytes::from(body),
        })
    }
}

/// Where the first message ends: (end of its text, end of its blank line).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Parses one SSE message block; `None` when it carries no data.
pub fn parse_sse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut id = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    data.map(|data| SseEvent { id, data })
}

/// How many times [`Client::write`] sends one write at most.
pub const WRITE_ATTEMPTS: u32 = 3;

/// Opens a connection per request: the simple choice for a CLI.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            token: None,
        }
    }

    /// The same client, presenting a bearer token on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        Connection::open(&self.socket)
            .await?
            .send_as(self.token.as_deref(), method, uri, body)
            .await
    }

    /// [`Self::request`] with extra request headers.
    pub async fn request_with(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        Connection::open(&self.socket)
            .await?
            .send_with(self.token.as_deref(), method, uri, body, headers)
            .await
    }

    /// Sends a write under one new `Idempotency-Key` and, when the sidecar
    /// answers 503 or the connection fails, sends it again under the same key
    /// (up to [`WRITE_ATTEMPTS`] times in all, backing off): for the writes
    /// the sidecar deduplicates ([`deduplicated`]) a retry then never writes
    /// twice. Other writes (grants, tokens, approvals) are sent once, with a key.
    pub async fn write(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let key = uuid::Uuid::new_v4().to_string();
        let headers = [("idempotency-key", key.as_str())];
        let retryable = deduplicated(&method, uri);
        let mut backoff = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let sent = self
                .request_with(method.clone(), uri, body.clone(), &headers)
                .await;
            let again = match &sent {
                Ok(reply) => reply.status == 503,
                Err(ClientError::Connect { .. }) => false,
                Err(_) => true,
            };
            if !retryable || !again || attempt == WRITE_ATTEMPTS {
                return sent;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 3;
            attempt += 1;
        }
    }

    /// Sends a GET and hands back the response before its body is read, for
    /// streams; `headers` are extra request headers (e.g. `Last-Event-ID`).
    pub async fn stream(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<Streaming, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, "agentvault")
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = sender
            .send_request(builder.body(Full::new(Bytes::new()))?)
            .await?;
        Ok(Streaming {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.into_body(),
            pending: Vec::new(),
        })
    }

    pub async fn get(&self, uri: &str) -> Result<Reply, ClientError> {
        self.request(Method::GET, uri, None).await
    }

    pub async fn send_json(
        &self,
        method: Method,
        uri: &str,
        body: &serde_json::Value,
    ) -> Result<Reply, ClientError> {
        self.request(method, uri, Some(body.to_string().into_bytes()))
            .await
    }
}

/// A gRPC (HTTP/2) channel to a Unix socket; every connection it makes
/// goes to `socket`.
pub async fn grpc_channel(
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

/// Whether the sidecar answers this write at most once per
/// `Idempotency-Key` (README, "Safe retries"), so that it is safe to send
/// again under the same key.
fn deduplicated(method: &Method, uri: &str) -> bool {
    let path = uri.split('?').next().unwrap_or(uri);
    match *method {
        Method::PUT | Method::PATCH | Method::DELETE => path.starts_with("/v1/secrets/"),
        Method::POST => {
            path.starts_with("/v1/rollback/")
                || path.starts_with("/v1/rotate/")
                || path == "/v1/import"
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writes_the_sidecar_deduplicates_are_the_ones_retried() {
        for (method, uri) in [
            (Method::PUT, "/v1/secrets/a/b"),
            (Method::PATCH, "/v1/secrets/a/b"),
            (Method::DELETE, "/v1/secrets/a/b"),
            (Method::POST, "/v1/rollback/a/b"),
            (Method::POST, "/v1/rotate/a/b"),
            (Method::POST, "/v1/import"),
        ] {
            assert!(deduplicated(&method, uri), "{method} {uri}");
        }
        for (method, uri) in [
            (Method::POST, "/v1/grants"),
            (Method::DELETE, "/v1/grants/g1"),
            (Method::POST, "/v1/tokens"),
            (Method::POST, "/v1/approvals/a1/approve"),
            (Method::POST, "/v1/secrets/a/b"),
        ] {
            assert!(!deduplicated(&method, uri), "{method} {uri}");
        }
    }

    #[test]
    fn sse_blocks_parse_and_comments_are_skipped() {
        assert_eq!(parse_sse_block(b": heartbeat"), None);
        assert_eq!(parse_sse_block(b"retry: 1000"), None);
        assert_eq!(
            parse_sse_block(b"id: 1-0\ndata: {\"a\":1}"),
            Some(SseEvent {
                id: Some("1-0".into()),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            parse_sse_block(b"data: a\ndata: b").map(|e| e.data),
            Some("a\nb".into())
        );
        assert_eq!(find_blank_line(b"x\n\ny"), Some((1, 3)));
        assert_eq!(find_blank_line(b"x\r\n\r\ny"), Some((1, 5)));
        assert_eq!(find_blank_line(b"x\n"), None);
    }
}
