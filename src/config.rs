//! Sidecar configuration: a YAML or TOML file, overridden by flags and
//! `AGENTVAULT_*` environment variables, resolved into [`Settings`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::audit::AuditSettings;
use crate::envoy::{EnvoySettings, OnError, DEFAULT_DECISION_RULE};
use crate::identity::{
    IdentityError, RoleMap, RoleRule, UnmappedCallers, WorkloadIdentity, DEFAULT_ID_PATTERN,
};
use crate::policy::PolicyConfig;
use crate::ratelimit::RateSettings;
use crate::socket::api::DEFAULT_MAX_BODY_BYTES;
use crate::socket::server::ConnectionLimits;
use crate::store::{CacheSettings, RedisPassword, RedisSecurity, RedisTarget, RedisTls};
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
    /// What a caller no role matches may do: `agent` or `refuse` (see
    /// [`UnmappedCallers`]); `serve` refuses by default once roles are set.
    pub unmapped_callers: Option<String>,
    pub identity: IdentityConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub expiry: ExpiryConfig,
    pub policy: PolicySection,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    pub cache: CacheConfig,
    pub envoy: EnvoyConfig,
    pub redact: RedactConfig,
    /// The Redis ACL user (or name it in `redis_url`: `redis://USER@host`).
    pub redis_username: Option<String>,
    /// File holding the Redis ACL user's password.
    pub redis_password_file: Option<PathBuf>,
    /// TLS to Redis (`rediss://` URLs).
    pub redis_tls: RedisTlsConfig,
}

/// PEM files for TLS to Redis. `ca_file` is the CA that signed Redis's
/// certificate (the system roots if unset); `cert_file` and `key_file`, set
/// together, are the client certificate for Redis's `tls-auth-clients`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Each field of `over` that is set wins over this one's.
    fn or(self, over: RedisTlsConfig) -> Self {
        Self {
            ca_file: over.ca_file.or(self.ca_file),
            cert_file: over.cert_file.or(self.cert_file),
            key_file: over.key_file.or(self.key_file),
        }
    }
}

/// Reads the Redis password (a file wins over `env_password`, which is
/// `AGENTVAULT_REDIS_PASSWORD`) and TLS files for a Redis at `url`, and
/// checks that `username` agrees with any user named in `url`. Errors name
/// files, never their contents.
pub fn redis_security(
    url: &str,
    username: Option<&str>,
    password_file: Option<&Path>,
    env_password: Option<RedisPassword>,
    tls: &RedisTlsConfig,
) -> Result<RedisSecurity, ConfigError> {
    let username = username.filter(|u| !u.is_empty()).map(str::to_owned);
    if let Some(username) = &username {
        if username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "redis_username",
                "a Redis user name has no spaces or control characters",
            ));
        }
        for url in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let named = redis::IntoConnectionInfo::into_connection_info(url)
                .ok()
                .and_then(|info| info.redis_settings().username().map(str::to_owned));
            if named.as_deref().is_some_and(|n| n != username) {
                return Err(invalid(
                    "redis_username",
                    "differs from the user named in redis_url: give the user in one place",
                ));
            }
        }
    }
    let read = |field: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))
    };
    let password = match password_file {
        Some(path) => {
            let bytes = Zeroizing::new(read("redis_password_file", path)?);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| {
                    invalid(
                        "redis_password_file",
                        format!("{} is not UTF-8", path.display()),
                    )
                })?
                .trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                return Err(invalid(
                    "redis_password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Some(RedisPassword::new(text.to_owned()))
        }
        None => env_password.filter(|p| !p.expose().is_empty()),
    };
    let urls_are_tls = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .all(|u| u.starts_with("rediss://"));
    let tls = if tls.is_set() {
        if !urls_are_tls {
            return Err(invalid(
                "redis_tls",
                "TLS files are set but redis_url is not a rediss:// URL",
            ));
        }
        let (client_cert_pem, client_key_pem) = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => (
                Some(read("redis_tls.cert_file", cert)?),
                Some(Zeroizing::new(read("redis_tls.key_file", key)?)),
            ),
            (None, None) => (None, None),
            _ => return Err(invalid("redis_tls", "cert_file and key_file go together")),
        };
        Some(RedisTls {
            ca_pem: tls
                .ca_file
                .as_deref()
                .map(|ca| read("redis_tls.ca_file", ca))
                .transpose()?,
            client_cert_pem,
            client_key_pem,
        })
    } else if urls_are_tls {
        Some(RedisTls::default())
    } else {
        None
    };
    Ok(RedisSecurity {
        username,
        password,
        tls,
    })
}

