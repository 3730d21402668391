//! Kubernetes test helpers: strict schema validation with
//! `kubernetes-validate`, a CA and serving certificates for the webhook, a
//! running `agentvault webhook`, and an HTTPS client that reports which
//! certificate the server presented.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio_rustls::rustls;

use crate::support::{free_port, tool_on_path, wait_for, BIN};

/// The oldest Kubernetes with native sidecars, and the newest the validator knows.
pub const K8S_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

pub fn validator() -> PathBuf {
    tool_on_path("kubernetes-validate")
}

/// Kubernetes objects as the validator sees them: a `List`'s items one by
/// one (it has no schema for `List`), and a pod known only by its
/// `generateName` given the name the API server would give it.
fn validatable(object: &Value, out: &mut Vec<Value>) {
    match object["kind"].as_str() {
        Some("List") => {
            for item in object["items"].as_array().into_iter().flatten() {
                validatable(item, out);
            }
        }
        Some(_) => {
            let mut object = object.clone();
            let metadata = &mut object["metadata"];
            if metadata.get("name").is_none() {
                let prefix = metadata["generateName"].as_str().unwrap_or("object-");
                metadata["name"] = Value::String(format!("{prefix}x7k2p"));
            }
            out.push(object);
        }
        None => {}
    }
}

/// Validates every object strictly (no unknown field anywhere) against each
/// of [`K8S_VERSIONS`]; panics with the validator's output otherwise.
pub fn validate_strict(objects: &[Value], what: &str) {
    let tool = validator();
    let mut flat = Vec::new();
    for object in objects {
        validatable(object, &mut flat);
    }
    assert!(!flat.is_empty(), "{what}: nothing to validate");
    let dir = tempfile::tempdir().expect("temp dir");
    // JSON documents (valid YAML): the validator's YAML loader would read an
    // unquoted timestamp as a date, which kubectl does not.
    let file = dir.path().join("objects.yaml");
    let text = flat
        .iter()
        .map(|o| format!("{o}\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(&file, text).expect("write objects");
    for version in K8S_VERSIONS {
        let out = Command::new(&tool)
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{what} does not validate against Kubernetes {version}:\n{report}"
        );
        let passed = report.matches("passed for resource").count();
        assert_eq!(
            passed,
            flat.len(),
            "{what}: not every object was validated against {version}:\n{report}"
        );
    }
}

/// Every document of a multi-document YAML text, as JSON values. A mapping
/// with a key twice fails (kubectl's strict decoding refuses it, and a JSON
/// map would silently keep the last one).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let doc: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("not a clean YAML document: {e}"));
            serde_json::to_value(doc).expect("YAML as JSON")
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// A CA, and serving certificates for `localhost` / 127.0.0.1 signed by it.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_der: Vec<u8>,
}

/// A serving certificate and its key, PEM, and the leaf's DER to compare with.
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf_der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "agentvault webhook test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_der = params.self_signed(&key).expect("CA cert").der().to_vec();
        Self {
            issuer: Issuer::new(params, key),
            ca_der,
        }
    }

    /// A fresh key and certificate, as cert-manager issues on rotation.
    pub fn serving_cert(&self) -> ServingCert {
        let key = KeyPair::generate().expect("serving key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params
            .distinguished_name
            .push(DnType::CommonName, "agentvault-webhook.agentvault.svc");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("serving cert");
        ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        }
    }
}

/// A running `agentvault webhook` on a free loopback port.
pub struct Webhook {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Webhook {
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("tls.crt")
    }

    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("tls.key")
    }

    /// Writes `cert` into `dir` and starts the webhook on it; it answers
    /// TLS when this returns.
    pub fn start(dir: &Path, cert: &ServingCert, config: Option<&Path>) -> Self {
        Self::install(dir, cert);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = std::fs::File::create(dir.join("webhook.log")).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("webhook")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--tls-cert")
            .arg(Self::cert_path(dir))
            .arg("--tls-key")
            .arg(Self::key_path(dir))
            .args(["--cert-check-interval", "100ms"])
            .env("RUST_LOG", "info")
            .env_remove("AGENTVAULT_INJECTOR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd.spawn().expect("spawn agentvault webhook");
        wait_for("the webhook to listen", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "webhook exited early with {status}:\n{}",
                    std::fs::read_to_string(dir.join("webhook.log")).unwrap_or_default()
                );
            }
            TcpStream::connect(addr).is_ok()
        });
        Self {
            child: Some(child),
            addr,
            dir: dir.to_owned(),
        }
    }

    /// Puts `cert` in place the way the kubelet updates a Secret volume:
    /// the files land in a fresh directory, and the `..data` symlink that
    /// `tls.crt` and `tls.key` point through is swapped to it in one rename.
    pub fn install(dir: &Path, cert: &ServingCert) {
        static GENERATION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let version = format!("..{}_{n}", std::process::id());
        std::fs::create_dir(dir.join(&version)).expect("version dir");
        std::fs::write(dir.join(&version).join("tls.crt"), &cert.cert_pem).expect("write cert");
        std::fs::write(dir.join(&version).join("tls.key"), &cert.key_pem).expect("write key");
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
        for name in ["tls.crt", "tls.key"] {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("symlink");
            }
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("webhook.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running webhook");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        wait_for("the webhook to stop", Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        child.wait().expect("exit status")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One TLS connection to the webhook (HTTP/1.1, kept alive), trusting only `ca_der`.
pub struct TlsConn {
    sender: SendRequest<Full<Bytes>>,
    /// The leaf certificate the server presented in this connection's handshake.
    pub server_cert: Vec<u8>,
}

impl TlsConn {
    pub async fn connect(addr: SocketAddr, ca_der: &[u8]) -> Self {
        Self::connect_as(addr, ca_der, "localhost").await
    }

    /// [`TlsConn::connect`], verifying the server certificate for `server_name`
    /// (e.g. the name the API server uses: `<service>.<namespace>.svc`).
    pub async fn connect_as(addr: SocketAddr, ca_der: &[u8], server_name: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .expect("CA cert");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .expect("a server certificate")
            .to_vec();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Self {
            sender,
            server_cert,
        }
    }

    /// Sends one request on this connection: (status, JSON body).
    pub async fn send(&mut self, method: Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        self.sender.ready().await.expect("connection still open");
        let response = self.sender.send_request(req).await.expect("response");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }
}
