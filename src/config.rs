//! Sidecar configuration: a YAML or TOML file, overridden by flags and
//! `AGENTVAULT_*` environment variables, resolved into [`Settings`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::DEFAULT_MAX_BODY_BYTES;
use crate::audit::AuditSettings;
use crate::identity::{IdentityError, RoleMap, RoleRule, WorkloadIdentity, DEFAULT_ID_PATTERN};
use crate::policy::PolicyConfig;
use crate::ratelimit::RateSettings;
use crate::store::RedisTarget;
use crate::vault::{AccessSettings, Limits};

pub const DEFAULT_SOCKET: &str = "/run/agentvault/agentvault.sock";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_DATA_DIR: &str = "./.agentvault";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// One role's matchers: a single `uid:N|gid:N|exe:/path` or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Matchers {
    One(String),
    Many(Vec<String>),
}

/// The config file as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: Option<PathBuf>,
    /// Octal, e.g. `"0660"`.
    pub socket_mode: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub keyring: Option<PathBuf>,
    /// `host:port`, or `off`.
    pub metrics_addr: Option<String>,
    pub roles: BTreeMap<String, Matchers>,
    pub identity: IdentityConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub expiry: ExpiryConfig,
    pub policy: PolicySection,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
}

/// The audit stream: how much of it the store keeps, and what happens to
/// requests while it cannot be written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events kept per tenant, approximately (default 100000).
    pub max_len: Option<usize>,
    /// Refuse writes and critical reads (503) while events cannot be stored
    /// (default true); other requests answer and their events are retried.
    pub fail_closed: Option<bool>,
    /// Events held in memory while the store is down (default 10000).
    pub buffer: Option<usize>,
}

/// Where the Rego policies live and the roles they treat specially.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    pub dir: Option<PathBuf>,
    pub approver_roles: Option<Vec<String>>,
    pub auditor_roles: Option<Vec<String>>,
}

/// Which tiers need a human's approval before a token covering them works.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Also hold tokens covering `sensitive` secrets (critical ones always are).
    pub sensitive: bool,
}

/// Version retention and rotation defaults; durations like `90d` or `1h`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Versions kept per secret (0 keeps all).
    pub max_versions: Option<usize>,
    pub max_age: Option<String>,
    pub default_grace: Option<String>,
}

/// Expiry warnings, sent 7 days and 1 day before a secret expires.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    pub webhook_url: Option<String>,
    /// How often each sidecar looks for secrets nearing expiry, e.g. `1m`.
    pub check_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// A fixed SPIFFE ID, for running `serve` without a Workload API.
    pub spiffe_id: Option<String>,
    /// How tenant and agent are read from the SPIFFE ID.
    pub pattern: Option<String>,
    /// The Workload API socket (`unix:///…`), else `$SPIFFE_ENDPOINT_SOCKET`.
    pub workload_api_socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub max_batch_paths: Option<usize>,
    /// Requests per second per caller identity; 0 turns limiting off.
    pub rate_per_second: Option<u32>,
    pub rate_burst: Option<u32>,
}

impl Config {
    /// Reads a `.toml` file as TOML and anything else as YAML (which also reads JSON).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| fail(e.to_string()))
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))
        }
    }
}

/// Flags shared by `dev` and `serve`; each wins over the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub keyring: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub roles: Vec<RoleRule>,
    pub max_body_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub rate_limit: Option<u32>,
    pub expiry_webhook: Option<String>,
    pub expiry_check_interval: Option<String>,
    pub policy_dir: Option<PathBuf>,
    pub workload_api: Option<String>,
    pub audit_max_len: Option<usize>,
    pub audit_fail_closed: Option<bool>,
}

/// Where the workload's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySettings {
    /// Known up front (dev, or a fixed `identity.spiffe_id`): a self-signed SVID.
    Fixed(WorkloadIdentity),
    /// Fetched and followed from the SPIFFE Workload API; `pattern` reads tenant and agent.
    WorkloadApi { endpoint: String, pattern: String },
}

#[derive(Debug, Clone)]
pub enum StorageSettings {
    Embedded(PathBuf),
    Redis(RedisTarget),
}

/// Everything a sidecar needs to start, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub storage: StorageSettings,
    pub keyring: PathBuf,
    /// Make a fresh keyring at `keyring` if none exists (dev only).
    pub create_keyring: bool,
    pub metrics_addr: Option<SocketAddr>,
    pub roles: RoleMap,
    pub identity: IdentitySettings,
    /// Rego files to load and watch; the built-in policy when `None`.
    pub policy_dir: Option<PathBuf>,
    pub policy: PolicyConfig,
    pub access: AccessSettings,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub rates: RateSettings,
    pub expiry_webhook: Option<String>,
    pub expiry_check_interval: Duration,
    pub audit: AuditSettings,
}

