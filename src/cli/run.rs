//! The sidecars: `agentvault dev` and `agentvault serve`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::config::{
    Config, Overrides, RedisTlsConfig, Settings, StorageSettings, DEFAULT_DATA_DIR,
    DEFAULT_METRICS_ADDR,
};
use crate::identity::{IdentityError, RoleRule, WorkloadIdentity};
use crate::sidecar::Sidecar;
use crate::store::RedisPassword;

/// Flags shared by `dev` and `serve`.
#[derive(Debug, Args)]
pub struct SidecarFlags {
    /// Directory of the embedded store and, in dev, the keyring.
    #[arg(long, env = "AGENTVAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use Redis instead of the embedded store: `redis://[USER@]host:port/`
    /// (`rediss://` for TLS; comma-separated URLs for a cluster).
    #[arg(long, env = "AGENTVAULT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Octal mode of the socket file, e.g. 0666 (default 0660).
    #[arg(long, env = "AGENTVAULT_SOCKET_MODE", value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Where to serve Prometheus metrics (`host:port`, or `off`).
    #[arg(long, env = "AGENTVAULT_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Keyring file (`agentvault keygen` makes one; dev makes one if missing).
    #[arg(long, env = "AGENTVAULT_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Map local callers to a role: NAME=uid:N, NAME=gid:N or NAME=exe:/path.
    #[arg(long = "role", value_name = "NAME=MATCH")]
    pub roles: Vec<RoleRule>,
    /// What a local caller that no --role matches may do: `agent` (act as the
    /// whole agent) or `refuse` (only with a bearer token, and only what its
    /// scope allows). Default: `refuse` in serve once roles are set, else `agent`.
    #[arg(long, env = "AGENTVAULT_UNMAPPED_CALLERS", value_name = "agent|refuse")]
    pub unmapped_callers: Option<String>,
    /// Largest accepted request body.
    #[arg(long, env = "AGENTVAULT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest accepted secret value.
    #[arg(long, env = "AGENTVAULT_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Requests per second each caller identity may make (0: unlimited).
    #[arg(long, env = "AGENTVAULT_RATE_LIMIT", value_name = "PER_SECOND")]
    pub rate_limit: Option<u32>,
    /// URL that receives expiry warnings (7 days and 1 day ahead).
    #[arg(long, env = "AGENTVAULT_EXPIRY_WEBHOOK")]
    pub expiry_webhook: Option<String>,
    /// How often to look for secrets nearing expiry, e.g. `1m`.
    #[arg(long, env = "AGENTVAULT_EXPIRY_CHECK_INTERVAL")]
    pub expiry_check_interval: Option<String>,
    /// Directory of Rego policies or an OPA bundle (directory or .tar.gz), reloaded on
    /// change (default: the built-in policy).
    #[arg(long, env = "AGENTVAULT_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// The SPIFFE Workload API socket (`serve`).
    #[arg(long = "workload-api", env = "SPIFFE_ENDPOINT_SOCKET")]
    pub workload_api: Option<String>,
    /// Audit events kept per tenant, approximately (default 100000).
    #[arg(long, env = "AGENTVAULT_AUDIT_MAX_LEN")]
    pub audit_max_len: Option<usize>,
    /// Refuse writes and critical reads while audit events cannot be stored (default true).
    #[arg(long, env = "AGENTVAULT_AUDIT_FAIL_CLOSED", value_name = "BOOL")]
    pub audit_fail_closed: Option<bool>,
    /// Audit streams (SSE) served at once, sharing one follower (default 64).
    #[arg(long, env = "AGENTVAULT_AUDIT_MAX_STREAMS")]
    pub audit_max_streams: Option<usize>,
    /// Sealed reads the cache holds (default 10000; 0 turns the cache off).
    #[arg(long, env = "AGENTVAULT_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<usize>,
    /// Shortest secret value `POST /v1/redact` matches, in bytes (default 8).
    #[arg(long, env = "AGENTVAULT_REDACT_MIN_BYTES")]
    pub redact_min_bytes: Option<usize>,
    /// How long a request's headers may take to arrive (default 10s).
    #[arg(long, env = "AGENTVAULT_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// How long an idle keep-alive connection stays open (default 60s).
    #[arg(long, env = "AGENTVAULT_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Socket connections open at once (default 1024); more are answered 503.
    #[arg(long, env = "AGENTVAULT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Socket connections open at once from one uid (default 256).
    #[arg(long, env = "AGENTVAULT_MAX_CONNECTIONS_PER_UID")]
    pub max_connections_per_uid: Option<usize>,
    /// Serve Envoy's ext_authz gRPC API on this Unix socket (off unless set).
    #[arg(long, env = "AGENTVAULT_ENVOY_SOCKET")]
    pub envoy_socket: Option<PathBuf>,
    /// The Rego rule each Envoy check evaluates (default data.envoy.authz.allow).
    #[arg(long, env = "AGENTVAULT_ENVOY_DECISION_RULE", value_name = "RULE")]
    pub envoy_decision_rule: Option<String>,
    /// Parse JSON and form bodies Envoy forwards into input.parsed_body (default false).
    #[arg(long, env = "AGENTVAULT_ENVOY_PARSE_BODY", value_name = "BOOL")]
    pub envoy_parse_body: Option<bool>,
    /// What an Envoy check answers when the policy fails: deny (default) or allow.
    #[arg(long, env = "AGENTVAULT_ENVOY_ON_ERROR", value_name = "deny|allow")]
    pub envoy_on_error: Option<String>,
    /// Threads serving requests (default: one per CPU the process may use).
    /// Fewer threads spend less CPU per request (less waking of one another);
    /// more serve more requests per second. Flag or environment only.
    #[arg(long, env = "AGENTVAULT_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    #[command(flatten)]
    pub redis_auth: RedisAuthFlags,
}

