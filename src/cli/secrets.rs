//! Client commands on secrets (and the sidecar's health): read, write, list, versions, rotation, import.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use super::output::{cell, Output};
use super::{call, exit, uri_path, CliError};
use crate::client::Client;
use crate::model::{SecretType, Tier};

/// The names of every variant of a model enum (its `ALL`, by `as_str`),
/// for clap's choices.
macro_rules! names {
    ($enum:ty) => {{
        let mut names = [""; <$enum>::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = <$enum>::ALL[i].as_str();
            i += 1;
        }
        names
    }};
}

/// The tiers a secret may have (`--tier`).
const TIERS: [&str; Tier::ALL.len()] = names!(Tier);
/// The types a secret may have (`--type`).
const TYPES: [&str; SecretType::ALL.len()] = names!(SecretType);

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Ask the sidecar whether it is healthy (prints JSON).
    Health,
    /// Print a secret's value (`--json`: the whole secret).
    Get {
        /// The secret's path, e.g. `prod/openai/api-key`.
        path: String,
        /// An earlier version instead of the active one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write a new version of a secret.
    Put(PutArgs),
    /// Delete a secret with all its versions and grants.
    Rm {
        /// The secret's path.
        path: String,
    },
    /// List secrets under a prefix (paths; `-l` or `--json` for metadata).
    Ls {
        /// Only paths starting with this, e.g. `prod/`.
        prefix: Option<String>,
        /// A table with version, tier, type and update time too.
        #[arg(long, short)]
        long: bool,
    },
    /// List a secret's versions.
    Versions {
        /// The secret's path.
        path: String,
    },
    /// Make an earlier version active again.
    Rollback {
        /// The secret's path.
        path: String,
        /// The version to make active.
        version: u64,
    },
    /// Write a new value; the old version stays readable for a grace period.
    Rotate {
        /// The secret's path.
        path: String,
        /// The value; `-` reads stdin; nothing prompts on a terminal (no echo), else reads stdin.
        value: Option<String>,
        /// How long the old version stays readable, e.g. `1h` (default 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Change a secret's metadata without writing a new version (prints the metadata as JSON).
    Update(UpdateArgs),
    /// Import a .env file (`-` reads stdin); each variable becomes NAMESPACE/NAME.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The secret's path, e.g. `prod/openai/api-key`.
    pub path: String,
    /// The value; `-` reads stdin (one trailing newline is dropped); nothing
    /// prompts on a terminal without echo, else reads stdin. An empty value
    /// from stdin or the prompt is refused.
    pub value: Option<String>,
    /// How carefully it is handled: critical reads wait for their audit
    /// event and tokens covering them wait for approval (default sensitive).
    #[arg(long, value_parser = TIERS)]
    pub tier: Option<String>,
    /// What kind of secret it is (default custom).
    #[arg(long = "type", value_parser = TYPES)]
    pub secret_type: Option<String>,
    /// A tag, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// A description for people (never a secret).
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

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The secret's path.
    pub path: String,
    /// Expire after this long from now, e.g. `30d`.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
    pub expires_in: Option<std::time::Duration>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
    /// The new tier.
    #[arg(long, value_parser = TIERS)]
    pub tier: Option<String>,
    /// The new type.
    #[arg(long = "type", value_parser = TYPES)]
    pub secret_type: Option<String>,
    /// The new description.
    #[arg(long)]
    pub description: Option<String>,
    /// Replace the tags with these, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .env file, or `-` for stdin.
    pub file: PathBuf,
    /// Where the variables go: NAME becomes NAMESPACE/NAME.
    #[arg(long)]
    pub namespace: String,
    /// Tier for every imported secret.
    #[arg(long, value_parser = TIERS)]
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

pub async fn run(client: &Client, command: SecretsCommand, out: Output) -> Result<(), CliError> {
    match command {
        SecretsCommand::Health => {
            let reply = call(client, Method::GET, "/v1/health", None).await?;
            out.json(&reply.json())
        }
        SecretsCommand::Get { path, version } => {
            let uri = match version {
                Some(v) => format!("/v1/secrets/{}?version={v}", uri_path(&path)),
                None => format!("/v1/secrets/{}", uri_path(&path)),
            };
            let secret = call(client, Method::GET, &uri, None).await?.json();
            out.data(&secret, || {
                secret["value"].as_str().unwrap_or_default().to_owned()
            })
        }
        SecretsCommand::Put(args) => put(client, args, out).await,
        SecretsCommand::Rm { path } => {
            let uri = format!("/v1/secrets/{}", uri_path(&path));
            call(client, Method::DELETE, &uri, None).await?;
            Ok(())
        }
        SecretsCommand::Ls { prefix, long } => {
            list(client, prefix.unwrap_or_default(), long, out).await
        }
        SecretsCommand::Versions { path } => {
            let uri = format!("/v1/versions/{}", uri_path(&path));
            let versions = call(client, Method::GET, &uri, None).await?.json();
            if out.json {
                return out.json(&versions);
            }
            let rows: Vec<Vec<String>> = versions
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    vec![
                        cell(&v["version"]),
                        cell(&v["created_at"]),
                        if v["active"] == true { "yes" } else { "no" }.to_owned(),
                        cell(&v["expires_at"]),
                    ]
                })
                .collect();
            out.table(&["VERSION", "CREATED", "ACTIVE", "EXPIRES"], &rows)
        }
        SecretsCommand::Rollback { path, version } => {
            let body = json!({ "version": version });
            let uri = format!("/v1/rollback/{}", uri_path(&path));
            let reply = call(client, Method::POST, &uri, Some(&body)).await?.json();
            out.data(&reply, || format!("{path} version {version} is active"))
        }
        SecretsCommand::Rotate { path, value, grace } => {
            let mut body = json!({ "value": read_value(value.as_deref(), &path)? });
            if let Some(grace) = grace {
                body["grace_period_seconds"] = Value::from(grace.as_secs());
            }
            let uri = format!("/v1/rotate/{}", uri_path(&path));
            let r = call(client, Method::POST, &uri, Some(&body)).await?.json();
            out.data(&r, || {
                format!(
                    "{path} version {} is active; version {} readable until {}",
                    r["new_version"],
                    r["old_version"],
                    r["old_expires_at"].as_str().unwrap_or_default()
                )
            })
        }
        SecretsCommand::Update(args) => update(client, args, out).await,
        SecretsCommand::Import(args) => import(client, args, out).await,
    }
}

