//! The `apgate` binary: parse the command line, then hand over to the library.
#![forbid(unsafe_code)]

use apgate::cli::{self, exit, Cli, Command};
use apgate::config::Config;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => cli::check(&config),
        Command::Explain {
            config,
            identity,
            copy_source,
            method,
            target,
        } => cli::explain(&config, &identity, &method, &target, copy_source.as_deref()),
        Command::Keygen { identity } => cli::print_keygen(&identity),
        Command::Completions { shell } => cli::print_completions(shell),
        Command::Health { url, timeout_seconds } => cli::health(&url, timeout_seconds),
        Command::Serve { config } => serve(&config),
    };
    std::process::exit(code);
}

fn serve(path: &std::path::Path) -> i32 {
    apgate::app::init_tracing();
    apgate::access_log::start_writer();
    // Validate before binding any port.
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            return exit::CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let path = path.to_path_buf();
    let code = runtime.block_on(async move {
        match apgate::app::run(config, Some(path), apgate::app::shutdown_signal()).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "apgate could not start.");
                exit::UNAVAILABLE
            }
        }
    });
    // The last requests' access log lines, before the process exits.
    apgate::access_log::flush(std::time::Duration::from_secs(2));
    code
}
