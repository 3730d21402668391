//! Key material and tenant isolation: `keygen`, `rotate-kek`, `rewrap`, `redis-acl`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use clap::{Args, Subcommand};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::output::Output;
use super::run::{env_redis_password, RedisAuthFlags};
use super::CliError;
use crate::config::{redis_security, DEFAULT_DATA_DIR};
use crate::crypto::Keyring;
use crate::model::is_path_char;
use crate::store::{acl_setuser, EmbeddedStore, RedisStore, RedisTarget, Store};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new master keyring with one fresh key, or with --tenant the
    /// keyring of one tenant derived from a master keyring.
    Keygen {
        /// Derive the keyring of this tenant only (needs --master).
        #[arg(long, requires = "master")]
        tenant: Option<String>,
        /// The master keyring to derive the tenant keyring from.
        #[arg(long, requires = "tenant", value_name = "MASTER_FILE")]
        master: Option<PathBuf>,
        /// Where to write the keyring (never overwritten).
        file: PathBuf,
    },
    /// Add a fresh key to a keyring and make it active (the file is replaced
    /// atomically); older keys still open older versions. Then restart the
    /// sidecars with it and run `rewrap`.
    RotateKek {
        /// The keyring file: a tenant keyring rotates that tenant's KEK, a
        /// master keyring every tenant's.
        file: PathBuf,
    },
    /// Re-seal every stored DEK of one tenant under its active KEK, leaving
    /// ciphertexts untouched. Safe while sidecars serve; run it again to resume.
    Rewrap(RewrapArgs),
    /// Print the `ACL SETUSER` line that confines a Redis user to one tenant's keys.
    RedisAcl {
        /// The tenant whose keys (`av:{TENANT}:*`) the user may touch.
        #[arg(long)]
        tenant: String,
        /// The Redis ACL user's name.
        #[arg(long)]
        user: String,
        /// The user's password: read from this file, or made and written
        /// there (mode 0600) if it does not exist. Only its SHA-256 is printed.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The tenant whose data keys are re-sealed.
    #[arg(long)]
    pub tenant: String,
    /// The tenant's keyring (or a master keyring), with the new key active.
    #[arg(long, env = "AGENTVAULT_KEYRING")]
    pub keyring: PathBuf,
    /// The sidecars' Redis (else the embedded store in --data-dir, which no
    /// sidecar may hold open meanwhile).
    #[arg(long, env = "AGENTVAULT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Directory of the embedded store, when there is no Redis.
    #[arg(long, env = "AGENTVAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Resume after this secret path (`last_path` of an interrupted run).
    #[arg(long)]
    pub after: Option<String>,
    #[command(flatten)]
    pub redis_auth: RedisAuthFlags,
}

