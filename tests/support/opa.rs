//! Real OPA (`../shared/tools/opa-eval`, the Go engine embedded through its
//! c-shared library) for differential tests against regorus.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `$OPA_EVAL`, else the opa-eval tool in `shared/tools/` beside the
/// repository (or beside a directory above it, for a git worktree); a test that needs it fails with
/// a clear message when it is missing.
pub fn opa_eval() -> PathBuf {
    if let Some(tool) = std::env::var_os("OPA_EVAL") {
        return PathBuf::from(tool);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = repo
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/tools/opa-eval"))
        .find(|tool| tool.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "this test needs real OPA: shared/tools/opa-eval beside {} (or a directory above it) is missing",
            repo.display()
        )
    })
}

/// Evaluates `query` under OPA over the `.rego` files of `policies` (files
/// named `*_test.rego` are skipped) for every input, in one process: one
/// result per input, `{"result": v}`, `{"undefined": true}` or `{"error": "…"}`.
pub fn run_opa(policies: &Path, data: Option<&Value>, query: &str, inputs: &[Value]) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = Command::new(opa_eval());
    command
        .arg("--policies")
        .arg(policies)
        .arg("--query")
        .arg(query);
    if let Some(data) = data {
        let file = tmp.path().join("data.json");
        std::fs::write(&file, data.to_string()).unwrap();
        command.arg("--data").arg(file);
    }
    engine_ready();
    let lines: String = inputs.iter().map(|i| format!("{i}\n")).collect();
    let out = super::run_with_stdin(&mut command, lines.as_bytes());
    super::assert_success("opa-eval", &out);
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str(&quote_big_numbers(l))
                .unwrap_or_else(|e| panic!("opa-eval answered {l}: {e}"))
        })
        .collect();
    assert_eq!(
        results.len(),
        inputs.len(),
        "opa-eval answered {} of {} inputs",
        results.len(),
        inputs.len()
    );
    results
}

/// Puts numbers too big for `serde_json` (Go prints big.Int fields of
/// certificates, such as an RSA modulus, as JSON numbers) in quotes.
fn quote_big_numbers(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
        } else if c.is_ascii_digit() || c == '-' {
            let mut number = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() || matches!(d, '.' | 'e' | 'E' | '+' | '-') {
                    number.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            let integer = !number.contains(['.', 'e', 'E']);
            let fits = number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok();
            if integer && !fits {
                out.push_str(&format!("\"{number}\""));
            } else {
                out.push_str(&number);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs opa-eval once before any evaluation, so that its first run (which
/// fetches the OPA engine) happens once per test binary and, should it fail,
/// fails with opa-eval's own exit status and stderr.
fn engine_ready() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = super::run_with_stdin(
            Command::new(opa_eval())
                .arg("--policies")
                .arg(tmp.path())
                .arg("--query")
                .arg("data"),
            b"",
        );
        super::assert_success("opa-eval (fetching the OPA engine)", &out);
    });
}
