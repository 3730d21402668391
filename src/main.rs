use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    agentvault::cli::run(agentvault::cli::Cli::parse())
}