async fn put(client: &Client, args: PutArgs, out: Output) -> Result<(), CliError> {
    let mut body = json!({ "value": read_value(args.value.as_deref(), &args.path)? });
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
    let uri = format!("/v1/secrets/{}", uri_path(&args.path));
    let written = call(client, Method::PUT, &uri, Some(&body)).await?.json();
    out.data(&written, || {
        format!(
            "{} version {}",
            written["path"].as_str().unwrap_or(&args.path),
            written["version"]
        )
    })
}

async fn list(client: &Client, prefix: String, long: bool, out: Output) -> Result<(), CliError> {
    let mut cursor: Option<String> = None;
    let mut items = Vec::new();
    loop {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("prefix", &prefix)
            .append_pair("limit", "200");
        if let Some(c) = &cursor {
            query.append_pair("cursor", c);
        }
        let uri = format!("/v1/secrets?{}", query.finish());
        let mut page = call(client, Method::GET, &uri, None).await?.json();
        let next = page["next_cursor"].as_str().map(str::to_owned);
        if let Value::Array(page_items) = page["items"].take() {
            if !long && !out.json {
                // Plain paths stream out page by page.
                for item in &page_items {
                    out.line(item["path"].as_str().unwrap_or_default())?;
                }
            } else {
                items.extend(page_items);
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if out.json {
        return out.json(&json!({ "items": items }));
    }
    if long {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|item| {
                [
                    "path",
                    "version",
                    "tier",
                    "type",
                    "updated_at",
                    "expires_at",
                ]
                .iter()
                .map(|f| cell(&item[*f]))
                .collect()
            })
            .collect();
        out.table(
            &["PATH", "VERSION", "TIER", "TYPE", "UPDATED", "EXPIRES"],
            &rows,
        )?;
    }
    Ok(())
}

/// The value argument; for `-`, stdin; for none, a prompt without echo on a
/// terminal, else stdin. One trailing newline is dropped; an empty value from
/// stdin or the prompt is refused (an empty secret is almost always a
/// mistake: a closed pipe, a variable that was not set).
fn read_value(arg: Option<&str>, path: &str) -> Result<String, CliError> {
    let from_stdin = match arg {
        Some("-") => true,
        Some(v) => return Ok(v.to_owned()),
        None => !std::io::stdin().is_terminal(),
    };
    let mut value = if from_stdin {
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf).map_err(|e| {
            CliError::new(exit::OTHER, format!("reading the value from stdin: {e}"))
        })?;
        buf
    } else {
        prompt_hidden(&format!("value for {path} (not echoed): "))
            .map_err(|e| CliError::new(exit::OTHER, format!("reading the value: {e}")))?
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        let source = if from_stdin { "stdin" } else { "the prompt" };
        return Err(CliError::new(
            exit::USAGE,
            format!("no value for {path}: {source} was empty (give it as an argument to store an empty value)"),
        ));
    }
    Ok(value)
}

/// One line typed at the terminal, not echoed. Echo goes off before the
/// prompt is shown, so nothing typed once the prompt is up can appear on the
/// screen, and it comes back on however the read ends.
fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, Write};

    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let shown = tcgetattr(&tty)?;
    let mut hidden = shown.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    // The Enter that ends the line still moves to the next one.
    hidden.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Now, &hidden)?;
    let read = (&tty).write_all(prompt.as_bytes()).and_then(|()| {
        let mut line = String::new();
        std::io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(line)
    });
    let restored = tcsetattr(&tty, OptionalActions::Now, &shown);
    let line = read?;
    restored?;
    Ok(line)
}

