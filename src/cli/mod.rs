//! The `agentvault` command line: the sidecars (`dev`, `serve`), key
//! generation, and client commands that talk to a sidecar over its socket.
//!
//! Exit codes: see [`exit`].

mod access;
mod audit;
mod k8s;
mod keys;
mod output;
mod policy;
mod redact;
mod run;
mod secrets;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::Value;
use tracing_subscriber::EnvFilter;

use crate::client::{Client, ClientError, Reply};
use crate::config::DEFAULT_SOCKET;
use output::Output;

/// The exit codes of every command.
pub mod exit {
    /// Any other error.
    pub const OTHER: u8 = 1;
    /// Bad usage or bad input: unknown flags, a bad path or field (400), a value too large (413).
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    /// The policy said no (403), or the bearer token is unknown, expired or used up (401).
    pub const DENIED: u8 = 4;
    /// The sidecar cannot be reached, or its storage is unavailable (503).
    pub const UNAVAILABLE: u8 = 5;
    pub const CONFLICT: u8 = 6;
    pub const EXPIRED: u8 = 7;
}

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
    /// Print what client commands answer as JSON instead of text and tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format of the sidecars (logs go to stderr; RUST_LOG filters them).
    #[arg(long, global = true, env = "AGENTVAULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every command, one group per file; the groups' commands sit flat on the
/// command line (`agentvault get`, not `agentvault secrets get`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sidecar with a self-signed dev identity and a local keyring and store.
    Dev(run::DevArgs),
    /// Run the production sidecar (from flags and environment, or a config file).
    Serve(run::ServeArgs),
    #[command(flatten)]
    Keys(keys::KeysCommand),
    #[command(flatten)]
    Secrets(secrets::SecretsCommand),
    #[command(flatten)]
    Access(access::AccessCommand),
    /// Show this tenant's newest audit events, oldest first.
    Audit(audit::AuditArgs),
    /// Filter stdin to stdout, replacing every secret value you may read (and
    /// its base64, hex, URL and JSON encodings) with `[REDACTED:<path>]`.
    Redact(redact::RedactArgs),
    #[command(flatten)]
    K8s(k8s::K8sCommand),
    /// Policy tooling: evaluate, test and check Rego; list the builtins.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Print a shell completion script (e.g. `agentvault completions bash > /etc/bash_completion.d/agentvault`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// A failed command: what to print on stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit: u8,
}

impl CliError {
    pub(crate) fn new(exit: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit,
        }
    }

    /// Stdout was closed by its reader (`agentvault ls | head -1`): the
    /// command stops without a word and exits 0, as the reader has what it wanted.
    pub(crate) fn closed_pipe() -> Self {
        Self::new(0, String::new())
    }

    /// The error a sidecar reply stands for, with its exit code; a denial
    /// lists the policy's reasons, one per line.
    fn from_reply(reply: &Reply) -> Self {
        let body = reply.json();
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        let exit = match code {
            "invalid_request" | "too_large" => exit::USAGE,
            "not_found" => exit::NOT_FOUND,
            "policy_denied" | "unauthenticated" => exit::DENIED,
            "unavailable" => exit::UNAVAILABLE,
            "conflict" => exit::CONFLICT,
            "expired" => exit::EXPIRED,
            _ => exit::OTHER,
        };
        let mut text = format!("{code}: {message}");
        for reason in body["error"]["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            text.push_str("\n  - ");
            text.push_str(reason);
        }
        Self::new(exit, text)
    }

    /// A request that never got an answer: an unreachable socket names
    /// itself, says why, and how to start a sidecar on it.
    fn from_client(socket: &std::path::Path, error: ClientError) -> Self {
        match error {
            ClientError::Connect { source, .. } => {
                let why = match source.kind() {
                    std::io::ErrorKind::NotFound => "no such socket".to_owned(),
                    std::io::ErrorKind::ConnectionRefused => {
                        "nothing listens on it (a stale socket of a stopped sidecar?)".to_owned()
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied (the socket is 0660: join its group)".to_owned()
                    }
                    _ => source.to_string(),
                };
                let socket = socket.display();
                Self::new(
                    exit::UNAVAILABLE,
                    format!(
                        "cannot reach the sidecar at {socket}: {why}\n  \
                         start one with `agentvault dev --socket {socket}`, or point \
                         --socket / AGENTVAULT_SOCKET at a running sidecar"
                    ),
                )
            }
            ClientError::Request(e) => Self::new(exit::USAGE, format!("bad request: {e}")),
            ClientError::Http(e) => {
                Self::new(exit::UNAVAILABLE, format!("talking to the sidecar: {e}"))
            }
        }
    }
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    let workers = match &cli.command {
        Command::Dev(args) => args.flags.worker_threads,
        Command::Serve(args) => args.flags.worker_threads,
        _ => None,
    };
    if let Some(n) = workers {
        runtime.worker_threads(n.into());
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentvault: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let is_sidecar = matches!(
        cli.command,
        Command::Dev(_) | Command::Serve(_) | Command::K8s(k8s::K8sCommand::Webhook(_))
    );
    init_logging(cli.log_format, if is_sidecar { "info" } else { "warn" });
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("agentvault: {}", e.message);
            }
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
        Some(token) => Client::new(socket).with_token(token),
        None => Client::new(socket),
    };
    let out = Output { json: cli.json };
    match cli.command {
        Command::Dev(args) => run::dev(cli.socket, args).await,
        Command::Serve(args) => run::serve(cli.socket, args).await,
        Command::Keys(command) => keys::run(command, out).await,
        Command::Secrets(command) => secrets::run(&client, command, out).await,
        Command::Access(command) => access::run(&client, command, out).await,
        Command::Audit(args) => audit::run(&client, args, out).await,
        Command::Redact(args) => redact::run(&client, args).await,
        Command::Completions { shell } => completions(shell),
        Command::K8s(command) => k8s::run(command).await,
        Command::Policy(command) => policy::run(command, out),
    }
}

fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "agentvault", &mut script);
    Output { json: false }.line(String::from_utf8_lossy(&script).trim_end())
}

/// Sends a request and turns anything but a 2xx answer into a [`CliError`].
async fn call(
    client: &Client,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> Result<Reply, CliError> {
    let body = body.map(|b| b.to_string().into_bytes());
    let reply = match method {
        Method::GET | Method::HEAD => client.request(method, uri, body).await,
        // Writes carry an Idempotency-Key, and a PUT is retried under it.
        _ => client.write(method, uri, body).await,
    }
    .map_err(|e| CliError::from_client(client.socket(), e))?;
    if (200..300).contains(&reply.status) {
        Ok(reply)
    } else {
        Err(CliError::from_reply(&reply))
    }
}

/// A secret path (or an id) as the path of a URI, byte for byte: characters
/// outside the contract's set are percent-encoded, and so are `.`/`..`
/// segments, so that a bad path reaches the sidecar and gets its
/// `invalid_request` rather than failing to form a request or being
/// resolved to another path.
fn uri_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            encoded.push('/');
        }
        let dots = segment == "." || segment == "..";
        for byte in segment.bytes() {
            if !dots && (byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')) {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_keep_contract_characters_and_encode_the_rest() {
        assert_eq!(
            uri_path("prod/openai/api-key_1.2"),
            "prod/openai/api-key_1.2"
        );
        assert_eq!(uri_path("a b/ü"), "a%20b/%C3%BC");
        assert_eq!(uri_path("a/../b"), "a/%2E%2E/b");
        assert_eq!(uri_path("a?x=1#f"), "a%3Fx%3D1%23f");
        assert_eq!(uri_path("bad//path"), "bad//path");
    }
}
