//! The `agentvault` command line: the sidecars (`dev`, `serve`), key
//! generation, and client commands that talk to a sidecar over its socket.
//!
//! Exit codes: 0 success, 1 any other error, 2 usage, 3 not found,
//! 4 denied or unauthenticated, 5 sidecar unreachable or storage unavailable,
//! 6 conflict, 7 expired.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;

use crate::client::{Client, Reply};
use crate::config::{Config, Overrides, Settings, StorageSettings, DEFAULT_SOCKET};
use crate::crypto::Keyring;
use crate::identity::{RoleRule, WorkloadIdentity};
use crate::sidecar::Sidecar;

#[derive(Debug, Parser)]
#[command(
    name = "agentvault",
    version,
    about = "Identity-scoped secrets for AI agents"
)]
pub struct Cli {
    /// The sidecar's Unix socket.
    #[arg(long, global = true, env = "AGENTVAULT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A bearer token (`avt_…`) to present with client commands.
    #[arg(long, global = true, env = "AGENTVAULT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Log format of the sidecars (logs go to stderr; RUST_LOG filters them).
    #[arg(long, global = true, env = "AGENTVAULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sidecar with a self-signed dev identity and a local keyring and store.
    Dev(DevArgs),
    /// Run the production sidecar from a config file.
    Serve(ServeArgs),
    /// Write a new keyring file with one fresh key.
    Keygen { file: PathBuf },
    /// Ask the sidecar whether it is healthy.
    Health,
    /// Print a secret's value.
    Get {
        path: String,
        #[arg(long)]
        version: Option<u64>,
        /// Print the whole secret as JSON instead of the bare value.
        #[arg(long)]
        json: bool,
    },
    /// Write a new version of a secret.
    Put(PutArgs),
    /// Delete a secret with all its versions.
    Rm { path: String },
    /// List secrets under a prefix.
    Ls {
        prefix: Option<String>,
        /// Show version, tier, type and update time too.
        #[arg(long, short)]
        long: bool,
    },
    /// List a secret's versions.
    Versions { path: String },
    /// Make an earlier version active again.
    Rollback { path: String, version: u64 },
    /// Write a new value; the old version stays readable for a grace period.
    Rotate {
        path: String,
        /// The value; `-` or nothing reads it from stdin.
        value: Option<String>,
        /// How long the old version stays readable, e.g. `1h` (default 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Change a secret's metadata without writing a new version.
    Update(UpdateArgs),
    /// Import a .env file (`-` reads stdin); each variable becomes NAMESPACE/NAME.
    Import(ImportArgs),
    /// Scoped bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Let another agent of this tenant read PATH (or every secret under `prefix/*`).
    Grant { agent: String, path: String },
    /// List the grants this agent made or received.
    Grants,
    /// Revoke a grant this agent made.
    Revoke { grant_id: String },
    /// List token requests waiting for approval, or decide one.
    Approvals {
        #[command(subcommand)]
        decision: Option<ApprovalCommand>,
    },
    /// Show this tenant's newest audit events, oldest first.
    Audit {
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new events, from every sidecar of the tenant, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints it (or the approval it waits for).
    Create {
        /// `secrets:<read|write|list>:<path or prefix/*>`
        #[arg(long)]
        scope: String,
        /// How long it lives, e.g. `15m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long)]
        max_uses: Option<u64>,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    Approve { approval_id: String },
    Deny { approval_id: String },
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub path: String,
    /// Expire after this long from now, e.g. `30d`.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
    pub expires_in: Option<std::time::Duration>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
    #[arg(long)]
    pub tier: Option<String>,
    #[arg(long = "type")]
    pub secret_type: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub namespace: String,
    /// Tier for every imported secret.
    #[arg(long)]
    pub tier: Option<String>,
    /// Tier for variables whose name starts with PREFIX (longest prefix wins).
    #[arg(long = "tier-prefix", value_name = "PREFIX=TIER")]
    pub tier_prefix: Vec<String>,
    /// Print what would be created, updated or skipped; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a new version of secrets that already exist.
    #[arg(long)]
    pub overwrite: bool,
}

/// Flags shared by `dev` and `serve`.
#[derive(Debug, Args)]
pub struct SidecarFlags {
    /// Directory of the embedded store and, in dev, the keyring.
    #[arg(long, env = "AGENTVAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use Redis instead of the embedded store (comma-separated URLs for a cluster).
    #[arg(long, env = "AGENTVAULT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where to serve Prometheus metrics (`host:port`, or `off`).
    #[arg(long, env = "AGENTVAULT_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Keyring file (`agentvault keygen` makes one; dev makes one if missing).
    #[arg(long, env = "AGENTVAULT_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Map local callers to a role: NAME=uid:N, NAME=gid:N or NAME=exe:/path.
    #[arg(long = "role", value_name = "NAME=MATCH")]
    pub roles: Vec<RoleRule>,
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
    /// Directory of Rego policies, reloaded on change (default: the built-in policy).
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
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub flags: SidecarFlags,
    #[arg(long, default_value = "dev")]
    pub tenant: String,
    #[arg(long, default_value = "dev-agent")]
    pub agent: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "AGENTVAULT_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub flags: SidecarFlags,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub path: String,
    /// The value; `-` or nothing reads it from stdin (one trailing newline is dropped).
    pub value: Option<String>,
    #[arg(long)]
    pub tier: Option<String>,
    #[arg(long = "type")]
    pub secret_type: Option<String>,
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Expire the secret after this long, e.g. `30d` or `12h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<std::time::Duration>,
    /// Only this role of the agent may read it.
    #[arg(long)]
    pub scope: Option<String>,
    /// Write only if the current version is this one (0: only if absent).
    #[arg(long)]
    pub cas: Option<u64>,
}

/// A failed command: what to print on stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit: u8,
}

impl CliError {
    fn new(exit: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit,
        }
    }

    /// The error a sidecar reply stands for, with its exit code.
    fn from_reply(reply: &Reply) -> Self {
        let body = reply.json();
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        let exit = match code {
            "not_found" => 3,
            "policy_denied" | "unauthenticated" => 4,
            "unavailable" => 5,
            "conflict" => 6,
            "expired" => 7,
            _ => 1,
        };
        Self::new(exit, format!("{code}: {message}"))
    }
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentvault: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let is_sidecar = matches!(cli.command, Command::Dev(_) | Command::Serve(_));
    init_logging(cli.log_format, if is_sidecar { "info" } else { "warn" });
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentvault: {}", e.message);
            ExitCode::from(e.exit)
        }
    }
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let client = match cli.token.clone() {
        Some(token) => Client::new(socket.clone()).with_token(token),
        None => Client::new(socket.clone()),
    };
    match cli.command {
        Command::Dev(args) => {
            let identity = WorkloadIdentity::new("dev.local", &args.tenant, &args.agent)
                .map_err(|e| CliError::new(2, e.to_string()))?;
            let settings = Settings::resolve(
                Config::default(),
                overrides(cli.socket, args.flags),
                Some(identity),
                true,
            )
            .map_err(|e| CliError::new(2, e.to_string()))?;
            run_sidecar(settings, true).await
        }
        Command::Serve(args) => {
            let config = Config::load(&args.config).map_err(|e| CliError::new(2, e.to_string()))?;
            let settings =
                Settings::resolve(config, overrides(cli.socket, args.flags), None, false)
                    .map_err(|e| CliError::new(2, e.to_string()))?;
            run_sidecar(settings, false).await
        }
        Command::Keygen { file } => {
            let ring = Keyring::generate();
            ring.save_new(&file)
                .map_err(|e| CliError::new(1, e.to_string()))?;
            println!(
                "wrote keyring {} (active key {})",
                file.display(),
                ring.active_id()
            );
            Ok(())
        }
        Command::Health => {
            let reply = call(&client, Method::GET, "/v1/health", None).await?;
            println!("{}", pretty(&reply.json()));
            Ok(())
        }
        Command::Get {
            path,
            version,
            json,
        } => {
            let uri = match version {
                Some(v) => format!("/v1/secrets/{path}?version={v}"),
                None => format!("/v1/secrets/{path}"),
            };
            let reply = call(&client, Method::GET, &uri, None).await?;
            let secret = reply.json();
            let mut out = std::io::stdout().lock();
            let written = if json {
                writeln!(out, "{}", pretty(&secret))
            } else {
                writeln!(out, "{}", secret["value"].as_str().unwrap_or_default())
            };
            written.map_err(|e| CliError::new(1, e.to_string()))
        }
        Command::Put(args) => put(&client, args).await,
        Command::Rm { path } => {
            call(
                &client,
                Method::DELETE,
                &format!("/v1/secrets/{path}"),
                None,
            )
            .await?;
            Ok(())
        }
        Command::Ls { prefix, long } => list(&client, prefix.unwrap_or_default(), long).await,
        Command::Versions { path } => {
            let reply = call(&client, Method::GET, &format!("/v1/versions/{path}"), None).await?;
            for v in reply.json().as_array().into_iter().flatten() {
                let mut line = format!(
                    "{}\t{}",
                    v["version"],
                    v["created_at"].as_str().unwrap_or_default()
                );
                if v["active"] == true {
                    line.push_str("\tactive");
                }
                if let Some(at) = v["expires_at"].as_str() {
                    line.push_str(&format!("\texpires {at}"));
                }
                println!("{line}");
            }
            Ok(())
        }
        Command::Rollback { path, version } => {
            let body = json!({ "version": version });
            call(
                &client,
                Method::POST,
                &format!("/v1/rollback/{path}"),
                Some(&body),
            )
            .await?;
            println!("{path} version {version} is active");
            Ok(())
        }
        Command::Rotate { path, value, grace } => {
            let mut body = json!({ "value": read_value(value.as_deref())? });
            if let Some(grace) = grace {
                body["grace_period_seconds"] = Value::from(grace.as_secs());
            }
            let reply = call(
                &client,
                Method::POST,
                &format!("/v1/rotate/{path}"),
                Some(&body),
            )
            .await?;
            let r = reply.json();
            println!(
                "{path} version {} is active; version {} readable until {}",
                r["new_version"],
                r["old_version"],
                r["old_expires_at"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Command::Update(args) => update(&client, args).await,
        Command::Token(TokenCommand::Create {
            scope,
            ttl,
            max_uses,
            description,
        }) => {
            let mut body = json!({ "scope": scope, "ttl_seconds": ttl.as_secs().max(1) });
            if let Some(n) = max_uses {
                body["max_uses"] = Value::from(n);
            }
            if let Some(d) = description {
                body["description"] = Value::from(d);
            }
            let reply = call(&client, Method::POST, "/v1/tokens", Some(&body)).await?;
            let issued = reply.json();
            println!("{}", issued["token"].as_str().unwrap_or_default());
            if reply.status == 202 {
                let id = issued["approval_id"].as_str().unwrap_or_default();
                eprintln!("pending approval {id}: the token works once an approver runs `agentvault approvals approve {id}`");
            }
            Ok(())
        }
        Command::Grant { agent, path } => {
            let body = json!({ "agent_id": agent, "path": path });
            let grant = call(&client, Method::POST, "/v1/grants", Some(&body))
                .await?
                .json();
            println!("{}", columns(&grant, &["grant_id", "agent_id", "path"]));
            Ok(())
        }
        Command::Grants => {
            let reply = call(&client, Method::GET, "/v1/grants", None).await?;
            for g in reply.json().as_array().into_iter().flatten() {
                println!(
                    "{}",
                    columns(g, &["grant_id", "agent_id", "path", "created_by"])
                );
            }
            Ok(())
        }
        Command::Revoke { grant_id } => {
            call(
                &client,
                Method::DELETE,
                &format!("/v1/grants/{grant_id}"),
                None,
            )
            .await?;
            Ok(())
        }
        Command::Approvals { decision } => {
            let (id, verb) = match decision {
                None => {
                    let reply = call(&client, Method::GET, "/v1/approvals", None).await?;
                    for a in reply.json().as_array().into_iter().flatten() {
                        let fields = ["approval_id", "status", "tier", "scope", "requested_by"];
                        println!("{}", columns(a, &fields));
                    }
                    return Ok(());
                }
                Some(ApprovalCommand::Approve { approval_id }) => (approval_id, "approve"),
                Some(ApprovalCommand::Deny { approval_id }) => (approval_id, "deny"),
            };
            let uri = format!("/v1/approvals/{id}/{verb}");
            let reply = call(&client, Method::POST, &uri, Some(&json!({}))).await?;
            println!(
                "{id} {}",
                reply.json()["status"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Command::Import(args) => import(&client, args).await,
        Command::Audit {
            limit,
            follow,
            json,
        } => audit(&client, limit, follow, json).await,
    }
}

/// Prints the newest events, then with `follow` streams new ones after them.
async fn audit(client: &Client, limit: usize, follow: bool, json: bool) -> Result<(), CliError> {
    let reply = call(
        client,
        Method::GET,
        &format!("/v1/audit?limit={limit}"),
        None,
    )
    .await?;
    let mut items = reply.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    items.reverse();
    for item in &items {
        print_audit_event(item, json);
    }
    if !follow {
        return Ok(());
    }
    // Resume right after what was printed: nothing is missed or repeated.
    let last = items
        .last()
        .and_then(|e| e["id"].as_str())
        .unwrap_or("0-0")
        .to_owned();
    let mut stream = client
        .stream("/v1/audit/stream", &[("last-event-id", &last)])
        .await
        .map_err(|e| CliError::new(5, e.to_string()))?;
    if stream.status != 200 {
        let reply = stream
            .into_reply()
            .await
            .map_err(|e| CliError::new(5, e.to_string()))?;
        return Err(CliError::from_reply(&reply));
    }
    loop {
        match stream.next_event().await {
            Ok(Some(event)) => {
                if let Ok(item) = serde_json::from_str::<Value>(&event.data) {
                    print_audit_event(&item, json);
                }
            }
            Ok(None) => return Err(CliError::new(5, "the sidecar closed the audit stream")),
            Err(e) => return Err(CliError::new(5, e.to_string())),
        }
    }
}

fn print_audit_event(item: &Value, json: bool) {
    let line = if json {
        item.to_string()
    } else {
        let fields = [
            "ts",
            "event",
            "spiffe_id",
            "action",
            "path",
            "version",
            "outcome",
            "request_id",
        ];
        let mut line = fields
            .iter()
            .map(|f| match &item[*f] {
                Value::String(s) => s.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\t");
        if let Some(reasons) = item["reasons"].as_array().filter(|r| !r.is_empty()) {
            let reasons: Vec<&str> = reasons.iter().filter_map(Value::as_str).collect();
            line.push('\t');
            line.push_str(&reasons.join("; "));
        }
        line
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn overrides(socket: Option<PathBuf>, flags: SidecarFlags) -> Overrides {
    Overrides {
        socket,
        data_dir: flags.data_dir,
        redis_url: flags.redis_url,
        keyring: flags.keyring,
        metrics_addr: flags.metrics_addr,
        roles: flags.roles,
        max_body_bytes: flags.max_body_bytes,
        max_value_bytes: flags.max_value_bytes,
        rate_limit: flags.rate_limit,
        expiry_webhook: flags.expiry_webhook,
        expiry_check_interval: flags.expiry_check_interval,
        policy_dir: flags.policy_dir,
        workload_api: flags.workload_api,
        audit_max_len: flags.audit_max_len,
        audit_fail_closed: flags.audit_fail_closed,
    }
}

async fn run_sidecar(settings: Settings, dev: bool) -> Result<(), CliError> {
    let storage_detail = match &settings.storage {
        StorageSettings::Embedded(path) => format!("embedded ({})", path.display()),
        StorageSettings::Redis(_) => "redis".to_owned(),
    };
    let mut sidecar = Sidecar::start(settings)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let socket = sidecar.socket_path().display().to_string();
    // A fixed (dev) identity is ready at once; a Workload API one may take a while.
    let identity = sidecar
        .ready(Duration::from_secs(if dev { 5 } else { 0 }))
        .await
        .map_or_else(|| "waiting for an SVID".to_owned(), |id| id.spiffe_id);
    tracing::info!(
        socket = %socket, identity = %identity, storage = sidecar.storage(),
        metrics = ?sidecar.metrics_addr(), "sidecar started"
    );
    if dev {
        let metrics = sidecar
            .metrics_addr()
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into());
        println!(
            "agentvault dev sidecar is running\n  socket:   {socket}\n  identity: {identity}\n  storage:  {storage_detail}\n  metrics:  {metrics}\n\n\
             Try:\n  export AGENTVAULT_SOCKET={socket}\n  agentvault put demo/openai-key sk-test-123 --type api_key\n  \
             curl --unix-socket {socket} http://localhost/v1/secrets/demo/openai-key\n"
        );
        let _ = std::io::stdout().flush();
    }
    let outcome = sidecar.run(crate::server::shutdown_signal()).await;
    tracing::info!("sidecar stopped");
    outcome.map_err(|e| CliError::new(1, e.to_string()))
}

/// Sends a request and turns anything but a 2xx answer into a [`CliError`].
async fn call(
    client: &Client,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> Result<Reply, CliError> {
    let reply = match body {
        Some(body) => client.send_json(method, uri, body).await,
        None => client.request(method, uri, None).await,
    }
    .map_err(|e| CliError::new(5, e.to_string()))?;
    if (200..300).contains(&reply.status) {
        Ok(reply)
    } else {
        Err(CliError::from_reply(&reply))
    }
}

async fn put(client: &Client, args: PutArgs) -> Result<(), CliError> {
    let mut body = json!({ "value": read_value(args.value.as_deref())? });
    set_metadata(
        &mut body,
        args.tier,
        args.secret_type,
        args.description,
        &args.tags,
    )?;
    if let Some(scope) = args.scope {
        body["scope"] = Value::from(scope);
    }
    if let Some(cas) = args.cas {
        body["cas"] = Value::from(cas);
    }
    if let Some(ttl) = args.expires_in {
        body["expires_at"] = expires_at(ttl)?;
    }
    let reply = call(
        client,
        Method::PUT,
        &format!("/v1/secrets/{}", args.path),
        Some(&body),
    )
    .await?;
    let written = reply.json();
    println!(
        "{} version {}",
        written["path"].as_str().unwrap_or(&args.path),
        written["version"]
    );
    Ok(())
}

async fn list(client: &Client, prefix: String, long: bool) -> Result<(), CliError> {
    let mut cursor: Option<String> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("prefix", &prefix)
            .append_pair("limit", "200");
        if let Some(c) = &cursor {
            query.append_pair("cursor", c);
        }
        let reply = call(
            client,
            Method::GET,
            &format!("/v1/secrets?{}", query.finish()),
            None,
        )
        .await?;
        let page = reply.json();
        for item in page["items"].as_array().into_iter().flatten() {
            let path = item["path"].as_str().unwrap_or_default();
            let line = if long {
                format!(
                    "{path}\tv{}\t{}\t{}\t{}",
                    item["version"],
                    item["tier"].as_str().unwrap_or_default(),
                    item["type"].as_str().unwrap_or_default(),
                    item["updated_at"].as_str().unwrap_or_default()
                )
            } else {
                path.to_owned()
            };
            writeln!(out, "{line}").map_err(|e| CliError::new(1, e.to_string()))?;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

/// The named string fields of a JSON object, tab-separated.
fn columns(value: &Value, fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| value[*f].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\t")
}

/// The value argument, or stdin for `-` or none (one trailing newline dropped).
fn read_value(arg: Option<&str>) -> Result<String, CliError> {
    match arg {
        Some("-") | None => {
            let mut buf = String::new();
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| CliError::new(1, format!("reading the value from stdin: {e}")))?;
            if buf.ends_with('\n') {
                buf.pop();
                if buf.ends_with('\r') {
                    buf.pop();
                }
            }
            Ok(buf)
        }
        Some(v) => Ok(v.to_owned()),
    }
}

/// `K=V` arguments as a JSON object.
fn pairs(flag: &str, items: &[String]) -> Result<Value, CliError> {
    let mut map = serde_json::Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| CliError::new(2, format!("{flag} `{item}`: expected KEY=VALUE")))?;
        map.insert(k.to_owned(), Value::from(v));
    }
    Ok(Value::Object(map))
}

/// Sets the metadata fields `put` and `update` share.
fn set_metadata(
    body: &mut Value,
    tier: Option<String>,
    secret_type: Option<String>,
    description: Option<String>,
    tags: &[String],
) -> Result<(), CliError> {
    for (key, value) in [
        ("tier", tier),
        ("type", secret_type),
        ("description", description),
    ] {
        if let Some(v) = value {
            body[key] = Value::from(v);
        }
    }
    if !tags.is_empty() {
        body["tags"] = pairs("--tag", tags)?;
    }
    Ok(())
}

fn expires_at(ttl: std::time::Duration) -> Result<Value, CliError> {
    let ttl = chrono::Duration::from_std(ttl)
        .map_err(|_| CliError::new(2, "--expires-in is too long"))?;
    Ok(Value::from((chrono::Utc::now() + ttl).to_rfc3339()))
}

async fn update(client: &Client, args: UpdateArgs) -> Result<(), CliError> {
    let mut body = json!({});
    set_metadata(
        &mut body,
        args.tier,
        args.secret_type,
        args.description,
        &args.tags,
    )?;
    if let Some(ttl) = args.expires_in {
        body["expires_at"] = expires_at(ttl)?;
    }
    if args.no_expiry {
        body["expires_at"] = Value::Null;
    }
    let reply = call(
        client,
        Method::PATCH,
        &format!("/v1/secrets/{}", args.path),
        Some(&body),
    )
    .await?;
    println!("{}", pretty(&reply.json()));
    Ok(())
}

async fn import(client: &Client, args: ImportArgs) -> Result<(), CliError> {
    let dotenv = if args.file.as_os_str() == "-" {
        read_value(None)?
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| CliError::new(1, format!("{}: {e}", args.file.display())))?
    };
    let mut body = json!({
        "dotenv": dotenv,
        "namespace": args.namespace,
        "dry_run": args.dry_run,
        "overwrite": args.overwrite,
    });
    if let Some(tier) = args.tier {
        body["tier"] = Value::from(tier);
    }
    if !args.tier_prefix.is_empty() {
        body["tier_prefix"] = pairs("--tier-prefix", &args.tier_prefix)?;
    }
    let reply = call(client, Method::POST, "/v1/import", Some(&body)).await?;
    let report = reply.json();
    for s in report["secrets"].as_array().into_iter().flatten() {
        println!(
            "{:<8}\t{}\t{}",
            s["action"].as_str().unwrap_or_default(),
            s["path"].as_str().unwrap_or_default(),
            s["tier"].as_str().unwrap_or_default()
        );
    }
    for (name, lines) in report["duplicates"].as_object().into_iter().flatten() {
        eprintln!("note: {name} is assigned on lines {lines}; the last one was used");
    }
    let verb = if args.dry_run { "would be" } else { "were" };
    println!(
        "{} created, {} updated, {} skipped ({verb})",
        report["created"], report["updated"], report["skipped"]
    );
    Ok(())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
