use std::process::ExitCode;

use clap::Parser;

/// See [`agentvault::allocator`].
#[global_allocator]
static ALLOCATOR: agentvault::allocator::MiMalloc = agentvault::allocator::MiMalloc;

fn main() -> ExitCode {
    agentvault::cli::run(agentvault::cli::Cli::parse())
}
