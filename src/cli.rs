//! The command line: `serve`, `check` and `keygen`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rand::Rng;

/// apgate: a transparent S3 access-point gateway.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the data-plane listeners and the admin port.
    Serve {
        /// The configuration file (TOML).
        #[arg(short, long, env = "APGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file without binding any port; exit 0 when it is valid.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, env = "APGATE_CONFIG")]
        config: PathBuf,
    },
    /// Print a fresh access key id and secret for an inbound identity, as a config snippet.
    Keygen {
        /// The identity the key is for (only used in the printed snippet).
        #[arg(long, default_value = "NAME")]
        identity: String,
    },
}

/// Exit codes (sysexits): 0 ok, 64 bad usage or configuration, 69 could not start.
pub mod exit {
    pub const OK: i32 = 0;
    pub const CONFIG: i32 = 64;
    pub const UNAVAILABLE: i32 = 69;
}

/// A new key pair: a 20-character access key id starting with `APG` and a 40-character secret.
pub fn keygen() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rngs::OsRng;
    let akid: String = "APG"
        .chars()
        .chain((0..17).map(|_| UPPER[rng.gen_range(0..UPPER.len())] as char))
        .collect();
    let secret: String = (0..40)
        .map(|_| SECRET[rng.gen_range(0..SECRET.len())] as char)
        .collect();
    (akid, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_makes_distinct_well_formed_keys() {
        let (a1, s1) = keygen();
        let (a2, s2) = keygen();
        assert_ne!(a1, a2);
        assert_ne!(s1, s2);
        assert_eq!(a1.len(), 20);
        assert!(a1.starts_with("APG") && a1.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        assert_eq!(s1.len(), 40);
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
