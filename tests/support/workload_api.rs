//! A real SPIFFE Workload API for tests: a tonic gRPC server on a Unix socket
//! that hands out X.509-SVIDs from a test CA and pushes every rotation to the
//! open FetchX509SVID streams, as a SPIRE agent does.
//!
//! Each server runs on its own thread with its own tokio runtime. So it works
//! the same when started from a `#[tokio::test]` body (any flavor) and from a
//! plain thread (e.g. beside an `agentvault serve` child process), and
//! stopping it drops every open connection at once, like an agent that died.
#![allow(dead_code)]

use std::convert::Infallible;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::codegen::{http, BoxFuture, BoxStream, Service};
use tonic::server::ServerStreamingService;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// The metadata header every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

/// The X.509 messages of the SPIFFE Workload API (`workload.proto`, which has
/// no package), with the spec's field numbers so they are wire-compatible.
pub mod pb {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509Svid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        /// DER certificates, leaf first, concatenated.
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        /// PKCS#8 DER.
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        /// DER CA certificates of the trust domain, concatenated.
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        #[prost(string, tag = "5")]
        pub hint: String,
    }
}

fn unix_time(offset_secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(chrono::Utc::now().timestamp() + offset_secs)
        .expect("a time in range")
}

/// A trust domain's CA. Clones share it.
#[derive(Clone)]
pub struct TestCa(Arc<CaInner>);

struct CaInner {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "agentvault test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .expect("trust domain URI"),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = unix_time(-3600);
        params.not_after = unix_time(365 * 24 * 3600);
        let der = params
            .self_signed(&key)
            .expect("CA certificate")
            .der()
            .to_vec();
        Self(Arc::new(CaInner {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            der,
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    /// The CA certificate, DER: the trust bundle.
    pub fn bundle_der(&self) -> Vec<u8> {
        self.0.der.clone()
    }

    /// A fresh leaf for `spiffe_id` (new key, random serial), valid for `ttl`:
    /// `(cert_chain_der, pkcs8_key_der)`, the chain being just the leaf.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> (Vec<Vec<u8>>, Vec<u8>) {
        let issued = self.issue_svid(spiffe_id, ttl);
        (issued.cert_chain_der, issued.key_der)
    }

    fn issue_svid(&self, spiffe_id: &str, ttl: Duration) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut serial: [u8; 16] = rand::random();
        serial[0] = serial[0].clamp(1, 0x7f);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().expect("SPIFFE ID as a URI"),
        )];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = unix_time(-60);
        params.not_after = unix_time(ttl.as_secs() as i64);
        let leaf = params
            .signed_by(&key, &self.0.issuer)
            .expect("leaf certificate");
        Issued {
            serial: hex(&serial),
            cert_chain_der: vec![leaf.der().to_vec()],
            key_der: key.serialize_der(),
        }
    }
}

/// Lowercase hex without separators, as the tests compare serials.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the server currently hands out.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Of the leaf, in [`hex`].
    pub serial: String,
    pub cert_chain_der: Vec<Vec<u8>>,
    pub key_der: Vec<u8>,
}

impl Issued {
    pub fn leaf_der(&self) -> &[u8] {
        &self.cert_chain_der[0]
    }
}

struct Shared {
    ca: TestCa,
    spiffe_id: String,
    ttl: Duration,
    current: watch::Sender<Issued>,
    fetch_calls: AtomicUsize,
}

