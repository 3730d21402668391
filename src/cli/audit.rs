//! `agentvault audit`: the tenant's newest events, and `--follow` for new ones.

use clap::Args;
use hyper::Method;
use serde_json::Value;

use super::output::{cell, Output};
use super::{call, exit, CliError};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many of the newest events to show (1-1000).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Keep printing new events, from every sidecar of the tenant, until interrupted.
    #[arg(long, short)]
    pub follow: bool,
}

pub async fn run(client: &Client, args: AuditArgs, out: Output) -> Result<(), CliError> {
    audit(client, args.limit, args.follow, out).await
}

/// The columns of an event in text mode, then its reasons.
const FIELDS: [&str; 8] = [
    "ts",
    "event",
    "spiffe_id",
    "action",
    "path",
    "version",
    "outcome",
    "request_id",
];
const HEADER: [&str; 9] = [
    "TIME", "EVENT", "CALLER", "ACTION", "PATH", "VERSION", "OUTCOME", "REQUEST", "REASONS",
];

/// Prints the newest events (`--json`: one object per line), then with
/// `follow` streams new ones after them.
async fn audit(client: &Client, limit: usize, follow: bool, out: Output) -> Result<(), CliError> {
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
    if out.json {
        for item in &items {
            out.json_line(item)?;
        }
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(event_row).collect();
        out.table(&HEADER, &rows)?;
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
        .map_err(|e| CliError::from_client(client.socket(), e))?;
    if stream.status != 200 {
        let reply = stream
            .into_reply()
            .await
            .map_err(|e| CliError::from_client(client.socket(), e))?;
        return Err(CliError::from_reply(&reply));
    }
    loop {
        match stream.next_event().await {
            Ok(Some(event)) => {
                if let Ok(item) = serde_json::from_str::<Value>(&event.data) {
                    if out.json {
                        out.json_line(&item)?;
                    } else {
                        out.line(event_row(&item).join("  "))?;
                    }
                }
            }
            Ok(None) => {
                return Err(CliError::new(
                    exit::UNAVAILABLE,
                    "the sidecar closed the audit stream",
                ))
            }
            Err(e) => return Err(CliError::from_client(client.socket(), e)),
        }
    }
}

fn event_row(item: &Value) -> Vec<String> {
    let mut row: Vec<String> = FIELDS.iter().map(|f| cell(&item[*f])).collect();
    let reasons: Vec<&str> = item["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    row.push(reasons.join("; "));
    row
}