/// Default interval between expiry-warning scans.
pub const DEFAULT_EXPIRY_CHECK: Duration = Duration::from_secs(60);

fn duration(field: &'static str, text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    text.map(|t| humantime::parse_duration(t).map_err(|e| invalid(field, format!("`{t}`: {e}"))))
        .transpose()
}

impl Settings {
    /// Merges flags over the file over the defaults. `identity` is the dev
    /// identity, or `None` to take it from the file.
    pub fn resolve(
        config: Config,
        flags: Overrides,
        identity: Option<WorkloadIdentity>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        let data_dir = flags
            .data_dir
            .or(config.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let storage = match flags
            .redis_url
            .or(config.redis_url)
            .filter(|u| !u.is_empty())
        {
            Some(url) => StorageSettings::Redis(RedisTarget::parse(&url)),
            None => StorageSettings::Embedded(data_dir.join("store.redb")),
        };
        let keyring = match flags.keyring.or(config.keyring) {
            Some(path) => path,
            None if dev => data_dir.join("keyring.json"),
            None => {
                return Err(invalid(
                    "keyring",
                    "serve needs a keyring file (`--keyring` or `keyring:`)",
                ))
            }
        };
        let socket_mode = match config.socket_mode {
            Some(mode) => u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| invalid("socket_mode", "an octal file mode such as 0660"))?,
            None => 0o660,
        };
        let metrics = flags
            .metrics_addr
            .or(config.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_owned());
        let metrics_addr = match metrics.as_str() {
            "off" | "" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "metrics_addr",
                    format!("`{addr}` is not host:port or `off`"),
                )
            })?),
        };
        let mut rules = Vec::new();
        for (role, matchers) in config.roles {
            let list = match matchers {
                Matchers::One(m) => vec![m],
                Matchers::Many(ms) => ms,
            };
            for m in list {
                rules.push(format!("{role}={m}").parse()?);
            }
        }
        // Flag rules come first so they win over the file's.
        let roles = RoleMap::new(flags.roles.into_iter().chain(rules).collect());
        let pattern = config
            .identity
            .pattern
            .clone()
            .unwrap_or_else(|| DEFAULT_ID_PATTERN.to_owned());
        let endpoint = flags.workload_api.or(config.identity.workload_api_socket);
        let identity = match (identity, config.identity.spiffe_id, endpoint) {
            (Some(identity), _, _) => IdentitySettings::Fixed(identity),
            (None, Some(id), _) => IdentitySettings::Fixed(WorkloadIdentity::parse(&id, &pattern)?),
            (None, None, Some(endpoint)) => {
                crate::svid::validate_endpoint(&endpoint)
                    .map_err(|e| invalid("identity.workload_api_socket", e.to_string()))?;
                IdentitySettings::WorkloadApi { endpoint, pattern }
            }
            (None, None, None) => {
                return Err(invalid(
                    "identity.workload_api_socket",
                    "serve needs the Workload API (SPIFFE_ENDPOINT_SOCKET, --workload-api) or a fixed identity.spiffe_id",
                ))
            }
        };
        let policy_defaults = PolicyConfig::default();
        let policy = PolicyConfig {
            approver_roles: config
                .policy
                .approver_roles
                .unwrap_or(policy_defaults.approver_roles),
            auditor_roles: config
                .policy
                .auditor_roles
                .unwrap_or(policy_defaults.auditor_roles),
        };
        let policy_dir = flags.policy_dir.or(config.policy.dir);
        let access = AccessSettings {
            sensitive_needs_approval: config.approvals.sensitive,
        };
        let per_second = flags
            .rate_limit
            .or(config.limits.rate_per_second)
            .unwrap_or(RateSettings::default().per_second);
        let rates = RateSettings {
            per_second,
            burst: config
                .limits
                .rate_burst
                .unwrap_or(per_second.saturating_mul(2)),
        };
        let audit_defaults = AuditSettings::default();
        let audit = AuditSettings {
            max_len: flags
                .audit_max_len
                .or(config.audit.max_len)
                .unwrap_or(audit_defaults.max_len),
            fail_closed: flags
                .audit_fail_closed
                .or(config.audit.fail_closed)
                .unwrap_or(audit_defaults.fail_closed),
            buffer: config.audit.buffer.unwrap_or(audit_defaults.buffer),
        };
        if audit.max_len == 0 {
            return Err(invalid("audit.max_len", "must be at least 1"));
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_value_bytes: flags
                .max_value_bytes
                .or(config.limits.max_value_bytes)
                .unwrap_or(defaults.max_value_bytes),
            max_batch_paths: config
                .limits
                .max_batch_paths
                .unwrap_or(defaults.max_batch_paths),
            max_import_entries: defaults.max_import_entries,
            max_versions: config.history.max_versions.unwrap_or(defaults.max_versions),
            max_version_age: duration("history.max_age", config.history.max_age.as_deref())?,
            default_grace: duration(
                "history.default_grace",
                config.history.default_grace.as_deref(),
            )?
            .unwrap_or(defaults.default_grace),
        };
        let expiry_webhook = flags
            .expiry_webhook
            .or(config.expiry.webhook_url)
            .filter(|u| !u.is_empty());
        if let Some(url) = &expiry_webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "expiry.webhook_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        let expiry_check_interval = duration(
            "expiry.check_interval",
            flags
                .expiry_check_interval
                .or(config.expiry.check_interval)
                .as_deref(),
        )?
        .unwrap_or(DEFAULT_EXPIRY_CHECK);
        Ok(Self {
            socket: flags
                .socket
                .or(config.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            socket_mode,
            storage,
            keyring,
            create_keyring: dev,
            metrics_addr,
            roles,
            identity,
            limits,
            max_body_bytes: flags
                .max_body_bytes
                .or(config.limits.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            rates,
            expiry_webhook,
            expiry_check_interval,
            audit,
            policy_dir,
            policy,
            access,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn yaml_and_toml_resolve_alike_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = write(
            dir.path(),
            "c.yaml",
            "socket: /tmp/a.sock\nsocket_mode: '0600'\nredis_url: redis://127.0.0.1:1/\nkeyring: /k.json\n\
             metrics_addr: 'off'\nroles:\n  researcher: uid:1001\n  writer: [gid:2000, 'exe:/bin/w']\n\
             identity:\n  spiffe_id: spiffe://td/agent/acme/bot\nlimits:\n  max_value_bytes: 10\n",
        );
        let toml = write(
            dir.path(),
            "c.toml",
            "socket = \"/tmp/a.sock\"\nsocket_mode = \"0600\"\nredis_url = \"redis://127.0.0.1:1/\"\n\
             keyring = \"/k.json\"\nmetrics_addr = \"off\"\n[roles]\nresearcher = \"uid:1001\"\n\
             writer = [\"gid:2000\", \"exe:/bin/w\"]\n[identity]\nspiffe_id = \"spiffe://td/agent/acme/bot\"\n\
             [limits]\nmax_value_bytes = 10\n",
        );
        for file in [yaml, toml] {
            let s = Settings::resolve(
                Config::load(&file).unwrap(),
                Overrides::default(),
                None,
                false,
            )
            .unwrap();
            assert_eq!(s.socket, PathBuf::from("/tmp/a.sock"));
            assert_eq!(s.socket_mode, 0o600);
            assert!(matches!(
                s.storage,
                StorageSettings::Redis(RedisTarget::Standalone(_))
            ));
            assert_eq!(s.metrics_addr, None);
            assert_eq!(s.roles.rules().len(), 3);
            assert!(matches!(&s.identity, IdentitySettings::Fixed(id) if id.tenant == "acme"));
            assert_eq!(s.limits.max_value_bytes, 10);

            let flags = Overrides {
                socket: Some("/tmp/b.sock".into()),
                redis_url: Some(String::new()),
                metrics_addr: Some("127.0.0.1:9999".into()),
                roles: vec!["boss=uid:1001".parse().unwrap()],
                ..Overrides::default()
            };
            let s = Settings::resolve(Config::load(&file).unwrap(), flags, None, false).unwrap();
            assert_eq!(s.socket, PathBuf::from("/tmp/b.sock"));
            assert!(matches!(s.storage, StorageSettings::Embedded(_)));
            assert_eq!(s.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
            let cred = crate::identity::PeerCred {
                pid: None,
                uid: 1001,
                gid: 0,
            };
            assert_eq!(s.roles.resolve(&cred), Some("boss"));
        }
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let unknown = write(dir.path(), "u.yaml", "sockett: /x\n");
        assert!(Config::load(&unknown)
            .unwrap_err()
            .to_string()
            .contains("sockett"));
        let mode = Config {
            socket_mode: Some("999".into()),
            ..Config::default()
        };
        let err = Settings::resolve(mode, Overrides::default(), None, true).unwrap_err();
        assert!(err.to_string().contains("socket_mode"), "{err}");
        let no_id = Config {
            keyring: Some("/k".into()),
            ..Config::default()
        };
        let err = Settings::resolve(no_id, Overrides::default(), None, false).unwrap_err();
        assert!(err.to_string().contains("SPIFFE_ENDPOINT_SOCKET"), "{err}");
        let bad_id = Config {
            keyring: Some("/k".into()),
            identity: IdentityConfig {
                spiffe_id: Some("spiffe://td/other/x".into()),
                pattern: None,
                workload_api_socket: None,
            },
            ..Config::default()
        };
        let err = Settings::resolve(bad_id, Overrides::default(), None, false).unwrap_err();
        assert!(
            matches!(err, ConfigError::Identity(IdentityError::NoMatch { .. })),
            "{err}"
        );
    }
}