/// The Envoy ext_authz front end (off unless `socket` is set).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvoyConfig {
    /// The Unix socket Envoy's ext_authz filter calls (gRPC).
    pub socket: Option<PathBuf>,
    /// The Rego rule each Check evaluates (default `data.envoy.authz.allow`).
    pub decision_rule: Option<String>,
    /// Parse JSON and form bodies Envoy sends into `input.parsed_body` (default false).
    pub parse_body: Option<bool>,
    /// What a Check answers when the policy fails to evaluate: `deny` (default) or `allow`.
    pub on_error: Option<String>,
}

/// The sealed-record cache (on by default; either bound at 0 turns it off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Reads held in memory (default 10000).
    pub max_entries: Option<usize>,
    /// Approximate bytes of sealed records held in memory (default 16 MiB).
    pub max_bytes: Option<usize>,
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
    /// The lowest tier whose reads answer only once their audit event is
    /// stored: `critical` (default), `sensitive`, `standard` or `none`.
    pub strict_reads: Option<String>,
    /// Audit streams (SSE) served at once, all sharing one follower of the
    /// store (default 64); one more answers 503.
    pub max_streams: Option<usize>,
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

/// The leak guard (`POST /v1/redact`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Secret values shorter than this many bytes are not matched (default 8).
    pub min_bytes: Option<usize>,
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
    /// How long a request's headers may take to arrive, e.g. `10s`.
    pub header_timeout: Option<String>,
    /// How long an idle keep-alive connection stays open, e.g. `60s`.
    pub idle_timeout: Option<String>,
    /// Socket connections open at once (default 1024).
    pub max_connections: Option<usize>,
    /// Socket connections open at once from one uid (default 256).
    pub max_connections_per_uid: Option<usize>,
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
    pub socket_mode: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub keyring: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub roles: Vec<RoleRule>,
    pub unmapped_callers: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub rate_limit: Option<u32>,
    pub expiry_webhook: Option<String>,
    pub expiry_check_interval: Option<String>,
    pub policy_dir: Option<PathBuf>,
    pub workload_api: Option<String>,
    pub audit_max_len: Option<usize>,
    pub audit_fail_closed: Option<bool>,
    pub audit_max_streams: Option<usize>,
    /// Let `serve` run with a master keyring (dev always may).
    pub allow_master_keyring: bool,
    pub redis_username: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    /// `AGENTVAULT_REDIS_PASSWORD`, used when no password file is given.
    pub redis_password: Option<RedisPassword>,
    pub redis_tls: RedisTlsConfig,
    pub envoy_socket: Option<PathBuf>,
    pub envoy_decision_rule: Option<String>,
    pub envoy_parse_body: Option<bool>,
    pub envoy_on_error: Option<String>,
    pub cache_max_entries: Option<usize>,
    pub redact_min_bytes: Option<usize>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_uid: Option<usize>,
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
    /// Accept a master keyring, which opens every tenant's records (dev, or
    /// `serve --allow-master-keyring`); otherwise only a tenant keyring.
    pub allow_master_keyring: bool,
    /// The Redis ACL user's password and TLS to Redis (unused by the embedded store).
    pub redis_security: RedisSecurity,
    pub metrics_addr: Option<SocketAddr>,
    pub roles: RoleMap,
    /// What a caller no role matches may do.
    pub unmapped_callers: UnmappedCallers,
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
    /// The Envoy ext_authz server, when configured.
    pub envoy: Option<EnvoySettings>,
    pub cache: CacheSettings,
    /// Timeouts and caps of the socket's connections.
    pub connections: ConnectionLimits,
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
        let redis_url = flags
            .redis_url
            .or(config.redis_url)
            .filter(|u| !u.is_empty());
        let redis_tls = config.redis_tls.or(flags.redis_tls);
        let (storage, redis_security) = match redis_url {
            Some(url) => (
                StorageSettings::Redis(RedisTarget::parse(&url)),
                redis_security(
                    &url,
                    flags.redis_username.or(config.redis_username).as_deref(),
                    flags
                        .redis_password_file
                        .or(config.redis_password_file)
                        .as_deref(),
                    flags.redis_password,
                    &redis_tls,
                )?,
            ),
            None => (
                StorageSettings::Embedded(data_dir.join("store.redb")),
                RedisSecurity::default(),
            ),
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
        let socket_mode = match flags.socket_mode.or(config.socket_mode) {
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
        // dev keeps every caller acting as the agent unless told otherwise;
        // serve does so only while no role is configured.
        let unmapped_callers = match flags.unmapped_callers.or(config.unmapped_callers) {
            Some(text) => text
                .parse()
                .map_err(|e: String| invalid("unmapped_callers", e))?,
            None if dev || roles.rules().is_empty() => UnmappedCallers::Agent,
            None => UnmappedCallers::Refuse,
        };
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
            max_streams: flags
                .audit_max_streams
                .or(config.audit.max_streams)
                .unwrap_or(audit_defaults.max_streams),
            strict_reads: match config.audit.strict_reads.as_deref() {
                None => audit_defaults.strict_reads,
                Some("none") => None,
                Some(tier) => Some(
                    serde_json::from_value(serde_json::Value::String(tier.to_owned())).map_err(
                        |_| {
                            invalid(
                                "audit.strict_reads",
                                "one of critical, sensitive, standard, none",
                            )
                        },
                    )?,
                ),
            },
        };
        if audit.max_len == 0 {
            return Err(invalid("audit.max_len", "must be at least 1"));
        }
        if audit.max_streams == 0 {
            return Err(invalid("audit.max_streams", "must be at least 1"));
        }
        let cache_defaults = CacheSettings::default();
        let cache = CacheSettings {
            max_entries: flags
                .cache_max_entries
                .or(config.cache.max_entries)
                .unwrap_or(cache_defaults.max_entries),
            max_bytes: config.cache.max_bytes.unwrap_or(cache_defaults.max_bytes),
        };
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
            redact_min_bytes: flags
                .redact_min_bytes
                .or(config.redact.min_bytes)
                .unwrap_or(defaults.redact_min_bytes),
        };
        if limits.redact_min_bytes == 0 {
            return Err(invalid(
                "redact.min_bytes",
                "must be at least 1 (an empty value would match everywhere)",
            ));
        }
        let connection_defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            header_timeout: duration(
                "limits.header_timeout",
                flags
                    .header_timeout
                    .or(config.limits.header_timeout)
                    .as_deref(),
            )?
            .unwrap_or(connection_defaults.header_timeout),
            idle_timeout: duration(
                "limits.idle_timeout",
                flags.idle_timeout.or(config.limits.idle_timeout).as_deref(),
            )?
            .unwrap_or(connection_defaults.idle_timeout),
            max_connections: flags
                .max_connections
                .or(config.limits.max_connections)
                .unwrap_or(connection_defaults.max_connections),
            max_per_uid: flags
                .max_connections_per_uid
                .or(config.limits.max_connections_per_uid)
                .unwrap_or(connection_defaults.max_per_uid),
        };
        if connections.header_timeout.is_zero() || connections.idle_timeout.is_zero() {
            return Err(invalid(
                "limits.header_timeout",
                "timeouts must be longer than zero",
            ));
        }
        if connections.max_connections == 0 || connections.max_per_uid == 0 {
            return Err(invalid(
                "limits.max_connections",
                "connection caps must be at least 1",
            ));
        }
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
        let envoy = envoy_settings(EnvoyConfig {
            socket: flags.envoy_socket.or(config.envoy.socket),
            decision_rule: flags.envoy_decision_rule.or(config.envoy.decision_rule),
            parse_body: flags.envoy_parse_body.or(config.envoy.parse_body),
            on_error: flags.envoy_on_error.or(config.envoy.on_error),
        })?;
        Ok(Self {
            socket: flags
                .socket
                .or(config.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            socket_mode,
            storage,
            keyring,
            create_keyring: dev,
            allow_master_keyring: dev || flags.allow_master_keyring,
            redis_security,
            metrics_addr,
            roles,
            unmapped_callers,
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
            cache,
            policy_dir,
            policy,
            access,
            envoy,
            connections,
        })
    }
}

