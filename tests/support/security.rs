//! Redis hardening for tests: certificates for a TLS redis-server (made with
//! rcgen), and ACL users created from the line `agentvault redis-acl` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::{RedisServer, BIN};

/// PEM files: a CA, a server certificate for 127.0.0.1 and localhost and a
/// client certificate signed by it, and an unrelated CA.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca")
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> Self {
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let issuer = ca("agentvault test CA");
        let leaf = |sans: Vec<String>| {
            let key = KeyPair::generate().expect("leaf key");
            let params = CertificateParams::new(sans).expect("leaf params");
            let cert = params.signed_by(&key, &issuer).expect("leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["agentvault-client".into()]);
        Self {
            ca: write("ca.pem", issuer.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", ca("some other CA").pem()),
        }
    }
}

/// Creates Redis ACL user `user` for `tenant` exactly as an operator would:
/// runs `agentvault redis-acl`, which makes the password file, and sends the
/// printed `ACL SETUSER` line to the server as its default user. Returns the
/// password file.
pub fn acl_user(redis: &RedisServer, dir: &Path, tenant: &str, user: &str) -> PathBuf {
    let (line, password_file) = redis_acl(dir, tenant, user);
    run_acl_line(redis, &line);
    password_file
}

/// What `agentvault redis-acl` prints for `tenant` and `user`, and the
/// password file it made in `dir`.
pub fn redis_acl(dir: &Path, tenant: &str, user: &str) -> (String, PathBuf) {
    let password_file = dir.join(format!("{user}.password"));
    let out = Command::new(BIN)
        .args([
            "redis-acl",
            "--tenant",
            tenant,
            "--user",
            user,
            "--password-file",
        ])
        .arg(&password_file)
        .output()
        .expect("run agentvault redis-acl");
    assert!(out.status.success(), "redis-acl: {out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    (line.trim().to_owned(), password_file)
}

/// Sends one `ACL SETUSER …` line, split on spaces as redis-cli would.
pub fn run_acl_line(redis: &RedisServer, line: &str) {
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("ACL"), "{line}");
    let mut cmd = redis::cmd("ACL");
    for word in words {
        cmd.arg(word);
    }
    let mut conn = redis.connection();
    let () = cmd.query(&mut conn).expect("ACL SETUSER");
}

/// A keyring file made by the CLI: a master keyring, or with `tenant` the
/// tenant keyring derived from `master`.
pub fn keygen(file: &Path, tenant: Option<(&str, &Path)>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("keygen");
    if let Some((tenant, master)) = tenant {
        cmd.args(["--tenant", tenant, "--master"]).arg(master);
    }
    let out = cmd.arg(file).output().expect("run agentvault keygen");
    assert!(out.status.success(), "keygen: {out:?}");
}