/// A running Workload API. Dropping it stops it.
pub struct WorkloadApi {
    socket: PathBuf,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl WorkloadApi {
    /// Serves at `dir/workload.sock`; listening when this returns.
    pub fn start(dir: &Path, ca: &TestCa, spiffe_id: &str, ttl: Duration) -> Self {
        Self::start_at(&dir.join("workload.sock"), ca, spiffe_id, ttl)
    }

    /// Serves at `socket` (replacing a stale socket file there); listening
    /// when this returns.
    pub fn start_at(socket: &Path, ca: &TestCa, spiffe_id: &str, ttl: Duration) -> Self {
        let listener = bind(socket);
        Self::launch(socket, ca, spiffe_id, ttl, Ok(listener))
    }

    /// Returns at once and starts listening at `socket` only after `delay`,
    /// for clients that must cope with an agent that is not up yet.
    pub fn start_after(
        socket: &Path,
        delay: Duration,
        ca: &TestCa,
        spiffe_id: &str,
        ttl: Duration,
    ) -> Self {
        Self::launch(socket, ca, spiffe_id, ttl, Err(delay))
    }

    fn launch(
        socket: &Path,
        ca: &TestCa,
        spiffe_id: &str,
        ttl: Duration,
        listener: Result<UnixListener, Duration>,
    ) -> Self {
        let (current, _) = watch::channel(ca.issue_svid(spiffe_id, ttl));
        let shared = Arc::new(Shared {
            ca: ca.clone(),
            spiffe_id: spiffe_id.to_owned(),
            ttl,
            current,
            fetch_calls: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let socket = socket.to_owned();
            let shared = shared.clone();
            thread::Builder::new()
                .name("workload-api".into())
                .spawn(move || serve(socket, listener, shared, stopped))
                .expect("workload API thread")
        };
        Self {
            socket: socket.to_owned(),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `unix:///…`, as in `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn current(&self) -> Issued {
        self.shared.current.borrow().clone()
    }

    /// Issues a new leaf for the same SPIFFE ID, pushes it to every open
    /// stream, and returns its serial ([`hex`]).
    pub fn rotate(&self) -> String {
        let issued = self
            .shared
            .ca
            .issue_svid(&self.shared.spiffe_id, self.shared.ttl);
        let serial = issued.serial.clone();
        self.shared.current.send_replace(issued);
        serial
    }

    /// How many FetchX509SVID calls were accepted (the header was present).
    pub fn fetch_calls(&self) -> usize {
        self.shared.fetch_calls.load(Ordering::SeqCst)
    }

    /// Stops serving: closes the listener and every open connection, and
    /// removes the socket file. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !thread::panicking() {
                panic!("the workload API server thread panicked");
            }
        }
    }
}

impl Drop for WorkloadApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(socket: &Path) -> UnixListener {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .unwrap_or_else(|e| panic!("bind the workload API at {}: {e}", socket.display()));
    listener.set_nonblocking(true).expect("non-blocking socket");
    listener
}

fn serve(
    socket: PathBuf,
    listener: Result<UnixListener, Duration>,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("workload API runtime");
    runtime.block_on(async {
        let listener = match listener {
            Ok(listener) => listener,
            Err(delay) => tokio::select! {
                () = tokio::time::sleep(delay) => bind(&socket),
                _ = &mut stopped => return,
            },
        };
        let listener = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
        let server = tonic::transport::Server::builder()
            .serve_with_incoming(WorkloadService(shared), UnixListenerStream::new(listener));
        tokio::select! {
            served = server => served.expect("workload API server"),
            _ = &mut stopped => {}
        }
    });
    // Dropping the runtime drops the connection tasks tonic spawned on it.
    drop(runtime);
    let _ = std::fs::remove_file(&socket);
}

/// The `SpiffeWorkloadAPI` service: FetchX509SVID, and Unimplemented for the
/// other methods.
#[derive(Clone)]
struct WorkloadService(Arc<Shared>);

impl Service<http::Request<tonic::body::Body>> for WorkloadService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != FETCH_X509_SVID {
                let status =
                    Status::unimplemented(format!("{} is not served", request.uri().path()));
                return Ok(status.into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                pb::X509SvidResponse,
                pb::X509SvidRequest,
            >::default());
            Ok(grpc.server_streaming(FetchX509Svid(shared), request).await)
        })
    }
}

struct FetchX509Svid(Arc<Shared>);

impl ServerStreamingService<pb::X509SvidRequest> for FetchX509Svid {
    type Response = pb::X509SvidResponse;
    type ResponseStream = BoxStream<pb::X509SvidResponse>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<pb::X509SvidRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let header = request.metadata().get(SECURITY_HEADER);
            if header.and_then(|v| v.to_str().ok()) != Some("true") {
                return Err(Status::invalid_argument(
                    "security header missing from request",
                ));
            }
            shared.fetch_calls.fetch_add(1, Ordering::SeqCst);
            let spiffe_id = shared.spiffe_id.clone();
            let bundle = shared.ca.bundle_der();
            let updates = WatchStream::new(shared.current.subscribe()).map(move |issued| {
                Ok(pb::X509SvidResponse {
                    svids: vec![pb::X509Svid {
                        spiffe_id: spiffe_id.clone(),
                        x509_svid: issued.cert_chain_der.concat(),
                        x509_svid_key: issued.key_der,
                        bundle: bundle.clone(),
                        hint: String::new(),
                    }],
                    ..Default::default()
                })
            });
            Ok(tonic::Response::new(
                Box::pin(updates) as Self::ResponseStream
            ))
        })
    }
}

/// A bare gRPC client, to call the Workload API in ways the spiffe crate never
/// does: without the security header, or other methods.
pub struct RawClient(tonic::client::Grpc<tonic::transport::Channel>);

impl RawClient {
    pub async fn connect(socket: &Path) -> Self {
        let channel = agentvault::client::grpc_channel(socket)
            .await
            .expect("connect to the workload API");
        Self(tonic::client::Grpc::new(channel))
    }

    /// The first FetchX509SVID response.
    pub async fn fetch_x509_svid(
        &mut self,
        with_header: bool,
    ) -> Result<pb::X509SvidResponse, Status> {
        let mut request = tonic::Request::new(pb::X509SvidRequest {});
        if with_header {
            request.metadata_mut().insert(
                SECURITY_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        self.ready().await?;
        let mut stream = self
            .0
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(FETCH_X509_SVID),
                ProstCodec::default(),
            )
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| Status::new(Code::Unknown, "the stream ended without a message"))
    }

    /// Calls `path` (e.g. `/SpiffeWorkloadAPI/FetchJWTSVID`) with the header
    /// and an empty request, which every Workload API request message accepts
    /// on the wire.
    pub async fn call_empty(&mut self, path: &'static str) -> Result<(), Status> {
        let mut request = tonic::Request::new(pb::X509SvidRequest {});
        request.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        self.ready().await?;
        self.0
            .unary::<_, pb::X509SvidRequest, _>(
                request,
                http::uri::PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .map(|_| ())
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}
