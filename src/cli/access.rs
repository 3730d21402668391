//! Client commands on access: grants, tokens and approvals.

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::output::{cell, Output};
use super::{call, uri_path, CliError};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Scoped bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Let another agent of this tenant read PATH (or every secret under `prefix/*`).
    Grant {
        /// The agent that may read, e.g. `reporting-bot`.
        agent: String,
        /// A secret path, or `prefix/*` for every secret under it.
        path: String,
    },
    /// List the grants this agent made or received.
    Grants,
    /// Revoke a grant this agent made.
    Revoke {
        /// The grant's id (`grt_…`, from `grants`).
        grant_id: String,
    },
    /// List token requests waiting for approval, or decide one.
    Approvals {
        #[command(subcommand)]
        decision: Option<ApprovalCommand>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints it (or the approval it waits for).
    Create {
        /// What it allows: `secrets:<read|write|list>:<path or prefix/*>`.
        #[arg(long)]
        scope: String,
        /// How long it lives, e.g. `15m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many requests it may make (default: unlimited until it expires).
        #[arg(long)]
        max_uses: Option<u64>,
        /// What it is for, shown to the approver.
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Approve a pending token request (needs an approver role; not your own request).
    Approve {
        /// The approval's id (`ap_…`, from `approvals`).
        approval_id: String,
    },
    /// Deny a pending token request.
    Deny {
        /// The approval's id (`ap_…`, from `approvals`).
        approval_id: String,
    },
}

pub async fn run(client: &Client, command: AccessCommand, out: Output) -> Result<(), CliError> {
    match command {
        AccessCommand::Token(TokenCommand::Create {
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
            let reply = call(client, Method::POST, "/v1/tokens", Some(&body)).await?;
            let issued = reply.json();
            if reply.status == 202 {
                let id = issued["approval_id"].as_str().unwrap_or_default();
                eprintln!("pending approval {id}: the token works once an approver runs `agentvault approvals approve {id}`");
            }
            out.data(&issued, || {
                issued["token"].as_str().unwrap_or_default().to_owned()
            })
        }
        AccessCommand::Grant { agent, path } => {
            let body = json!({ "agent_id": agent, "path": path });
            let grant = call(client, Method::POST, "/v1/grants", Some(&body))
                .await?
                .json();
            if out.json {
                return out.json(&grant);
            }
            out.table(
                &["GRANT", "AGENT", "PATH"],
                &[row(&grant, &["grant_id", "agent_id", "path"])],
            )
        }
        AccessCommand::Grants => {
            let grants = call(client, Method::GET, "/v1/grants", None).await?.json();
            if out.json {
                return out.json(&grants);
            }
            let fields = ["grant_id", "agent_id", "path", "created_by", "created_at"];
            let rows: Vec<_> = grants
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| row(g, &fields))
                .collect();
            out.table(&["GRANT", "AGENT", "PATH", "CREATED BY", "CREATED"], &rows)
        }
        AccessCommand::Revoke { grant_id } => {
            let uri = format!("/v1/grants/{}", uri_path(&grant_id));
            call(client, Method::DELETE, &uri, None).await?;
            Ok(())
        }
        AccessCommand::Approvals { decision } => {
            let (id, verb) = match decision {
                None => {
                    let approvals = call(client, Method::GET, "/v1/approvals", None)
                        .await?
                        .json();
                    if out.json {
                        return out.json(&approvals);
                    }
                    let fields = ["approval_id", "status", "tier", "scope", "requested_by"];
                    let rows: Vec<_> = approvals
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| row(a, &fields))
                        .collect();
                    return out.table(
                        &["APPROVAL", "STATUS", "TIER", "SCOPE", "REQUESTED BY"],
                        &rows,
                    );
                }
                Some(ApprovalCommand::Approve { approval_id }) => (approval_id, "approve"),
                Some(ApprovalCommand::Deny { approval_id }) => (approval_id, "deny"),
            };
            let uri = format!("/v1/approvals/{}/{verb}", uri_path(&id));
            let decided = call(client, Method::POST, &uri, Some(&json!({})))
                .await?
                .json();
            out.data(&decided, || {
                format!("{id} {}", decided["status"].as_str().unwrap_or_default())
            })
        }
    }
}

/// The named fields of a JSON object as table cells.
fn row(value: &Value, fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| cell(&value[*f])).collect()
}