/// How to authenticate to Redis and verify it: shared by the sidecars and
/// `rewrap`. The ACL user's name goes in the URL (`redis://USER@host`); its
/// password comes from a file or `AGENTVAULT_REDIS_PASSWORD`, never a flag.
#[derive(Debug, Args)]
pub struct RedisAuthFlags {
    /// The Redis ACL user, when the URL names none (one URL for every
    /// tenant, each sidecar its tenant's user).
    #[arg(long, env = "AGENTVAULT_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// File holding the Redis ACL user's password.
    #[arg(long, env = "AGENTVAULT_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed Redis's TLS certificate (`rediss://`).
    #[arg(long, env = "AGENTVAULT_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for Redis's `tls-auth-clients`.
    #[arg(
        long,
        env = "AGENTVAULT_REDIS_TLS_CERT_FILE",
        requires = "redis_tls_key_file"
    )]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "AGENTVAULT_REDIS_TLS_KEY_FILE",
        requires = "redis_tls_cert_file"
    )]
    pub redis_tls_key_file: Option<PathBuf>,
}

impl RedisAuthFlags {
    pub fn tls(&self) -> RedisTlsConfig {
        RedisTlsConfig {
            ca_file: self.redis_tls_ca_file.clone(),
            cert_file: self.redis_tls_cert_file.clone(),
            key_file: self.redis_tls_key_file.clone(),
        }
    }
}

/// `AGENTVAULT_REDIS_PASSWORD`: read from the environment only, so it never
/// shows on a command line. An empty one counts as none (`config::redis_security`).
pub fn env_redis_password() -> Option<RedisPassword> {
    std::env::var("AGENTVAULT_REDIS_PASSWORD")
        .ok()
        .map(RedisPassword::new)
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub flags: SidecarFlags,
    /// The tenant of the dev identity `spiffe://dev.local/agent/TENANT/AGENT`.
    #[arg(long, default_value = "dev")]
    pub tenant: String,
    /// The agent of the dev identity.
    #[arg(long, default_value = "dev-agent")]
    pub agent: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML or TOML config file (`.toml` is TOML); flags and environment alone also suffice.
    #[arg(long, env = "AGENTVAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Accept a master keyring (it opens every tenant's secrets); without
    /// this flag serve needs a tenant keyring (`keygen --tenant`).
    #[arg(long, env = "AGENTVAULT_ALLOW_MASTER_KEYRING")]
    pub allow_master_keyring: bool,
    #[command(flatten)]
    pub flags: SidecarFlags,
}

