//! Refuses request smuggling at the socket: a request whose head carries both
//! `Content-Length` and `Transfer-Encoding` is answered `400 invalid_request`
//! and its connection closed (RFC 9112 §6.1 lets a server reject it, and the
//! contract wants a refusal rather than a guess).
//!
//! Why an IO wrapper: hyper 1 frames such a request by `Transfer-Encoding`,
//! drops the `Content-Length` header before the service sees the request and
//! offers no option to refuse it, so no handler can tell. [`Framed`] sits
//! between the accepted stream and hyper and follows the byte stream exactly
//! as hyper's HTTP/1.1 parser does: it parses each request head with the same
//! `httparse`, then skips the body by its framing (a `Content-Length` count,
//! or chunked framing followed byte for byte as hyper's decoder does), so a
//! body that merely contains such header text is never taken for a head.
//!
//! A head is handed to hyper only once it is complete and accepted; the bytes
//! before a refused head (earlier pipelined requests) are served normally.
//! Then [`Framed`] stops reading and rings [`Framed::refusals`]; the server
//! shuts the connection down gracefully (in-flight answers finish first), and
//! the 400 is written as the connection's last bytes, when hyper shuts the
//! stream down. Anything this guard cannot follow (a head or chunk framing
//! hyper rejects itself, with its own 400 and a close) is passed through
//! untouched from there on.
//!
//! The same guard times request heads for the header timeout
//! ([`HeadClock`]): the clock starts when a head arrives split over reads and
//! stops when it is complete, and the server cuts a connection whose head has
//! been pending too long (slowloris). A head that arrives in one read, the
//! usual case, is never timed, so a request costs no clock read and no timer.
//!
//! Cost on the hot path: one `httparse` pass over each request head (no copy
//! of the head unless it arrives split over several reads) and a counter per
//! body read.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// hyper's default limit on request headers; a head with more is refused by
/// hyper itself, so the guard stops following such a connection.
const MAX_HEADERS: usize = 100;
/// hyper's default read buffer limit (8 KiB + 100 × 4 KiB): a head not
/// complete within this many bytes is refused by hyper itself (431).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// How much one read of a split head asks for.
const HELD_READ: usize = 8192;

/// The answer to a refused request: the contract's error shape, and a close.
const REFUSAL_BODY: &str = r#"{"error":{"code":"invalid_request","message":"Content-Length and Transfer-Encoding in one request are refused (request smuggling); send only one"}}"#;

fn refusal_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\
         x-request-id: {}\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        uuid::Uuid::new_v4(),
        REFUSAL_BODY.len()
    )
    .into_bytes()
}

/// Where the byte stream is, as hyper's parser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or inside) a request head.
    Head,
    /// Inside a body of known length: this many bytes to go.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// A request hyper refuses by itself (and then closes): not followed.
    Off,
}

/// hyper's chunked decoder states (`proto/h1/decode.rs`), with the chunk's
/// size where it is being read or skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What [`Scanner::scan`] found in a run of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every byte may go to hyper.
    Pass,
    /// The first `n` may; the rest begins a head that is not complete yet.
    Partial(usize),
    /// The first `n` may; the head after them carries both framings.
    Refuse(usize),
}

/// What one request head says about what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Partial,
    /// Complete: its length, and the state after it.
    Complete(usize, State),
    Refuse,
}

/// Follows request framing over the byte stream of one connection.
#[derive(Debug)]
struct Scanner {
    state: State,
}

impl Scanner {
    fn new() -> Self {
        Self { state: State::Head }
    }

    /// Consumes `bytes` (the stream's next bytes; in [`State::Head`] they
    /// start at a head) and says how many of them hyper may have.
    fn scan(&mut self, bytes: &[u8]) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Off => return Verdict::Pass,
                State::Body(left) => {
                    let n = left.min((bytes.len() - at) as u64);
                    at += n as usize;
                    self.state = match left - n {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunked(chunk, &bytes[at..]);
                    at += used;
                    self.state = next;
                }
                State::Head => match head(&bytes[at..]) {
                    Head::Partial => return Verdict::Partial(at),
                    Head::Refuse => return Verdict::Refuse(at),
                    Head::Complete(len, next) => {
                        at += len;
                        self.state = next;
                    }
                },
            }
        }
        Verdict::Pass
    }
}

