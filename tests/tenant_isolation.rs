//! Tenant isolation against a stolen pod, on a real redis-server: tenant
//! keyrings, Redis ACL users (made with `agentvault redis-acl`), rewrap after
//! a KEK rotation, and TLS to Redis.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use agentvault::crypto::{Binding, Keyring, Sealed};
use agentvault::store::{
    RedisPassword, RedisSecurity, RedisStore, RedisTarget, RedisTls, Store, StoreError,
};
use serde_json::Value;
use support::cluster::RedisCluster;
use support::security::{acl_user, keygen, redis_acl, TlsFiles};
use support::{get, get_when, put_value, RedisServer, Sidecar, BIN};

/// A master keyring, the keyrings of acme and globex derived from it, one
/// Redis, and an ACL user per tenant.
struct Tenants {
    redis: RedisServer,
    dir: tempfile::TempDir,
    master: PathBuf,
}

struct Tenant {
    name: &'static str,
    keyring: PathBuf,
    user: String,
    password_file: PathBuf,
}

impl Tenants {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = dir.path().join("master.json");
        keygen(&master, None);
        Self {
            redis: RedisServer::start(),
            dir,
            master,
        }
    }

    fn tenant(&self, name: &'static str) -> Tenant {
        let keyring = self.dir.path().join(format!("{name}.json"));
        keygen(&keyring, Some((name, &self.master)));
        let user = format!("{name}-sidecar");
        let password_file = acl_user(&self.redis, self.dir.path(), name, &user);
        Tenant {
            name,
            keyring,
            user,
            password_file,
        }
    }

    /// The sidecar args of `tenant`: its keyring, its ACL user (apart from
    /// the URL, as the Helm chart gives it), its password file.
    fn args(&self, tenant: &Tenant) -> Vec<String> {
        vec![
            "--tenant".into(),
            tenant.name.into(),
            "--agent".into(),
            "bot".into(),
            "--keyring".into(),
            tenant.keyring.display().to_string(),
            "--redis-url".into(),
            self.redis.url(),
            "--redis-username".into(),
            tenant.user.clone(),
            "--redis-password-file".into(),
            tenant.password_file.display().to_string(),
        ]
    }

    fn sidecar(&self, tenant: &Tenant) -> Sidecar {
        let dir = self.dir.path().join(format!("sidecar-{}", tenant.name));
        std::fs::create_dir_all(&dir).unwrap();
        let args = self.args(tenant);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sidecar::dev(&dir, &args)
    }

    /// `agentvault rewrap` for `tenant`, as its ACL user.
    fn rewrap(&self, tenant: &Tenant) -> Output {
        Command::new(BIN)
            .args(["rewrap", "--tenant", tenant.name, "--keyring"])
            .arg(&tenant.keyring)
            .args(["--redis-url", &self.redis.user_url(&tenant.user)])
            .arg("--redis-password-file")
            .arg(&tenant.password_file)
            .env_remove("AGENTVAULT_REDIS_URL")
            .output()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A connection as an ACL user, outside any sidecar (what a stolen pod holds).
fn connect_as(redis: &RedisServer, tenant: &Tenant) -> redis::Connection {
    let password = std::fs::read_to_string(&tenant.password_file).unwrap();
    let url = format!(
        "redis://{}:{}@127.0.0.1:{}/",
        tenant.user, password, redis.port
    );
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Every stored version of `path` of `tenant`, as Redis holds it.
fn stored_versions(redis: &RedisServer, tenant: &str, path: &str) -> Vec<Value> {
    let raw: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg(format!("av:{{{tenant}}}:v:{path}"))
        .query(&mut redis.connection())
        .unwrap();
    let mut versions: Vec<Value> = raw
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    versions.sort_by_key(|v| v["version"].as_u64());
    versions
}

/// Redis's NOPERM reply, as the client library renders it.
fn is_noperm(error: &str) -> bool {
    error.to_ascii_uppercase().contains("NOPERM")
}

fn copy_hash(redis: &RedisServer, from: &str, to: &str) {
    let mut conn = redis.connection();
    let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL").arg(from).query(&mut conn).unwrap();
    for (field, value) in fields {
        let () = redis::cmd("HSET")
            .arg(to)
            .arg(field)
            .arg(value)
            .query(&mut conn)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globex_cannot_read_list_or_decrypt_acme() {
    let env = Tenants::new();
    let (acme, globex) = (env.tenant("acme"), env.tenant("globex"));
    let acme_sidecar = env.sidecar(&acme);
    let globex_sidecar = env.sidecar(&globex);
    put_value(&acme_sidecar.client(), "team/openai", "sk-acme-secret-1").await;
    put_value(&acme_sidecar.client(), "team/openai", "sk-acme-secret-2").await;
    let g = globex_sidecar.client();
    put_value(&g, "own/key", "globex-value").await;

    // Through its sidecar, globex sees only its own tenant.
    assert_eq!(get(&g, "/v1/secrets/team/openai").await.status, 404);
    let listed = get(&g, "/v1/secrets").await.json();
    let paths: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["own/key"]);

    // With the pod's own Redis credential, Redis itself refuses acme's keys.
    let mut stolen = connect_as(&env.redis, &globex);
    for (cmd, key) in [
        ("HVALS", "av:{acme}:v:team/openai"),
        ("HGETALL", "av:{acme}:s:team/openai"),
        ("ZRANGE", "av:{acme}:idx"),
    ] {
        let mut c = redis::cmd(cmd);
        c.arg(key);
        if cmd == "ZRANGE" {
            c.arg(0).arg(-1);
        }
        let err = c.query::<redis::Value>(&mut stolen).err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(is_noperm(&err), "{cmd} {key}: {err}");
    }
    let err = redis::cmd("KEYS")
        .arg("av:*")
        .query::<Vec<String>>(&mut stolen)
        .unwrap_err();
    assert!(is_noperm(&err.to_string()), "KEYS: {err}");
    // A script may not reach another tenant's keys either.
    let err = redis::cmd("EVAL")
        .arg("return redis.call('HVALS', KEYS[1])")
        .arg(1)
        .arg("av:{acme}:v:team/openai")
        .query::<redis::Value>(&mut stolen)
        .unwrap_err();
    assert!(is_noperm(&err.to_string()), "EVAL: {err}");
    // Its own keys it may read.
    let own: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg("av:{globex}:v:own/key")
        .query(&mut stolen)
        .unwrap();
    assert_eq!(own.len(), 1);

    // Acme's sealed records, obtained some other way, do not open with globex's keyring.
    let stored = stored_versions(&env.redis, "acme", "team/openai");
    let sealed: Sealed = serde_json::from_value(stored[1]["sealed"].clone()).unwrap();
    let globex_ring = Keyring::load(&globex.keyring).unwrap();
    assert!(globex_ring.tenant_cipher("acme").is_err());
    let binding = Binding {
        tenant: "acme",
        path: "team/openai",
        version: 2,
    };
    let cipher = globex_ring.tenant_cipher("globex").unwrap();
    assert!(cipher.open(binding, &sealed).is_err());

    // Records copied into globex's keys (by someone with the admin
    // credential) fail closed: as they are, and relabelled to globex.
    for kind in ["s", "v"] {
        copy_hash(
            &env.redis,
            &format!("av:{{acme}}:{kind}:team/openai"),
            &format!("av:{{globex}}:{kind}:team/openai"),
        );
    }
    let () = redis::cmd("ZADD")
        .arg("av:{globex}:idx")
        .arg(0)
        .arg("team/openai")
        .query(&mut env.redis.connection())
        .unwrap();
    // Announced as a write would be: a write that bypasses the sidecars is
    // not seen by their caches until its path changes again.
    announce(&env.redis, "globex", "team/openai");
    let copied = get_when(&g, "/v1/secrets/team/openai", |r| r.status != 404).await;
    assert_eq!(copied.status, 500, "{:?}", copied.json());
    // Relabelled to globex's own tenant and agent, the policy lets the read
    // through to decryption, which fails: globex's KEK cannot unwrap the DEK.
    let relabel = |record: &[u8]| {
        let mut json: Value = serde_json::from_slice(record).unwrap();
        json["tenant"] = "globex".into();
        json["owner"] = "spiffe://dev.local/agent/globex/bot".into();
        serde_json::to_vec(&json).unwrap()
    };
    let meta: Vec<u8> = redis::cmd("HGET")
        .arg("av:{globex}:s:team/openai")
        .arg("record")
        .query(&mut env.redis.connection())
        .unwrap();
    let () = redis::cmd("HSET")
        .arg("av:{globex}:s:team/openai")
        .arg("record")
        .arg(relabel(&meta))
        .query(&mut env.redis.connection())
        .unwrap();
    announce(&env.redis, "globex", "team/openai");
    let decrypting = |r: &agentvault::client::Reply| {
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be decrypted"))
    };
    for uri in [
        "/v1/secrets/team/openai",
        "/v1/secrets/team/openai?version=1",
    ] {
        let reply = get_when(&g, uri, decrypting).await;
        assert_eq!(reply.status, 500, "{uri}: {:?}", reply.json());
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be decrypted"),
            "{:?}",
            reply.json()
        );
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(!body.contains("sk-acme"), "{body}");
    }
    assert!(!globex_sidecar.logs().contains("sk-acme"));
    // Neither sidecar logs its Redis password.
    for (sidecar, tenant) in [(&acme_sidecar, &acme), (&globex_sidecar, &globex)] {
        let password = std::fs::read_to_string(&tenant.password_file).unwrap();
        assert!(!sidecar.logs().contains(password.trim()));
    }
}

#[test]
fn a_sidecar_given_another_tenants_keyring_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.json");
    keygen(&master, None);
    let acme = dir.path().join("acme.json");
    keygen(&acme, Some(("acme", &master)));
    let out = Command::new(BIN)
        .args([
            "dev",
            "--tenant",
            "globex",
            "--metrics-addr",
            "off",
            "--socket",
        ])
        .arg(dir.path().join("g.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--keyring")
        .arg(&acme)
        .env_remove("AGENTVAULT_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds the keys of tenant `acme`, not of tenant `globex`"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("g.sock").exists());
}

/// `serve` runs with acme's tenant keyring, refuses the master keyring
/// unless told, and refuses globex's keyring.
#[test]
fn serve_takes_its_tenants_keyring_and_a_master_keyring_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.json");
    keygen(&master, None);
    let (acme, globex) = (dir.path().join("acme.json"), dir.path().join("globex.json"));
    keygen(&acme, Some(("acme", &master)));
    keygen(&globex, Some(("globex", &master)));
    let runs = std::cell::Cell::new(0);
    let serve = |keyring: &Path, extra: &[&str]| {
        runs.set(runs.get() + 1);
        let socket = dir.path().join(format!("s{}.sock", runs.get()));
        let config = dir.path().join("agentvault.yaml");
        std::fs::write(
            &config,
            format!(
                "keyring: {}\ndata_dir: {}/data\nmetrics_addr: 'off'\nsocket: {}\n\
                 identity:\n  spiffe_id: spiffe://example.org/agent/acme/planner\n",
                keyring.display(),
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .args(extra)
            .env_remove("AGENTVAULT_SOCKET")
            .env_remove("AGENTVAULT_REDIS_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..400 {
            if socket.exists() || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let started = socket.exists();
        if started {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let out = child.wait_with_output().unwrap();
        (started, stderr(&out))
    };
    let (started, log) = serve(&acme, &[]);
    assert!(started, "{log}");
    let (started, log) = serve(&master, &[]);
    assert!(!started);
    assert!(log.contains("is a master keyring"), "{log}");
    assert!(log.contains("--allow-master-keyring"), "{log}");
    let (started, log) = serve(&master, &["--allow-master-keyring"]);
    assert!(started, "{log}");
    let (started, log) = serve(&globex, &[]);
    assert!(!started);
    assert!(log.contains("not of tenant `acme`"), "{log}");
}

const PATHS: [&str; 3] = ["app/a", "app/b", "ops/c"];

fn value(path: &str, n: u64) -> String {
    format!("value-of-{path}-{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_after_rotation_moves_every_dek_and_leaves_every_version_readable() {
    let env = Tenants::new();
    let acme = env.tenant("acme");
    let mut sidecar = env.sidecar(&acme);
    let c = sidecar.client();
    for path in PATHS {
        for n in 1..=3 {
            assert_eq!(put_value(&c, path, &value(path, n)).await, n);
        }
    }
    let old_key = Keyring::load(&acme.keyring).unwrap().active_id().to_owned();
    let before: Vec<Vec<Value>> = PATHS
        .iter()
        .map(|p| stored_versions(&env.redis, "acme", p))
        .collect();
    assert!(before
        .iter()
        .flatten()
        .all(|v| v["sealed"]["kek_id"] == old_key.as_str()));

    let out = Command::new(BIN)
        .arg("rotate-kek")
        .arg(&acme.keyring)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let new_key = Keyring::load(&acme.keyring).unwrap().active_id().to_owned();
    assert_ne!(new_key, old_key);
    sidecar.restart();
    let c = sidecar.client();

    // Rewrap runs while the sidecar keeps writing (under the new key).
    let rewrap = {
        let mut cmd = Command::new(BIN);
        cmd.args(["rewrap", "--tenant", "acme", "--keyring"])
            .arg(&acme.keyring)
            .args(["--redis-url", &env.redis.user_url(&acme.user)])
            .arg("--redis-password-file")
            .arg(&acme.password_file)
            .env_remove("AGENTVAULT_REDIS_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    for n in 4..=6 {
        assert_eq!(put_value(&c, "app/a", &value("app/a", n)).await, n);
    }
    let out = rewrap.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["active_key"], new_key.as_str());
    assert_eq!(report["secrets"], 3);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["raced"], 0);
    assert!(
        report["rewrapped"].as_u64().unwrap() >= 9,
        "the nine old versions: {report}"
    );

    for (path, old) in PATHS.iter().zip(&before) {
        let now = stored_versions(&env.redis, "acme", path);
        for v in &now {
            assert_eq!(v["sealed"]["kek_id"], new_key.as_str(), "{path} {v}");
        }
        for (was, is) in old.iter().zip(&now) {
            assert_eq!(was["version"], is["version"]);
            assert_eq!(
                was["sealed"]["ciphertext"], is["sealed"]["ciphertext"],
                "ciphertext untouched"
            );
            assert_ne!(was["sealed"]["wrapped_dek"], is["sealed"]["wrapped_dek"]);
        }
        let latest = if *path == "app/a" { 6 } else { 3 };
        for n in 1..=latest {
            let reply = get(&c, &format!("/v1/secrets/{path}?version={n}")).await;
            assert_eq!(reply.status, 200, "{path}@{n}: {:?}", reply.json());
            assert_eq!(reply.json()["value"], value(path, n));
        }
    }

    // Run again: nothing left to do, every version reported current.
    let out = env.rewrap(&acme);
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["rewrapped"], 0);
    assert_eq!(again["current"], 12);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("value-of"));
}

/// A version whose DEK cannot be opened is reported and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_reports_what_it_cannot_open_and_changes_nothing_of_it() {
    let env = Tenants::new();
    let acme = env.tenant("acme");
    let sidecar = env.sidecar(&acme);
    put_value(&sidecar.client(), "app/x", "v1").await;
    let key = "av:{acme}:v:app/x";
    let mut stored = stored_versions(&env.redis, "acme", "app/x");
    stored[0]["sealed"]["kek_id"] = "k-unknown".into();
    let () = redis::cmd("HSET")
        .arg(key)
        .arg(1)
        .arg(serde_json::to_vec(&stored[0]).unwrap())
        .query(&mut env.redis.connection())
        .unwrap();
    let out = Command::new(BIN)
        .arg("rotate-kek")
        .arg(&acme.keyring)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = env.rewrap(&acme);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"], 1);
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .contains("app/x@1: record was sealed with key `k-unknown`"),
        "{report}"
    );
    assert_eq!(stored_versions(&env.redis, "acme", "app/x"), stored);
}

/// A wrong password is a clear `unavailable`, and does not echo the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_answers_unavailable_without_echoing_it() {
    let env = Tenants::new();
    let mut acme = env.tenant("acme");
    acme.password_file = env.dir.path().join("wrong.password");
    std::fs::write(&acme.password_file, "not-the-password-42\n").unwrap();
    let sidecar = env.sidecar(&acme);
    let reply = support::put(&sidecar.client(), "x/y", serde_json::json!({"value": "v"})).await;
    assert_eq!(reply.status, 503, "{:?}", reply.json());
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.to_ascii_lowercase().contains("password"),
        "{message}"
    );
    assert!(!message.contains("not-the-password-42"));
    assert!(!sidecar.logs().contains("not-the-password-42"));
}