/// The role `dev` gives its approver link (the default `policy.approver_roles`).
const DEV_APPROVER_ROLE: &str = "approver";

/// Runs the dev sidecar until SIGINT/SIGTERM.
pub async fn dev(socket: Option<PathBuf>, mut args: DevArgs) -> Result<(), CliError> {
    let identity = WorkloadIdentity::new("dev.local", &args.tenant, &args.agent)
        .map_err(|e| CliError::new(2, e.to_string()))?;
    let approver = if args.flags.roles.iter().any(|r| r.role == DEV_APPROVER_ROLE) {
        Approver::Mapped
    } else {
        let data_dir = args
            .flags
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        match approver_link(&data_dir) {
            Some(link) => {
                let rule: RoleRule = format!("{DEV_APPROVER_ROLE}=exe:{}", link.display())
                    .parse()
                    .map_err(|e: IdentityError| CliError::new(2, e.to_string()))?;
                args.flags.roles.push(rule);
                Approver::Link(link)
            }
            None => Approver::Unavailable,
        }
    };
    let metrics_moved = args.flags.metrics_addr.is_none() && default_metrics_taken();
    if metrics_moved {
        args.flags.metrics_addr = Some("127.0.0.1:0".to_owned());
    }
    let settings = Settings::resolve(
        Config::default(),
        overrides(socket, args.flags),
        Some(identity),
        true,
    )
    .map_err(|e| CliError::new(2, e.to_string()))?;
    let banner = DevBanner {
        approver,
        metrics_moved,
    };
    run_sidecar(settings, Some(banner)).await
}

/// What `dev` adds to its start-up message.
struct DevBanner {
    approver: Approver,
    /// The default metrics port was taken, so a free one was used.
    metrics_moved: bool,
}

/// Who can approve token requests on a dev sidecar.
enum Approver {
    /// The user gave `--role approver=…`.
    Mapped,
    /// This hard link to the binary is the approver (see [`approver_link`]).
    Link(PathBuf),
    /// No link could be made; the user has to map the role.
    Unavailable,
}

/// A hard link to this binary in the data dir. `dev` maps it to the approver
/// role by its path, so one user on one machine can request a token with
/// `agentvault` and approve it with the link: the policy refuses anyone
/// deciding their own request, and the link is a different caller. Remade at
/// every start, so it follows rebuilds. `None` when it cannot be made (e.g.
/// the data dir is on another file system); copying the binary instead would
/// cost its size at every start.
fn approver_link(data_dir: &Path) -> Option<PathBuf> {
    crate::fsmode::private_dir(data_dir).ok()?;
    let link = data_dir.canonicalize().ok()?.join("agentvault-approver");
    let exe = std::env::current_exe().ok()?;
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return None,
        _ => {}
    }
    std::fs::hard_link(&exe, &link).ok()?;
    Some(link)
}

/// Whether another process (another dev sidecar, most likely) holds the
/// default metrics address.
fn default_metrics_taken() -> bool {
    matches!(
        std::net::TcpListener::bind(DEFAULT_METRICS_ADDR),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Runs the production sidecar until SIGINT/SIGTERM.
pub async fn serve(socket: Option<PathBuf>, args: ServeArgs) -> Result<(), CliError> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| CliError::new(2, e.to_string()))?,
        None => Config::default(),
    };
    let flags = Overrides {
        allow_master_keyring: args.allow_master_keyring,
        ..overrides(socket, args.flags)
    };
    let settings = Settings::resolve(config, flags, None, false)
        .map_err(|e| CliError::new(2, e.to_string()))?;
    run_sidecar(settings, None).await
}

