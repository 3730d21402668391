use std::process::ExitCode;

use clap::Parser;

/// The sidecar allocates on every request (hyper, serde, regorus values);
/// under load glibc's malloc took a tenth of its CPU, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    agentvault::cli::run(agentvault::cli::Cli::parse())
}