/// Parses one request head as hyper does; only a complete one is judged.
fn head(bytes: &[u8]) -> Head {
    let mut headers: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => return Head::Partial,
        // hyper refuses these itself (400 or 431) and closes the connection.
        Ok(httparse::Status::Partial) | Err(_) => return Head::Complete(bytes.len(), State::Off),
    };
    let mut length: Option<Option<u64>> = None;
    let mut chunked: Option<bool> = None;
    for header in req.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(is_chunked(header.value));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = digits(header.value);
            length = Some(match length {
                None => value,
                Some(seen) if seen == value => value,
                // Differing lengths: hyper refuses the request.
                Some(_) => None,
            });
        }
    }
    let next = match (chunked, length) {
        (Some(_), Some(_)) => return Head::Refuse,
        (Some(true), None) if req.version == Some(1) => State::Chunked(Chunk::Start),
        // Not chunked last, or HTTP/1.0: hyper refuses the request.
        (Some(_), None) => State::Off,
        (None, Some(Some(0))) | (None, None) => State::Head,
        (None, Some(Some(n))) => State::Body(n),
        (None, Some(None)) => State::Off,
    };
    Head::Complete(len, next)
}

/// hyper's test: the last coding of a `Transfer-Encoding` value is `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..0x7f).contains(&b)))
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// A `Content-Length` as hyper reads it: decimal digits only, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Follows chunked framing over `bytes`; returns how many were used and the
/// state after them. Anything hyper's decoder rejects turns following off.
fn chunked(mut chunk: Chunk, bytes: &[u8]) -> (usize, State) {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    };
    let grow = |size: u64, digit: u64| size.checked_mul(16)?.checked_add(digit);
    let mut at = 0;
    while at < bytes.len() {
        if let Chunk::Data(left) = chunk {
            let n = left.min((bytes.len() - at) as u64);
            at += n as usize;
            chunk = match left - n {
                0 => Chunk::DataCr,
                left => Chunk::Data(left),
            };
            continue;
        }
        let b = bytes[at];
        at += 1;
        let next = match (chunk, b) {
            (Chunk::Start, b) => hex(b).map(Chunk::Size),
            (Chunk::Size(size), b) => match (hex(b), b) {
                (Some(d), _) => grow(size, d).map(Chunk::Size),
                (None, b'\t' | b' ') => Some(Chunk::SizeLws(size)),
                (None, b';') => Some(Chunk::Extension(size)),
                (None, b'\r') => Some(Chunk::SizeLf(size)),
                _ => None,
            },
            (Chunk::SizeLws(size), b'\t' | b' ') => Some(Chunk::SizeLws(size)),
            (Chunk::SizeLws(size), b';') => Some(Chunk::Extension(size)),
            (Chunk::SizeLws(size), b'\r') => Some(Chunk::SizeLf(size)),
            (Chunk::Extension(size), b'\r') => Some(Chunk::SizeLf(size)),
            (Chunk::Extension(_), b'\n') => None,
            (Chunk::Extension(size), _) => Some(Chunk::Extension(size)),
            (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
            (Chunk::SizeLf(size), b'\n') => Some(Chunk::Data(size)),
            (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
            (Chunk::DataLf, b'\n') => Some(Chunk::Start),
            (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
            (Chunk::Trailer, _) => Some(Chunk::Trailer),
            (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
            (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
            (Chunk::EndCr, _) => Some(Chunk::Trailer),
            // The body's end: the next byte starts a head.
            (Chunk::EndLf, b'\n') => return (at, State::Head),
            _ => None,
        };
        match next {
            Some(next) => chunk = next,
            None => return (at, State::Off),
        }
    }
    (at, State::Chunked(chunk))
}

/// When the request head being read began, if it is incomplete: what the
/// header timeout measures. Trickling more bytes of the same head does not
/// restart it; a connection waiting for its next request has no head
/// pending (the idle timeout covers that wait).
#[derive(Debug)]
pub struct HeadClock {
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one, when the pending head began; 0: none.
    begun: AtomicU64,
}

impl HeadClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            begun: AtomicU64::new(0),
        }
    }

    fn begin(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.begun.store(now + 1, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.begun.store(0, Ordering::Relaxed);
    }

    fn pending_for(&self) -> Option<Duration> {
        match self.begun.load(Ordering::Relaxed) {
            0 => None,
            begun => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(begun - 1)),
            ),
        }
    }

    /// Resolves once a head has been pending for `timeout`; a timer runs
    /// only while a head is pending.
    ///
    /// A head begins only inside a read of the [`Framed`] stream, so this
    /// must be polled by the task that polls the connection, after it (a
    /// `biased` select with the connection first): while no head is
    /// pending it waits without a waker of its own, and is polled again
    /// whenever the connection's reads wake the task.
    pub async fn overdue(&self, timeout: Duration) {
        loop {
            match self.pending_for() {
                Some(pending) if pending >= timeout => return,
                Some(pending) => tokio::time::sleep(timeout - pending).await,
                None => {
                    std::future::poll_fn(|_| match self.pending_for() {
                        Some(_) => Poll::Ready(()),
                        None => Poll::Pending,
                    })
                    .await
                }
            }
        }
    }
}

