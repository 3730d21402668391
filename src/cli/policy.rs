//! `agentvault policy eval|test|check|capabilities`: the policy tooling, run
//! locally on the same engine set-up as the sidecar (no socket involved).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::Value;

use super::output::Output;
use super::CliError;
use crate::policy::{capabilities, PolicySet, Provider, TestOutcome, DECISION_RULE};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate a query (default: the decision) and print its value as JSON.
    Eval {
        /// The input document (JSON or YAML; `-` for stdin).
        #[arg(long)]
        input: Option<PathBuf>,
        /// A policy directory or OPA bundle (directory or .tar.gz); default: the built-in policies.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// A data document (JSON or YAML) added under `data`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The query to evaluate, a rule path such as `data.envoy.authz.allow`.
        #[arg(default_value = DECISION_RULE)]
        query: String,
    },
    /// Run the `test_` rules of a policy directory or bundle; non-zero exit if any fails.
    Test {
        /// The policy directory or bundle holding the tests (`*_test.rego`).
        dir: PathBuf,
    },
    /// Compile a policy directory or bundle and report errors with file:line.
    Check {
        /// The policy directory or bundle to compile.
        dir: PathBuf,
    },
    /// List every builtin function policies may call.
    Capabilities {
        /// One JSON object per builtin: {"name", "provider"}.
        #[arg(long)]
        json: bool,
    },
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::new(1, e.to_string())
}

fn read_document(path: &Path) -> Result<Value, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| failed(format!("cannot read stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?
    };
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        serde_yaml_ng::from_str(&text)
            .map_err(|e| failed(format!("{}: not YAML: {e}", path.display())))
    } else {
        serde_json::from_str(&text)
            .map_err(|e| failed(format!("{}: not JSON: {e}", path.display())))
    }
}

pub fn run(command: PolicyCommand, out: Output) -> Result<(), CliError> {
    match command {
        PolicyCommand::Eval {
            input,
            policy_dir,
            data,
            query,
        } => {
            let mut set = match &policy_dir {
                Some(dir) => PolicySet::load(dir),
                None => PolicySet::builtin(),
            }
            .map_err(failed)?;
            if let Some(data) = &data {
                set.add_data(read_document(data)?).map_err(failed)?;
            }
            let input = input.as_deref().map(read_document).transpose()?;
            match set.eval(&query, input).map_err(failed)? {
                Some(value) => {
                    out.json(&value)?;
                    Ok(())
                }
                None => Err(failed(format!("{query} is undefined"))),
            }
        }
        PolicyCommand::Test { dir } => {
            let set = PolicySet::load(&dir).map_err(failed)?;
            let results = set.run_tests();
            if results.is_empty() {
                return Err(failed(format!("no test_ rules in {}", dir.display())));
            }
            let mut failures = 0;
            for result in &results {
                match &result.outcome {
                    TestOutcome::Pass => println!("PASS {}", result.rule),
                    TestOutcome::Fail => println!("FAIL {}", result.rule),
                    TestOutcome::Error(e) => println!("ERROR {}: {e}", result.rule),
                }
                failures += usize::from(result.outcome != TestOutcome::Pass);
            }
            println!("{} passed, {failures} failed", results.len() - failures);
            if failures > 0 {
                return Err(failed(format!(
                    "{failures} of {} tests failed",
                    results.len()
                )));
            }
            Ok(())
        }
        PolicyCommand::Check { dir } => {
            let set = PolicySet::load(&dir).map_err(failed)?;
            println!("{}: {} files ok", dir.display(), set.files());
            Ok(())
        }
        PolicyCommand::Capabilities { json } => {
            let mut out = String::new();
            for capability in capabilities() {
                if json {
                    out.push_str(&serde_json::to_string(&capability).map_err(failed)?);
                } else {
                    let provider = match capability.provider {
                        Provider::Regorus => "regorus",
                        Provider::Agentvault => "agentvault",
                    };
                    out.push_str(&format!("{}\t{provider}", capability.name));
                }
                out.push('\n');
            }
            print_all(&out)
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) is no error.
fn print_all(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(failed(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}
