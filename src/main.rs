//! The `apgate` binary: parse the command line, then hand over to the library.
// One unsafe call, allowed where it is made: `limit_malloc_arenas`. The library forbids unsafe code.
#![deny(unsafe_code)]

use apgate::cli::{self, exit, Cli, Command};
use apgate::config::Config;
use clap::Parser;

fn main() {
    limit_malloc_arenas();
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

/// glibc's malloc gives threads that allocate at the same time arenas of their own, up to eight
/// per core, and each arena keeps what is freed into it for its own reuse: under steady traffic
/// (requests moving between runtime threads) apgate's RSS crept up for minutes while the heap in
/// use stayed flat (scripts/soak, 10 minutes: +4.2 % with the default, +0.0 % with two arenas;
/// docs/SECURITY.md). One arena per core keeps it flat. `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes two integers and only tunes the allocator; it is called first thing in
    // main, before any thread of apgate's exists, and glibc serialises it against allocation.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

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