/// The accepted stream, as hyper reads and writes it, with request framing
/// checked on the way in (see the module's documentation).
pub struct Framed<S> {
    inner: S,
    scanner: Scanner,
    /// Bytes read but not yet handed on: the first `ready` are accepted, the
    /// rest begin a head that is not complete yet.
    held: Vec<u8>,
    ready: usize,
    /// Set once a request was refused: nothing more is read.
    refused: bool,
    /// The 400 still to write, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    refusals: Arc<Notify>,
    head: Arc<HeadClock>,
}

impl<S> Framed<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            scanner: Scanner::new(),
            held: Vec::new(),
            ready: 0,
            refused: false,
            answer: None,
            refusals: Arc::new(Notify::new()),
            head: Arc::new(HeadClock::new()),
        }
    }

    /// Times the head being read, for the server's header timeout.
    pub fn head_clock(&self) -> Arc<HeadClock> {
        self.head.clone()
    }

    /// Notified once when a request is refused; the server then shuts the
    /// connection down gracefully so the 400 goes out after earlier answers.
    pub fn refusals(&self) -> Arc<Notify> {
        self.refusals.clone()
    }

    fn refuse(&mut self, accepted: usize) {
        self.held.truncate(accepted);
        self.refused = true;
        self.answer = Some((refusal_response(), 0));
        tracing::info!(
            "request refused: Content-Length and Transfer-Encoding together (request smuggling)"
        );
    }

    /// Applies a verdict on `held` (which starts at a head pending since the
    /// clock began).
    fn judge_held(&mut self) {
        match self.scanner.scan(&self.held) {
            Verdict::Pass => {
                self.ready = self.held.len();
                self.head.finish();
            }
            // The same head, still incomplete: its clock runs on.
            Verdict::Partial(0) => self.ready = 0,
            // Complete, and the next one begun.
            Verdict::Partial(n) => {
                self.ready = n;
                self.head.begin();
            }
            Verdict::Refuse(n) => {
                self.ready = n;
                self.refuse(n);
                self.head.finish();
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.refused {
                // Everything before the refused head is with hyper: close.
                this.refusals.notify_one();
                return Poll::Pending;
            }
            if this.held.is_empty() {
                // The hot path: read straight into hyper's buffer, hand on
                // what is judged, keep a split head's start back.
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let filled = buf.filled().len();
                if filled == before {
                    return Poll::Ready(Ok(()));
                }
                let accepted = match this.scanner.scan(&buf.filled()[before..]) {
                    Verdict::Pass => return Poll::Ready(Ok(())),
                    Verdict::Partial(n) => {
                        this.held
                            .extend_from_slice(&buf.filled()[before + n..filled]);
                        this.head.begin();
                        n
                    }
                    Verdict::Refuse(n) => {
                        this.refuse(0);
                        n
                    }
                };
                buf.set_filled(before + accepted);
                if accepted > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // A head split over reads: read its rest, then judge it whole.
            let old = this.held.len();
            this.held.resize(old + HELD_READ, 0);
            let mut more = ReadBuf::new(&mut this.held[old..]);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut more);
            let got = more.filled().len();
            this.held.truncate(old + got);
            std::task::ready!(read)?;
            if got == 0 {
                // The client stopped mid-head: hyper sees what it sent, then the end.
                this.scanner.state = State::Off;
                this.head.finish();
                this.ready = this.held.len();
                continue;
            }
            if could_end_head(&this.held[old.saturating_sub(3)..]) || this.held.len() >= MAX_HEAD {
                this.judge_held();
            }
        }
    }
}