fn overrides(socket: Option<PathBuf>, flags: SidecarFlags) -> Overrides {
    Overrides {
        socket,
        socket_mode: flags.socket_mode,
        data_dir: flags.data_dir,
        redis_url: flags.redis_url,
        keyring: flags.keyring,
        metrics_addr: flags.metrics_addr,
        roles: flags.roles,
        unmapped_callers: flags.unmapped_callers,
        max_body_bytes: flags.max_body_bytes,
        max_value_bytes: flags.max_value_bytes,
        rate_limit: flags.rate_limit,
        expiry_webhook: flags.expiry_webhook,
        expiry_check_interval: flags.expiry_check_interval,
        policy_dir: flags.policy_dir,
        workload_api: flags.workload_api,
        audit_max_len: flags.audit_max_len,
        audit_fail_closed: flags.audit_fail_closed,
        audit_max_streams: flags.audit_max_streams,
        allow_master_keyring: false,
        redis_tls: flags.redis_auth.tls(),
        redis_username: flags.redis_auth.redis_username,
        redis_password_file: flags.redis_auth.redis_password_file,
        redis_password: env_redis_password(),
        envoy_socket: flags.envoy_socket,
        envoy_decision_rule: flags.envoy_decision_rule,
        envoy_parse_body: flags.envoy_parse_body,
        envoy_on_error: flags.envoy_on_error,
        cache_max_entries: flags.cache_max_entries,
        redact_min_bytes: flags.redact_min_bytes,
        header_timeout: flags.header_timeout,
        idle_timeout: flags.idle_timeout,
        max_connections: flags.max_connections,
        max_connections_per_uid: flags.max_connections_per_uid,
    }
}

async fn run_sidecar(settings: Settings, dev: Option<DevBanner>) -> Result<(), CliError> {
    let shutdown = crate::listen::shutdown_signal_installed();
    let storage_detail = match &settings.storage {
        StorageSettings::Embedded(path) => format!("embedded ({})", path.display()),
        StorageSettings::Redis(..) => "redis".to_owned(),
    };
    let mut sidecar = Sidecar::start(settings)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let socket = sidecar.socket_path().display().to_string();
    // A fixed (dev) identity is ready at once; a Workload API one may take a while.
    let identity = sidecar
        .ready(Duration::from_secs(if dev.is_some() { 5 } else { 0 }))
        .await
        .map_or_else(|| "waiting for an SVID".to_owned(), |id| id.spiffe_id);
    tracing::info!(
        socket = %socket, identity = %identity, storage = sidecar.storage(),
        metrics = ?sidecar.metrics_addr(), "sidecar started"
    );
    if let Some(banner) = dev {
        let mut metrics = sidecar
            .metrics_addr()
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into());
        if banner.metrics_moved {
            metrics.push_str(&format!(
                " ({DEFAULT_METRICS_ADDR} is taken; --metrics-addr picks one)"
            ));
        }
        let approver = match banner.approver {
            Approver::Link(link) => format!(
                "  approver: {} approvals approve ID   (this binary as role {DEV_APPROVER_ROLE})\n",
                link.display()
            ),
            Approver::Unavailable => format!(
                "  approver: start with --role {DEV_APPROVER_ROLE}=uid:N (another user) to approve token requests\n"
            ),
            Approver::Mapped => String::new(),
        };
        println!(
            "agentvault dev sidecar is running\n  socket:   {socket}\n  identity: {identity}\n  storage:  {storage_detail}\n  metrics:  {metrics}\n{approver}\n\
             Try:\n  export AGENTVAULT_SOCKET={socket}\n  agentvault put demo/openai-key sk-test-123 --type api_key\n  \
             curl --unix-socket {socket} http://localhost/v1/secrets/demo/openai-key\n"
        );
        let _ = std::io::stdout().flush();
    }
    let outcome = sidecar.run(shutdown).await;
    tracing::info!("sidecar stopped");
    outcome.map_err(|e| CliError::new(1, e.to_string()))
}
