//! Kubernetes: `agentvault inject` (offline, on manifests) and `agentvault
//! webhook` (the mutating admission webhook). Both use the one injection in
//! [`crate::inject`].

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::CliError;
use crate::inject::manifests::inject_yaml;
use crate::inject::{InjectorConfig, Selection};
use crate::webhook::{self, WebhookSettings};

#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Add the agentvault sidecar to the pod templates of Kubernetes manifests (YAML on stdout).
    Inject(InjectArgs),
    /// Run the mutating admission webhook that injects the sidecar into new pods.
    Webhook(WebhookArgs),
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifests to read: one or more YAML documents (`-`: stdin, the default).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// Inject every pod template that does not opt out, not only those that opt in.
    #[arg(long)]
    pub all: bool,
    /// The injector config (YAML); defaults for every key not given.
    #[arg(long, env = "AGENTVAULT_INJECTOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (re-read when the file changes).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key (re-read when the file changes).
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// The injector config (YAML); defaults for every key not given.
    #[arg(long, env = "AGENTVAULT_INJECTOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How often to check the certificate files for changes, e.g. `5s`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cert_check_interval: Duration,
}

pub async fn run(command: K8sCommand) -> Result<(), CliError> {
    match command {
        K8sCommand::Inject(args) => inject(args),
        K8sCommand::Webhook(args) => serve_webhook(args).await,
    }
}

fn injector_config(path: Option<&PathBuf>) -> Result<InjectorConfig, CliError> {
    match path {
        Some(path) => InjectorConfig::load(path).map_err(|e| CliError::new(2, e.to_string())),
        None => Ok(InjectorConfig::default()),
    }
}

/// Reads all input, injects it all, and only then writes: a failure prints nothing on stdout.
fn inject(args: InjectArgs) -> Result<(), CliError> {
    let config = injector_config(args.config.as_ref())?;
    let mut text = String::new();
    let read = if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&args.file).map(|t| text = t)
    };
    read.map_err(|e| CliError::new(2, format!("{}: {e}", args.file.display())))?;
    let selection = if args.all {
        Selection::OptOut
    } else {
        Selection::OptIn
    };
    let (out, report) =
        inject_yaml(&text, &config, selection).map_err(|e| CliError::new(1, e.to_string()))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::new(1, format!("stdout: {e}")))?;
    // The summary goes to stderr, so stdout stays a manifest to pipe on.
    for object in &report.injected {
        eprintln!("{object}: injected");
    }
    for (object, skip) in &report.skipped {
        eprintln!("{object}: not injected: {}", skip.reason());
    }
    Ok(())
}

async fn serve_webhook(args: WebhookArgs) -> Result<(), CliError> {
    let shutdown = crate::listen::shutdown_signal_installed();
    let settings = WebhookSettings {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        injector: injector_config(args.config.as_ref())?,
        cert_check_interval: args.cert_check_interval,
    };
    webhook::run(
        settings,
        |addr| tracing::info!(%addr, "admission webhook listening"),
        shutdown,
    )
    .await
    .map_err(|e| CliError::new(1, e.to_string()))?;
    tracing::info!("admission webhook stopped");
    Ok(())
}