/// The store itself, connected as acme's ACL user, is refused every key of
/// globex by Redis (so the user name in the URL is really used).
async fn acl_user_is_refused_other_tenants_keys(store: RedisStore, claim: &str) {
    let noperm = |result: Result<(), StoreError>| match result {
        Err(StoreError::Unavailable(message)) => assert!(is_noperm(&message), "{message}"),
        other => panic!("expected NOPERM, got {other:?}"),
    };
    assert!(store.read("acme", "x", None).await.unwrap().is_none());
    assert!(store
        .claim("acme", claim, Duration::from_secs(5))
        .await
        .unwrap());
    noperm(store.read("globex", "x", None).await.map(|_| ()));
    noperm(store.list("globex", "", None, 10).await.map(|_| ()));
    noperm(
        store
            .claim("globex", "c", Duration::from_secs(5))
            .await
            .map(|_| ()),
    );
    noperm(store.audit_newest("globex", 10).await.map(|_| ()));
}

fn password(user: Option<&str>, file: &Path) -> RedisSecurity {
    RedisSecurity {
        username: user.map(str::to_owned),
        password: Some(RedisPassword::new(std::fs::read_to_string(file).unwrap())),
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_is_refused_other_tenants_keys_on_standalone_redis() {
    let env = Tenants::new();
    let acme = env.tenant("acme");
    // the user named in the URL, then apart from it
    let store = RedisStore::with_security(
        RedisTarget::Standalone(env.redis.user_url(&acme.user)),
        password(None, &acme.password_file),
    );
    acl_user_is_refused_other_tenants_keys(store, "in-url").await;
    let store = RedisStore::with_security(
        RedisTarget::Standalone(env.redis.url()),
        password(Some(&acme.user), &acme.password_file),
    );
    acl_user_is_refused_other_tenants_keys(store, "apart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_is_refused_other_tenants_keys_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (line, password_file) = redis_acl(dir.path(), "acme", "acme-sidecar");
    cluster.acl(&line);
    let store = RedisStore::with_security(
        RedisTarget::Cluster(cluster.urls(None)),
        password(Some("acme-sidecar"), &password_file),
    );
    acl_user_is_refused_other_tenants_keys(store, "cluster").await;
}

// ---- TLS ---------------------------------------------------------------------

fn tls_dir() -> (tempfile::TempDir, TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path());
    (dir, files)
}

fn tls_sidecar(dir: &Path, redis: &RedisServer, extra: &[&str]) -> Sidecar {
    let sidecar_dir = dir.join(format!("sidecar-{}", redis.port));
    std::fs::create_dir_all(&sidecar_dir).unwrap();
    let url = redis.url();
    let mut args = vec!["--tenant", "acme", "--redis-url", &url];
    args.extend_from_slice(extra);
    Sidecar::dev(&sidecar_dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_with_and_without_a_client_certificate() {
    let (dir, files) = tls_dir();
    let ca = files.ca.display().to_string();
    let (cert, key) = (
        files.client_cert.display().to_string(),
        files.client_key.display().to_string(),
    );

    // Server authentication only.
    let redis = RedisServer::start_tls(&files, "no");
    assert!(redis.url().starts_with("rediss://"));
    let sidecar = tls_sidecar(dir.path(), &redis, &["--redis-tls-ca-file", &ca]);
    put_value(&sidecar.client(), "tls/key", "over-tls").await;
    let got = get(&sidecar.client(), "/v1/secrets/tls/key").await;
    assert_eq!(got.json()["value"], "over-tls");

    // Redis requires a client certificate: without one nothing is stored.
    let mtls = RedisServer::start_tls(&files, "yes");
    let without = tls_sidecar(dir.path(), &mtls, &["--redis-tls-ca-file", &ca]);
    let reply = support::put(
        &without.client(),
        "tls/key",
        serde_json::json!({"value": "x"}),
    )
    .await;
    assert_eq!(reply.status, 503, "{:?}", reply.json());
    drop(without);
    let with = {
        let sidecar_dir = dir.path().join("sidecar-mtls");
        std::fs::create_dir_all(&sidecar_dir).unwrap();
        let url = mtls.url();
        Sidecar::dev(
            &sidecar_dir,
            &[
                "--tenant",
                "acme",
                "--redis-url",
                &url,
                "--redis-tls-ca-file",
                &ca,
                "--redis-tls-cert-file",
                &cert,
                "--redis-tls-key-file",
                &key,
            ],
        )
    };
    put_value(&with.client(), "tls/key", "mutual").await;
    let got = get(&with.client(), "/v1/secrets/tls/key").await;
    assert_eq!(got.json()["value"], "mutual");
}

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_with_a_clear_error() {
    let (_dir, files) = tls_dir();
    let redis = RedisServer::start_tls(&files, "no");
    let store = |ca: &Path| {
        RedisStore::with_security(
            RedisTarget::Standalone(redis.url()),
            RedisSecurity {
                tls: Some(RedisTls {
                    ca_pem: Some(pem(ca)),
                    ..RedisTls::default()
                }),
                ..RedisSecurity::default()
            },
        )
    };
    store(&files.ca).ping().await.unwrap();
    match store(&files.other_ca).ping().await {
        Err(StoreError::Unavailable(message)) => assert!(
            message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
            "{message}"
        ),
        other => panic!("expected unavailable, got {other:?}"),
    }
    // The CLI says so too, before touching anything.
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("m.json");
    keygen(&master, None);
    let out = Command::new(BIN)
        .args(["rewrap", "--tenant", "acme", "--keyring"])
        .arg(&master)
        .args(["--redis-url", &redis.url(), "--redis-tls-ca-file"])
        .arg(&files.other_ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));
    // TLS files with a plain redis:// URL are a configuration error.
    let out = Command::new(BIN)
        .args(["rewrap", "--tenant", "acme", "--keyring"])
        .arg(&master)
        .args(["--redis-url", "redis://127.0.0.1:1/", "--redis-tls-ca-file"])
        .arg(&files.ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a rediss:// URL"),
        "{}",
        stderr(&out)
    );
}

/// Publishes a change of `path` on `tenant`'s change channel, as the
/// sidecars' own write scripts do, so their caches drop what they hold.
fn announce(redis: &support::RedisServer, tenant: &str, path: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("av:{{{tenant}}}:changes"))
        .arg(format!("s:{path}"))
        .query(&mut redis.connection())
        .unwrap();
}
