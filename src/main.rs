//! The `apgate` binary: parse the command line, then hand over to the library.
// One unsafe item, allowed where it is made: the exported jemalloc options. The library forbids
// unsafe code.
#![deny(unsafe_code)]

use apgate::cli::{self, exit, Cli, Command};
use apgate::config::Config;
use clap::Parser;

/// jemalloc, not the system allocator: under mixed traffic glibc's malloc kept freed 1 MiB read
/// buffers in its arenas, and apgate's RSS swung by 10 MiB from minute to minute with no more in
/// use (scripts/soak; docs/SECURITY.md). jemalloc hands freed pages back after [`MALLOC_CONF`]'s
/// decay, and spends less CPU per request.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`_RJEM_MALLOC_CONF` in the environment comes
/// after them, so it overrides them): one background thread purges freed pages 1 s after they
/// were last used (by default 10 s, and only when the thread that freed them allocates again), so
/// an idle gateway shrinks back to what it holds.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 68] = b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000\0";

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => cli::check(&config),
        Command::Explain(args) => cli::explain(&args),
        Command::Keygen { identity } => cli::print_keygen(&identity),
        Command::Completions { shell } => cli::print_completions(shell),
        Command::Health {
            url,
            config,
            timeout_seconds,
        } => cli::health(url.as_deref(), config.as_deref(), timeout_seconds),
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