/// Whether these bytes hold a head's last line break (`\n\n` or `\n\r\n`,
/// as httparse accepts both); a head cannot be complete before one arrives.
fn could_end_head(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && bytes.get(i + 2) == Some(&b'\n')))
    })
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper shuts the stream down once the connection is done: after a
    /// refusal, the 400 goes out first, as the connection's last answer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((answer, written)) = &mut this.answer {
            while *written < answer.len() {
                let n = std::task::ready!(
                    Pin::new(&mut this.inner).poll_write(cx, &answer[*written..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.answer = None;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GET: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n";

    fn scan_all(bytes: &[u8]) -> (Verdict, State) {
        let mut scanner = Scanner::new();
        let verdict = scanner.scan(bytes);
        (verdict, scanner.state)
    }

    #[test]
    fn plain_requests_pass_whole_and_end_at_a_head() {
        assert_eq!(scan_all(GET), (Verdict::Pass, State::Head));
        let put = b"PUT /v1/secrets/a HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"value\":\"x\"}";
        assert_eq!(scan_all(put), (Verdict::Pass, State::Head));
        let chunked = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(scan_all(chunked), (Verdict::Pass, State::Head));
    }

    #[test]
    fn both_framings_are_refused_in_either_order_and_after_pipelined_requests() {
        let cl_te =
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let te_cl =
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(scan_all(cl_te).0, Verdict::Refuse(0));
        assert_eq!(scan_all(te_cl).0, Verdict::Refuse(0));
        let identity =
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: identity\r\n\r\n";
        assert_eq!(scan_all(identity).0, Verdict::Refuse(0));
        let mut pipelined = GET.to_vec();
        pipelined.extend_from_slice(cl_te);
        assert_eq!(scan_all(&pipelined).0, Verdict::Refuse(GET.len()));
    }

    #[test]
    fn header_text_inside_bodies_is_not_a_head() {
        let json = br#"{"value":"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"}"#;
        let mut req = format!(
            "PUT /v1/secrets/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            json.len()
        )
        .into_bytes();
        req.extend_from_slice(json);
        assert_eq!(scan_all(&req), (Verdict::Pass, State::Head));
        // The same inside a chunk, split at every byte.
        let mut chunked = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x}\r\n", json.len()).as_bytes());
        chunked.extend_from_slice(json);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut scanner = Scanner::new();
        let head_len = chunked.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(scanner.scan(&chunked[..head_len]), Verdict::Pass);
        for byte in &chunked[head_len..] {
            assert_eq!(scanner.scan(std::slice::from_ref(byte)), Verdict::Pass);
        }
        assert_eq!(scanner.state, State::Head);
    }

    #[test]
    fn split_heads_wait_and_what_hyper_rejects_is_not_followed() {
        assert_eq!(scan_all(&GET[..10]).0, Verdict::Partial(0));
        let mut two = GET.to_vec();
        two.extend_from_slice(&GET[..10]);
        assert_eq!(scan_all(&two).0, Verdict::Partial(GET.len()));
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(scan_all(bad), (Verdict::Pass, State::Off), "{bad:?}");
        }
        assert!(could_end_head(b"a\r\n\r\n") && could_end_head(b"\n\n"));
        assert!(!could_end_head(b"a\r\nb\r\n"));
    }

    /// Drives a [`Framed`] over an in-memory pipe as hyper would: reads what
    /// it hands on, and shuts it down at the end.
    async fn through(input: &[u8], chunks: usize) -> (Vec<u8>, Vec<u8>, bool) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut framed = Framed::new(server);
        let refusals = framed.refusals();
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let step = input.len().div_ceil(chunks.max(1)).max(1);
        for part in input.chunks(step) {
            client_write.write_all(part).await.unwrap();
        }
        client_write.shutdown().await.unwrap();
        let mut handed = Vec::new();
        let mut buf = [0u8; 64];
        let refused = loop {
            tokio::select! {
                read = framed.read(&mut buf) => match read.unwrap() {
                    0 => break false,
                    n => handed.extend_from_slice(&buf[..n]),
                },
                () = refusals.notified() => break true,
            }
        };
        framed.shutdown().await.unwrap();
        drop(framed);
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.unwrap();
        (handed, answer, refused)
    }

    #[tokio::test]
    async fn a_refused_request_is_answered_400_after_the_requests_before_it() {
        let bad =
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for chunks in [1, 3, 50] {
            let mut input = GET.to_vec();
            input.extend_from_slice(bad);
            let (handed, answer, refused) = through(&input, chunks).await;
            assert!(refused, "{chunks}");
            assert_eq!(handed, GET, "{chunks}");
            let answer = String::from_utf8(answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
            assert!(answer.contains("\"invalid_request\""), "{answer}");
        }
        let (handed, answer, refused) = through(GET, 7).await;
        assert!(!refused);
        assert_eq!(handed, GET);
        assert!(answer.is_empty());
    }
}