/// The Envoy section with its flags applied; `None` when no socket is set.
fn envoy_settings(config: EnvoyConfig) -> Result<Option<EnvoySettings>, ConfigError> {
    let Some(socket) = config.socket else {
        return Ok(None);
    };
    let decision_rule = config
        .decision_rule
        .unwrap_or_else(|| DEFAULT_DECISION_RULE.to_owned());
    let rule_ok = decision_rule.strip_prefix("data.").is_some_and(|rest| {
        rest.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    });
    if !rule_ok {
        return Err(invalid(
            "envoy.decision_rule",
            format!("`{decision_rule}` is not a rule path such as data.envoy.authz.allow"),
        ));
    }
    let on_error = match config.on_error.as_deref() {
        None | Some("deny") => OnError::Deny,
        Some("allow") => OnError::Allow,
        Some(other) => {
            return Err(invalid(
                "envoy.on_error",
                format!("`{other}`: expected deny or allow"),
            ))
        }
    };
    Ok(Some(EnvoySettings {
        socket,
        decision_rule,
        parse_body: config.parse_body.unwrap_or(false),
        on_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Durations written as humantime writes them read back exactly;
        /// any other text is a config error naming the field, never a panic.
        #[test]
        fn durations_round_trip_and_garbage_is_refused(
            secs in 0u64..10_000_000_000,
            nanos in 0u32..1_000_000_000,
            text in "\\PC{0,24}",
        ) {
            let d = Duration::new(secs, nanos);
            let written = humantime::format_duration(d).to_string();
            proptest::prop_assert_eq!(duration("f", Some(&written)).ok().flatten(), Some(d));
            if let Err(err) = duration("f", Some(&text)) {
                proptest::prop_assert!(matches!(err, ConfigError::Invalid { field: "f", .. }), "{err}");
            }
        }
    }

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
    fn serve_needs_no_file_and_flags_set_mode_and_password() {
        let flags = Overrides {
            keyring: Some("/etc/agentvault/keyring/keyring.json".into()),
            socket_mode: Some("0666".into()),
            redis_url: Some("redis://redis:6379/".into()),
            redis_password: Some(RedisPassword::new("s3cret-pw".into())),
            workload_api: Some("unix:///spiffe-workload-api/spire-agent.sock".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(Config::default(), flags, None, false).unwrap();
        assert_eq!(s.socket_mode, 0o666);
        assert!(matches!(
            s.storage,
            StorageSettings::Redis(RedisTarget::Standalone(_))
        ));
        assert!(s.redis_security.password.is_some());
        // Neither the settings nor the URL ever show the password.
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn serve_refuses_unmapped_callers_once_roles_are_set_unless_told_otherwise() {
        let serve = |roles: &[&str], flag: Option<&str>, file: Option<&str>| {
            let flags = Overrides {
                keyring: Some("/k.json".into()),
                workload_api: Some("unix:///w.sock".into()),
                roles: roles.iter().map(|r| r.parse().unwrap()).collect(),
                unmapped_callers: flag.map(str::to_owned),
                ..Overrides::default()
            };
            let config = Config {
                unmapped_callers: file.map(str::to_owned),
                ..Config::default()
            };
            Settings::resolve(config, flags, None, false).map(|s| s.unmapped_callers)
        };
        use UnmappedCallers::{Agent, Refuse};
        assert_eq!(serve(&[], None, None).unwrap(), Agent);
        assert_eq!(serve(&["w=uid:1"], None, None).unwrap(), Refuse);
        assert_eq!(serve(&["w=uid:1"], Some("agent"), None).unwrap(), Agent);
        assert_eq!(serve(&["w=uid:1"], None, Some("agent")).unwrap(), Agent);
        assert_eq!(
            serve(&["w=uid:1"], Some("refuse"), Some("agent")).unwrap(),
            Refuse
        );
        let err = serve(&[], Some("everyone"), None).unwrap_err();
        assert!(err.to_string().contains("unmapped_callers"), "{err}");

        // dev keeps every caller acting as the agent unless told otherwise.
        let dev = WorkloadIdentity::new("td", "t", "a").ok();
        let flags = Overrides {
            roles: vec!["w=uid:1".parse().unwrap()],
            ..Overrides::default()
        };
        let s = Settings::resolve(Config::default(), flags, dev, true).unwrap();
        assert_eq!(s.unmapped_callers, Agent);
    }

    #[test]
    fn connection_limits_and_strict_reads_come_from_the_file_and_flags_win() {
        let dev = || WorkloadIdentity::new("td", "t", "a").ok();
        let defaults =
            Settings::resolve(Config::default(), Overrides::default(), dev(), true).unwrap();
        assert_eq!(defaults.connections, ConnectionLimits::default());
        assert_eq!(
            defaults.audit.strict_reads,
            Some(crate::model::Tier::Critical)
        );
        let file: Config = serde_yaml_ng::from_str(
            "limits:\n  header_timeout: 3s\n  idle_timeout: 2m\n  max_connections: 50\n  \
             max_connections_per_uid: 5\naudit:\n  strict_reads: sensitive\n",
        )
        .unwrap();
        let flags = Overrides {
            max_connections: Some(70),
            ..Overrides::default()
        };
        let s = Settings::resolve(file, flags, dev(), true).unwrap();
        assert_eq!(
            s.connections,
            ConnectionLimits {
                header_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(120),
                max_connections: 70,
                max_per_uid: 5,
            }
        );
        assert_eq!(s.audit.strict_reads, Some(crate::model::Tier::Sensitive));
        for bad in [
            "audit:\n  strict_reads: everything\n",
            "limits:\n  max_connections: 0\n",
            "limits:\n  header_timeout: 0s\n",
        ] {
            let file: Config = serde_yaml_ng::from_str(bad).unwrap();
            assert!(
                Settings::resolve(file, Overrides::default(), dev(), true).is_err(),
                "{bad}"
            );
        }
        let none: Config = serde_yaml_ng::from_str("audit:\n  strict_reads: none\n").unwrap();
        let s = Settings::resolve(none, Overrides::default(), dev(), true).unwrap();
        assert_eq!(s.audit.strict_reads, None);
    }

    #[test]
    fn envoy_is_off_unless_a_socket_is_set_and_flags_win() {
        let dev = || WorkloadIdentity::new("td", "t", "a").ok();
        let off = Settings::resolve(Config::default(), Overrides::default(), dev(), true).unwrap();
        assert_eq!(off.envoy, None);

        let file: Config = serde_yaml_ng::from_str(
            "envoy:\n  socket: /run/e.sock\n  parse_body: true\n  on_error: allow\n",
        )
        .unwrap();
        let flags = Overrides {
            envoy_decision_rule: Some("data.mesh.authz.decision".into()),
            ..Overrides::default()
        };
        let on = Settings::resolve(file, flags, dev(), true).unwrap();
        assert_eq!(
            on.envoy,
            Some(EnvoySettings {
                socket: "/run/e.sock".into(),
                decision_rule: "data.mesh.authz.decision".into(),
                parse_body: true,
                on_error: OnError::Allow,
            })
        );
        let defaults = Overrides {
            envoy_socket: Some("/e.sock".into()),
            ..Overrides::default()
        };
        let defaults = Settings::resolve(Config::default(), defaults, dev(), true).unwrap();
        let envoy = defaults.envoy.unwrap();
        assert_eq!(
            (
                envoy.decision_rule.as_str(),
                envoy.parse_body,
                envoy.on_error
            ),
            (DEFAULT_DECISION_RULE, false, OnError::Deny)
        );

        for (rule, on_error, field) in [
            ("envoy.authz.allow", "deny", "envoy.decision_rule"),
            ("data.envoy..allow", "deny", "envoy.decision_rule"),
            ("data.envoy.authz.allow", "maybe", "envoy.on_error"),
        ] {
            let flags = Overrides {
                envoy_socket: Some("/e.sock".into()),
                envoy_decision_rule: Some(rule.into()),
                envoy_on_error: Some(on_error.into()),
                ..Overrides::default()
            };
            let err = Settings::resolve(Config::default(), flags, dev(), true).unwrap_err();
            assert!(err.to_string().contains(field), "{rule} {on_error}: {err}");
        }
    }

    #[test]
    fn the_cache_is_on_by_default_and_a_zero_bound_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str, flags: Overrides| {
            let file = write(dir.path(), "c.yaml", text);
            let config = Config::load(&file).unwrap();
            Settings::resolve(config, flags, None, true).unwrap().cache
        };
        let id = "identity:\n  spiffe_id: spiffe://td/agent/acme/bot\n";
        let default = resolve(id, Overrides::default());
        assert_eq!(default, CacheSettings::default());
        assert!(default.enabled());
        let sized = resolve(
            &format!("{id}cache:\n  max_entries: 5\n  max_bytes: 4096\n"),
            Overrides::default(),
        );
        assert_eq!((sized.max_entries, sized.max_bytes), (5, 4096));
        assert!(!resolve(
            &format!("{id}cache:\n  max_bytes: 0\n"),
            Overrides::default()
        )
        .enabled());
        let off = Overrides {
            cache_max_entries: Some(0),
            ..Overrides::default()
        };
        assert!(!resolve(&format!("{id}cache:\n  max_entries: 5\n"), off).enabled());
    }

    #[test]
    fn the_redaction_minimum_defaults_to_8_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str, flags: Overrides| {
            let file = write(dir.path(), "c.yaml", text);
            Settings::resolve(Config::load(&file).unwrap(), flags, None, true)
        };
        let id = "identity:\n  spiffe_id: spiffe://td/agent/acme/bot\n";
        let min = |s: Result<Settings, ConfigError>| s.unwrap().limits.redact_min_bytes;
        assert_eq!(min(resolve(id, Overrides::default())), 8);
        let file = format!("{id}redact:\n  min_bytes: 12\n");
        assert_eq!(min(resolve(&file, Overrides::default())), 12);
        let flag = Overrides {
            redact_min_bytes: Some(4),
            ..Overrides::default()
        };
        assert_eq!(min(resolve(&file, flag)), 4);
        let zero = resolve(
            &format!("{id}redact:\n  min_bytes: 0\n"),
            Overrides::default(),
        );
        assert!(zero.unwrap_err().to_string().contains("redact.min_bytes"));
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

    #[test]
    fn the_redis_user_comes_from_the_url_or_apart_from_it_but_not_both_ways() {
        let dev = || Some(WorkloadIdentity::new("td", "acme", "bot").unwrap());
        let resolve = |url: &str, user: Option<&str>| {
            let flags = Overrides {
                redis_url: Some(url.into()),
                redis_username: user.map(str::to_owned),
                ..Overrides::default()
            };
            Settings::resolve(Config::default(), flags, dev(), true)
        };
        let s = resolve("redis://h:1/", Some("acme-sidecar")).unwrap();
        assert_eq!(s.redis_security.username.as_deref(), Some("acme-sidecar"));
        let s = resolve("redis://acme-sidecar@h:1/", Some("acme-sidecar")).unwrap();
        assert_eq!(s.redis_security.username.as_deref(), Some("acme-sidecar"));
        let s = resolve("redis://h:1/", Some("")).unwrap();
        assert_eq!(s.redis_security.username, None, "an empty name is no name");
        for (url, user) in [
            ("redis://globex-sidecar@h:1/", "acme-sidecar"),
            ("redis://h:1/", "two words"),
        ] {
            let err = resolve(url, Some(user)).unwrap_err().to_string();
            assert!(err.contains("redis_username"), "{err}");
        }
    }

    #[test]
    fn redis_password_and_tls_resolve_and_stay_out_of_debug_output() {
        let dev = || Some(WorkloadIdentity::new("td", "acme", "bot").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let pw = write(dir.path(), "pw", "s3cret-from-file\n");
        let ca = write(dir.path(), "ca.pem", "not checked here");
        let env = || Some(RedisPassword::new("s3cret-from-env".into()));
        let flags = |url: &str| Overrides {
            redis_url: Some(url.into()),
            redis_password_file: Some(pw.clone()),
            redis_password: env(),
            redis_tls: RedisTlsConfig {
                ca_file: Some(ca.clone()),
                ..RedisTlsConfig::default()
            },
            ..Overrides::default()
        };
        let s =
            Settings::resolve(Config::default(), flags("rediss://u@h:1/"), dev(), true).unwrap();
        let password = s.redis_security.password.as_ref().unwrap();
        assert_eq!(
            password.expose(),
            "s3cret-from-file",
            "the file wins, newline trimmed"
        );
        let tls = s.redis_security.tls.as_ref().unwrap();
        assert_eq!(tls.ca_pem.as_deref(), Some(&b"not checked here"[..]));
        assert!(tls.client_cert_pem.is_none());
        assert!(!format!("{s:?}").contains("s3cret"));

        let env_only = Overrides {
            redis_url: Some("redis://u@h:1/".into()),
            redis_password: env(),
            ..Overrides::default()
        };
        let s = Settings::resolve(Config::default(), env_only, dev(), true).unwrap();
        assert_eq!(
            s.redis_security.password.unwrap().expose(),
            "s3cret-from-env"
        );
        assert!(s.redis_security.tls.is_none());

        let err = Settings::resolve(Config::default(), flags("redis://h:1/"), dev(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a rediss:// URL"), "{err}");
        let empty = write(dir.path(), "empty", "\n");
        let err = Settings::resolve(
            Config::default(),
            Overrides {
                redis_password_file: Some(empty),
                ..flags("rediss://h:1/")
            },
            dev(),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is empty"), "{err}");
        let half = Config {
            redis_url: Some("rediss://h:1/".into()),
            redis_tls: RedisTlsConfig {
                cert_file: Some(ca.clone()),
                ..RedisTlsConfig::default()
            },
            ..Config::default()
        };
        let err = Settings::resolve(half, Overrides::default(), dev(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("go together"), "{err}");
        let missing = Config {
            redis_url: Some("redis://h:1/".into()),
            redis_password_file: Some(dir.path().join("nope")),
            ..Config::default()
        };
        let err = Settings::resolve(missing, Overrides::default(), dev(), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis_password_file") && err.contains("nope"),
            "{err}"
        );
    }
}
