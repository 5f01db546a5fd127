//! The `apgate` binary: parse the command line, then hand over to the library.
#![forbid(unsafe_code)]

use apgate::cli::{exit, Cli, Command};
use apgate::config::Config;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} identities, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.identities.len(),
                    c.routes.len()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("{}: invalid configuration\n{e}", config.display());
                exit::CONFIG
            }
        },
        Command::Keygen { identity } => {
            let (akid, secret) = apgate::cli::keygen();
            println!("[[identities.keys]]  # for identity {identity:?}\naccess_key_id = \"{akid}\"\n# Store the secret where the config can read it, e.g. in a file or an environment variable:\n# secret_access_key = {{ env = \"APGATE_SECRET_{}\" }}\n# secret: {secret}", identity.to_ascii_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
            exit::OK
        }
        Command::Serve { config } => serve(&config),
    };
    std::process::exit(code);
}

fn serve(path: &std::path::Path) -> i32 {
    apgate::app::init_tracing();
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
    runtime.block_on(async move {
        match apgate::app::run(config, Some(path), apgate::app::shutdown_signal()).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "apgate could not start.");
                exit::UNAVAILABLE
            }
        }
    })
}
