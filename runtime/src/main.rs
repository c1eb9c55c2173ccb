//! The `orchestra` binary: parses the command line and runs it.

use clap::Parser;
use orchestra::cli::{Cli, Command, McpCommand};

/// See `orchestra::allocator`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    orchestra::allocator::tune();
    let cli = Cli::parse();
    // `mcp stdio` serves one client, one message at a time: a single thread
    // answers it without a hop between threads. Everything else gets every
    // core.
    let mut builder = match cli.command {
        Command::Mcp(McpCommand::Stdio { .. }) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(orchestra::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
