//! The command line: `serve`, `check`, `explain`, `keygen` and `completions`.

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
    /// Validate a configuration file without binding any port. Every problem is printed with its
    /// key path (e.g. `routes[2].access_point: ... account must be 12 digits`); exit 0 when valid,
    /// 64 when not. Also warns about routes that can never match and identities nothing can reach.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, env = "APGATE_CONFIG")]
        config: PathBuf,
    },
    /// Show what apgate would do with a request, without sending anything: the same decision the
    /// proxy makes (the operation, the route, the access point, the upstream request), in words.
    ///
    /// Examples:
    ///   apgate explain -c apgate.toml --identity bob PUT /access-point-test/Bob/report.csv
    ///   apgate explain -c apgate.toml --listener shared -H 'Authorization: AWS4-HMAC-SHA256 ...' GET /b/k
    ///   apgate explain -c apgate.toml --identity bob --requests requests.jsonl
    Explain(ExplainArgs),
    /// Print a fresh access key id and secret for an inbound identity, as a config snippet.
    Keygen {
        /// The identity the key is for (only used in the printed snippet).
        #[arg(long, default_value = "NAME")]
        identity: String,
    },
    /// Check a running apgate: exit 0 when its `/readyz` (or the given URL) answers 200, 1 otherwise.
    /// For container health checks that have no curl (distroless images).
    Health {
        /// The URL to ask; by default `/readyz` on the configuration's `[admin] address` (a
        /// wildcard address asked on loopback), or `http://127.0.0.1:9090/readyz` without one.
        #[arg(long)]
        url: Option<String>,
        /// The configuration file whose `[admin] address` to ask (only that key is read).
        #[arg(short, long, env = "APGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout_seconds: f64,
    },
    /// Print a shell completion script, e.g. `apgate completions bash > /etc/bash_completion.d/apgate`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `apgate explain`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The configuration file (TOML).
    #[arg(short, long, env = "APGATE_CONFIG")]
    pub config: PathBuf,
    /// The caller, as named in [[identities]] (as if identified by its source network).
    #[arg(long, conflicts_with = "listener")]
    pub identity: Option<String>,
    /// A listener of the configuration: its identity chain checks the request's own signature
    /// (give its headers with -H).
    #[arg(long)]
    pub listener: Option<String>,
    /// A request header, as `Name: value` (repeat for more).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// For copies: the x-amz-copy-source the client sends (bucket/key).
    #[arg(long)]
    pub copy_source: Option<String>,
    /// A file with the request body, for operations whose body apgate checks (DeleteObjects).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Print the decision as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Explain the requests of a file, one JSON object a line ({"method", "target", "headers":
    /// [[name, value], ...], "identity" or "listener", "remote", "body_base64"}); prints one JSON
    /// decision a line.
    #[arg(long, conflicts_with_all = ["method", "target"])]
    pub requests: Option<PathBuf>,
    /// The HTTP method (GET, PUT, HEAD, DELETE, POST).
    #[arg(required_unless_present = "requests")]
    pub method: Option<String>,
    /// A path (/bucket/key?query) or a full URL (http://bucket.s3.example.internal/key).
    #[arg(required_unless_present = "requests")]
    pub target: Option<String>,
}