/// `K=V` arguments as a JSON object.
fn pairs(flag: &str, items: &[String]) -> Result<Value, CliError> {
    let mut map = serde_json::Map::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            CliError::new(exit::USAGE, format!("{flag} `{item}`: expected KEY=VALUE"))
        })?;
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
        .map_err(|_| CliError::new(exit::USAGE, "--expires-in is too long"))?;
    Ok(Value::from((chrono::Utc::now() + ttl).to_rfc3339()))
}

async fn update(client: &Client, args: UpdateArgs, out: Output) -> Result<(), CliError> {
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
    let uri = format!("/v1/secrets/{}", uri_path(&args.path));
    // The metadata as it now is: JSON with or without `--json`.
    out.json(&call(client, Method::PATCH, &uri, Some(&body)).await?.json())
}

async fn import(client: &Client, args: ImportArgs, out: Output) -> Result<(), CliError> {
    let dotenv = if args.file.as_os_str() == "-" {
        read_value(Some("-"), &args.namespace)?
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| CliError::new(exit::OTHER, format!("{}: {e}", args.file.display())))?
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
    let report = call(client, Method::POST, "/v1/import", Some(&body))
        .await?
        .json();
    for (name, lines) in report["duplicates"].as_object().into_iter().flatten() {
        eprintln!("note: {name} is assigned on lines {lines}; the last one was used");
    }
    if out.json {
        return out.json(&report);
    }
    let rows: Vec<Vec<String>> = report["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            ["action", "path", "tier"]
                .iter()
                .map(|f| cell(&s[*f]))
                .collect()
        })
        .collect();
    out.table(&["ACTION", "PATH", "TIER"], &rows)?;
    let verb = if args.dry_run { "would be" } else { "were" };
    out.line(format!(
        "{} created, {} updated, {} skipped ({verb})",
        report["created"], report["updated"], report["skipped"]
    ))
}