pub async fn run(command: KeysCommand, out: Output) -> Result<(), CliError> {
    match command {
        KeysCommand::Keygen {
            tenant: None, file, ..
        } => {
            let ring = Keyring::generate();
            ring.save_new(&file).map_err(fail)?;
            let written = serde_json::json!({
                "file": file.display().to_string(),
                "active_key": ring.active_id().to_string(),
            });
            out.data(&written, || {
                format!(
                    "wrote keyring {} (active key {})",
                    file.display(),
                    ring.active_id()
                )
            })
        }
        KeysCommand::Keygen {
            tenant: Some(tenant),
            master,
            file,
        } => {
            check_name("tenant", &tenant)?;
            let master = master.ok_or_else(|| CliError::new(2, "--tenant needs --master"))?;
            let ring = Keyring::load(&master)
                .and_then(|m| m.derive_tenant(&tenant))
                .map_err(fail)?;
            ring.save_new(&file).map_err(fail)?;
            let written = serde_json::json!({
                "file": file.display().to_string(),
                "tenant": tenant,
                "keys": ring.key_ids(),
                "active_key": ring.active_id().to_string(),
            });
            out.data(&written, || {
                format!(
                    "wrote keyring {} for tenant {tenant} (keys {}, active {})",
                    file.display(),
                    ring.key_ids().join(", "),
                    ring.active_id()
                )
            })
        }
        KeysCommand::RotateKek { file } => {
            let mut ring = Keyring::load(&file).map_err(fail)?;
            let active = ring.rotate().to_owned();
            ring.save_replace(&file).map_err(fail)?;
            let rotated = serde_json::json!({
                "file": file.display().to_string(),
                "keys": ring.key_ids(),
                "active_key": active,
            });
            out.data(&rotated, || {
                format!(
                    "keyring {}: key {active} is active (keys {}); restart the sidecars with it, then run `agentvault rewrap`",
                    file.display(),
                    ring.key_ids().join(", ")
                )
            })
        }
        KeysCommand::Rewrap(args) => rewrap(args, out).await,
        KeysCommand::RedisAcl {
            tenant,
            user,
            password_file,
        } => {
            check_name("tenant", &tenant)?;
            check_name("user", &user)?;
            let password = read_or_make_password(&password_file)?;
            let digest = hex(&Sha256::digest(password.as_bytes()));
            let line = acl_setuser(&user, &[&tenant], &digest);
            out.data(
                &serde_json::json!({"tenant": tenant, "user": user, "acl_setuser": line}),
                || line.clone(),
            )
        }
    }
}

async fn rewrap(args: RewrapArgs, out: Output) -> Result<(), CliError> {
    check_name("tenant", &args.tenant)?;
    let cipher = Keyring::load(&args.keyring)
        .and_then(|ring| ring.tenant_cipher(&args.tenant))
        .map_err(fail)?;
    let store: Box<dyn Store> = match args.redis_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => {
            let security = redis_security(
                url,
                args.redis_auth.redis_username.as_deref(),
                args.redis_auth.redis_password_file.as_deref(),
                env_redis_password(),
                &args.redis_auth.tls(),
            )
            .map_err(|e| CliError::new(2, e.to_string()))?;
            Box::new(RedisStore::with_security(RedisTarget::parse(url), security))
        }
        None => {
            let dir = args
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            Box::new(
                EmbeddedStore::open(&dir.join("store.redb"))
                    .map_err(|e| CliError::new(5, e.to_string()))?,
            )
        }
    };
    let outcome = crate::vault::rewrap(&*store, &cipher, &args.tenant, args.after).await;
    let report = match &outcome {
        Ok(report) => report,
        Err(e) => &*e.report,
    };
    out.json(&serde_json::json!(report))?;
    match outcome {
        Err(e) => Err(CliError::new(5, e.to_string())),
        Ok(r) if r.failed > 0 || r.raced > 0 => Err(CliError::new(
            1,
            format!(
                "{} versions could not be opened and {} kept changing; they are unchanged (run again for the latter)",
                r.failed, r.raced
            ),
        )),
        Ok(_) => Ok(()),
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::new(1, e.to_string())
}

/// Tenant and user names go into Redis key patterns and ACL rules, so only
/// the path characters (no glob or space) are accepted.
fn check_name(what: &str, name: &str) -> Result<(), CliError> {
    if name.is_empty() || name.len() > 128 || !name.chars().all(is_path_char) {
        return Err(CliError::new(
            2,
            format!("{what} `{name}`: use 1-128 of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_or_make_password(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let io = |e: std::io::Error| CliError::new(1, format!("{}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(CliError::new(1, format!("{} is empty", path.display())));
            }
            Ok(Zeroizing::new(password.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(bytes.as_mut());
            let password = Zeroizing::new(B64URL.encode(bytes.as_ref()));
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            out.write_all(password.as_bytes()).map_err(io)?;
            out.sync_all().map_err(io)?;
            eprintln!("wrote a new password to {}", path.display());
            Ok(password)
        }
        Err(e) => Err(io(e)),
    }
}