/// `apgate check`: prints problems or warnings, returns the exit code.
pub fn check(path: &std::path::Path) -> i32 {
    match crate::config::Config::load_without_secrets(path) {
        Ok((c, absent)) => {
            for w in crate::explain::warnings(&c) {
                eprintln!("warning: {w}");
            }
            note_absent_secrets(&absent);
            println!(
                "{}: ok ({} listeners, {} identities, {} routes)",
                path.display(),
                c.listeners.len(),
                c.identities.len(),
                c.routes.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            exit::CONFIG
        }
    }
}

/// What `check` and `explain` could not read: fine for validating a configuration (a pipeline has
/// no secrets), not for serving it.
fn note_absent_secrets(absent: &[crate::config::Problem]) {
    if absent.is_empty() {
        return;
    }
    eprintln!(
        "note: {} secret source(s) are not present here; the rest of the configuration is checked, and `apgate serve` will refuse to start without them:",
        absent.len()
    );
    for p in absent {
        eprintln!("  {}: {}", p.path, p.message);
    }
}

/// `apgate explain`: prints the decision; exit 0 when allowed, 1 when denied (for `--requests`:
/// when any is), 64 for a bad config or bad arguments.
pub fn explain(args: &ExplainArgs) -> i32 {
    use crate::explain::{request_from_json, Caller, Explainer, Request};
    let config = match crate::config::Config::load_without_secrets(&args.config) {
        Ok((c, absent)) => {
            note_absent_secrets(&absent);
            c
        }
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", args.config.display());
            return exit::CONFIG;
        }
    };
    let caller = match (&args.identity, &args.listener) {
        (Some(i), _) => Caller::Identity(i.clone()),
        (None, Some(l)) => Caller::Listener(l.clone()),
        (None, None) if args.requests.is_some() => Caller::Identity(String::new()),
        (None, None) => {
            eprintln!("apgate explain: give the caller with --identity NAME or --listener NAME");
            return exit::CONFIG;
        }
    };
    let explainer = Explainer::new(&config);
    if let Some(path) = &args.requests {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return exit::CONFIG;
            }
        };
        let mut all_allowed = true;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| e.to_string())
                .and_then(|v| request_from_json(&v, &caller));
            let json = match parsed {
                Ok(req) => {
                    let e = explainer.explain(&req, std::time::SystemTime::now());
                    all_allowed &= e.allowed;
                    e.json
                }
                Err(e) => {
                    all_allowed = false;
                    serde_json::json!({"allowed": false, "code": "InvalidRequest", "message": format!("line {}: {e}", n + 1)})
                }
            };
            println!("{json}");
        }
        return if all_allowed { exit::OK } else { 1 };
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((n, v)) => headers.push((n.trim().to_owned(), v.trim().to_owned())),
            None => {
                eprintln!("apgate explain: --header {h:?}: want 'Name: value'");
                return exit::CONFIG;
            }
        }
    }
    if let Some(cs) = &args.copy_source {
        headers.push(("x-amz-copy-source".to_owned(), cs.clone()));
    }
    let method = args.method.clone().unwrap_or_default();
    let framed = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding"));
    if !framed && matches!(method.to_ascii_uppercase().as_str(), "PUT" | "POST") {
        // A request with a body says how long it is; the proxy refuses a PUT that does not.
        let len = args
            .body
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        headers.push(("content-length".to_owned(), len.to_string()));
        if !args.json {
            println!("{:<11}Content-Length: {len} (give -H to say otherwise)", "assumed:");
        }
    }
    let body = match &args.body {
        None => None,
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                return exit::CONFIG;
            }
        },
    };
    let req = Request {
        caller,
        method,
        target: args.target.clone().unwrap_or_default(),
        headers,
        remote: None,
        body,
    };
    let e = explainer.explain(&req, std::time::SystemTime::now());
    if args.json {
        println!("{}", e.json);
    } else {
        print!("{e}");
    }
    if e.allowed {
        exit::OK
    } else {
        1
    }
}

/// `apgate keygen`: a config snippet with a fresh key.
pub fn print_keygen(identity: &str) -> i32 {
    let (akid, secret) = keygen();
    let var: String = identity
        .to_ascii_uppercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // The snippet on stdout (`apgate keygen --identity bob >> apgate.toml` is safe); the secret on
    // stderr only, so no redirect of stdout writes it into a configuration file.
    println!("# A new key for identity {identity:?}: the secret is on stderr. Store it where apgate reads it");
    println!("# (the environment variable below, or a file), give it to the caller, and add this under the");
    println!("# identity:");
    println!("[[identities.keys]]");
    println!("access_key_id = \"{akid}\"");
    println!("secret_access_key = {{ env = \"APGATE_{var}_SECRET\" }}");
    eprintln!("secret for {akid} (shown once, not on stdout): {secret}");
    exit::OK
}

/// The URL `apgate health` asks: the given one, or `/readyz` on the configuration's admin address.
pub fn health_url(url: Option<&str>, config: Option<&std::path::Path>) -> Result<String, String> {
    if let Some(url) = url {
        return Ok(url.to_owned());
    }
    let Some(path) = config else {
        return Ok("http://127.0.0.1:9090/readyz".to_owned());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Only [admin] address: a health check needs no secret and no full validation (and prints no
    // line of the file).
    let table: toml::Table = text
        .parse()
        .map_err(|_| format!("{}: not valid TOML (apgate check -c FILE says where)", path.display()))?;
    let address = table
        .get("admin")
        .and_then(|a| a.get("address"))
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("{}: no [admin] address", path.display()))?;
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|_| format!("{}: admin.address is not IP:PORT", path.display()))?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}/readyz", std::net::SocketAddr::new(ip, addr.port())))
}

/// `apgate health`: 0 when `url` answers 200 within the timeout, 1 otherwise.
pub fn health(url: Option<&str>, config: Option<&std::path::Path>, timeout_seconds: f64) -> i32 {
    let url = match health_url(url, config) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let url = url.as_str();
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("{url:?} is not a URL");
        return exit::CONFIG;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return 1;
    };
    let timeout = std::time::Duration::from_secs_f64(timeout_seconds.clamp(0.1, 60.0));
    let status = runtime.block_on(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        tokio::time::timeout(timeout, client.get(uri)).await
    });
    match status {
        Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => {
            println!("ok");
            exit::OK
        }
        Ok(Ok(resp)) => {
            eprintln!("{url}: not ready: {}", resp.status());
            1
        }
        Ok(Err(e)) => {
            eprintln!("{url}: unreachable: {e}");
            1
        }
        Err(_) => {
            eprintln!("{url}: no answer within {timeout:?}");
            1
        }
    }
}

/// `apgate completions SHELL`.
pub fn print_completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "apgate", &mut std::io::stdout());
    exit::OK
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
