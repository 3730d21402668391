//! `agentvault redact`: a shell filter that sends stdin through the sidecar's
//! leak guard (`POST /v1/redact`) and writes the redacted text to stdout,
//! byte for byte otherwise.

use std::io::{ErrorKind, Write};

use clap::Args;
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{call, exit, CliError};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct RedactArgs {
    /// Also print each request's findings (paths, versions, byte offsets,
    /// encodings; never values) as one JSON line on stderr.
    #[arg(long)]
    pub findings: bool,
    /// Redact and write each line as it arrives (for `tail -f … | agentvault
    /// redact --lines`), instead of all of stdin at its end. A value is then
    /// found only within one line.
    #[arg(long)]
    pub lines: bool,
}

pub async fn run(client: &Client, args: RedactArgs) -> Result<(), CliError> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    if !args.lines {
        let mut text = Vec::new();
        stdin
            .read_to_end(&mut text)
            .await
            .map_err(|e| CliError::new(exit::OTHER, format!("cannot read stdin: {e}")))?;
        return redact(client, &utf8(text)?, args.findings).await;
    }
    loop {
        let mut line = Vec::new();
        let read = stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| CliError::new(exit::OTHER, format!("cannot read stdin: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        redact(client, &utf8(line)?, args.findings).await?;
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String, CliError> {
    String::from_utf8(bytes).map_err(|e| {
        CliError::new(
            exit::USAGE,
            format!(
                "stdin is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Sends one text and writes what comes back: the text to stdout, the
/// findings (if asked) to stderr.
async fn redact(client: &Client, text: &str, findings: bool) -> Result<(), CliError> {
    let reply = call(
        client,
        Method::POST,
        "/v1/redact",
        Some(&json!({ "text": text })),
    )
    .await?;
    let body = reply.json();
    let Some(redacted) = body["text"].as_str() else {
        return Err(CliError::new(
            exit::OTHER,
            "the sidecar's answer has no `text`",
        ));
    };
    let mut out = std::io::stdout().lock();
    out.write_all(redacted.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => CliError::closed_pipe(),
            _ => CliError::new(exit::OTHER, format!("writing to stdout: {e}")),
        })?;
    if findings {
        let list = body.get("findings").cloned().unwrap_or(Value::Null);
        eprintln!("{}", json!({ "findings": list }));
    }
    Ok(())
}
