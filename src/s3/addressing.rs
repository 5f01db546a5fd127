//! Inbound addressing: path-style `/bucket/key` and virtual-hosted `bucket.<base domain>/key`.
//!
//! The raw, still-encoded path is kept because inbound signatures are computed over it; the key is
//! decoded once, for routing and for re-encoding outbound. Nothing is ever normalised: `//` and a
//! leading `/` in a key are part of the key (PROTOCOL.md §4.1).

use std::fmt;

use super::encoding::{self, parse_query, QueryParam};

/// A bucket name that follows the S3 naming rules
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html>).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketName(String);

impl BucketName {
    /// Validates a bucket name.
    pub fn parse(name: &str) -> Result<Self, AddressingError> {
        let b = name.as_bytes();
        let ok = (3..=63).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && !name.contains("..")
            && !looks_like_ipv4(name);
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(AddressingError::InvalidBucketName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn looks_like_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Lets maps keyed by bucket name be searched with a `&str` (derived `Hash` hashes the `String`
/// as its `str`, so both agree).
impl std::borrow::Borrow<str> for BucketName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the client named the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingStyle {
    Path,
    VirtualHosted,
}

/// An inbound request target, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    pub style: AddressingStyle,
    /// `None` for service-level requests (`GET /`, ListBuckets).
    pub bucket: Option<BucketName>,
    /// The object key, decoded. `None` for bucket-level requests.
    pub key: Option<String>,
    /// The path exactly as received (still encoded): inbound signatures are over it.
    pub raw_path: String,
    /// The query exactly as received, without `?`.
    pub raw_query: String,
    /// The decoded query parameters, in order, each name at most once: what every later phase
    /// (classification, signature checks, routing, the outbound request) reads.
    pub query: Vec<QueryParam>,
}

impl S3Target {
    /// Whether a query parameter is present (with or without a value).
    pub fn has_param(&self, key: &str) -> bool {
        self.query.iter().any(|p| p.key == key)
    }

    /// The value of a query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }
}

/// Why a request target could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressingError {
    InvalidBucketName(String),
    InvalidPath,
    InvalidQuery,
    /// A query parameter given twice (by its decoded name): which one S3 reads is not apgate's to
    /// guess (`prefix=a/&prefix=b/`).
    DuplicateParameter(String),
    NotOriginForm,
}

impl fmt::Display for AddressingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBucketName(b) => write!(f, "the specified bucket is not valid: {b:?}"),
            Self::InvalidPath => f.write_str("the request path is not validly percent-encoded UTF-8"),
            Self::InvalidQuery => f.write_str("the query string is not validly percent-encoded UTF-8"),
            Self::DuplicateParameter(name) => write!(f, "the query parameter {name:?} is given more than once"),
            Self::NotOriginForm => f.write_str("the request target must be an absolute path"),
        }
    }
}

impl std::error::Error for AddressingError {}

/// Parses a request target. `host` is the Host header (port allowed); `domains` are the configured
/// virtual-host base domains, lower case, without a leading dot.
pub fn parse_target(
    host: Option<&str>,
    raw_path: &str,
    raw_query: Option<&str>,
    domains: &[String],
) -> Result<S3Target, AddressingError> {
    if !raw_path.starts_with('/') {
        return Err(AddressingError::NotOriginForm);
    }
    let raw_query = raw_query.unwrap_or("");
    let query = parse_query(raw_query).map_err(|_| AddressingError::InvalidQuery)?;
    if let Some(name) = first_duplicate(&query) {
        return Err(AddressingError::DuplicateParameter(name.to_owned()));
    }

    let vhost_bucket = host.and_then(|h| virtual_host_bucket(h, domains));
    let (style, bucket, raw_key) = match vhost_bucket {
        Some(b) => (AddressingStyle::VirtualHosted, Some(b?), &raw_path[1..]),
        None => {
            let rest = &raw_path[1..];
            if rest.is_empty() {
                (AddressingStyle::Path, None, "")
            } else {
                let (raw_bucket, raw_key) = rest.split_once('/').unwrap_or((rest, ""));
                let decoded = encoding::percent_decode_path(raw_bucket).map_err(|_| AddressingError::InvalidPath)?;
                let name = String::from_utf8(decoded).map_err(|_| AddressingError::InvalidPath)?;
                (AddressingStyle::Path, Some(BucketName::parse(&name)?), raw_key)
            }
        }
    };
    let key = if raw_key.is_empty() {
        None
    } else {
        let decoded = encoding::percent_decode_path(raw_key).map_err(|_| AddressingError::InvalidPath)?;
        Some(String::from_utf8(decoded).map_err(|_| AddressingError::InvalidPath)?)
    };
    Ok(S3Target {
        style,
        bucket,
        key,
        raw_path: raw_path.to_owned(),
        raw_query: raw_query.to_owned(),
        query,
    })
}

/// The first parameter name given twice: pairwise for the few parameters of real requests, with a
/// set for the many a hostile one may carry.
fn first_duplicate(query: &[QueryParam]) -> Option<&str> {
    if query.len() <= 16 {
        return query
            .iter()
            .enumerate()
            .find(|(i, p)| query[..*i].iter().any(|q| q.key == p.key))
            .map(|(_, p)| p.key.as_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(query.len());
    query.iter().map(|p| p.key.as_str()).find(|k| !seen.insert(*k))
}

/// `Some(bucket)` when `host` is `<bucket>.<domain>` for a configured domain.
fn virtual_host_bucket(host: &str, domains: &[String]) -> Option<Result<BucketName, AddressingError>> {
    let host = strip_port(host);
    domains.iter().find_map(|d| {
        // Compared as bytes: a host need not be ASCII (the fuzzer found a panic slicing inside a
        // multi-byte character); after a match the split is after an ASCII '.', a char boundary.
        let prefix = host.len().checked_sub(d.len() + 1)?;
        let rest = &host.as_bytes()[prefix..];
        let label = host.get(..prefix)?;
        (rest[0] == b'.' && rest[1..].eq_ignore_ascii_case(d.as_bytes()))
            .then(|| BucketName::parse(&label.to_ascii_lowercase()))
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..=h.len()]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["s3.example.internal".to_owned()]
    }

    #[test]
    fn non_ascii_hosts_are_not_virtual_hosts_and_never_panic() {
        // Found by the `addressing` fuzz target (fuzz/regressions/addressing): a multi-byte
        // character straddling the split point.
        let domains = vec!["s3.localhost".to_owned()];
        for host in [
            "aés3.localhost",
            "é.s3.localhost",
            "s3.localhosté",
            "ééééééééééééé",
            "é",
        ] {
            let t = parse_target(Some(host), "/bkt/k", None, &domains);
            if let Ok(t) = t {
                assert_eq!(t.style, AddressingStyle::Path, "{host}");
            }
        }
    }

    #[test]
    fn parses_path_style_and_virtual_hosted_targets() {
        // (host, path, query) -> (style, bucket, key)
        let cases: &[(&str, &str, &str, AddressingStyle, Option<&str>, Option<&str>)] = &[
            ("127.0.0.1:8080", "/", "", AddressingStyle::Path, None, None),
            (
                "127.0.0.1:8080",
                "/bkt",
                "list-type=2",
                AddressingStyle::Path,
                Some("bkt"),
                None,
            ),
            ("127.0.0.1:8080", "/bkt/", "", AddressingStyle::Path, Some("bkt"), None),
            (
                "127.0.0.1",
                "/bkt/a/b.txt",
                "",
                AddressingStyle::Path,
                Some("bkt"),
                Some("a/b.txt"),
            ),
            (
                "h",
                "/bkt//leading",
                "",
                AddressingStyle::Path,
                Some("bkt"),
                Some("/leading"),
            ),
            (
                "h",
                "/bkt/a%20b%2Bc+d~%C3%BC",
                "",
                AddressingStyle::Path,
                Some("bkt"),
                Some("a b+c+d~ü"),
            ),
            (
                "h",
                "/bkt/x//y//",
                "",
                AddressingStyle::Path,
                Some("bkt"),
                Some("x//y//"),
            ),
            (
                "bkt.s3.example.internal:8443",
                "/k%3D1",
                "",
                AddressingStyle::VirtualHosted,
                Some("bkt"),
                Some("k=1"),
            ),
            (
                "BKT.S3.Example.Internal",
                "/",
                "",
                AddressingStyle::VirtualHosted,
                Some("bkt"),
                None,
            ),
            (
                "s3.example.internal",
                "/bkt/k",
                "",
                AddressingStyle::Path,
                Some("bkt"),
                Some("k"),
            ),
        ];
        for (host, path, query, style, bucket, key) in cases {
            let t = parse_target(Some(host), path, Some(query), &domains()).unwrap();
            assert_eq!(t.style, *style, "{host}{path}");
            assert_eq!(t.bucket.as_ref().map(BucketName::as_str), *bucket, "{host}{path}");
            assert_eq!(t.key.as_deref(), *key, "{host}{path}");
            assert_eq!(t.raw_path, *path, "raw path is kept as received");
        }
    }

    #[test]
    fn rejects_bad_targets() {
        let cases: &[(&str, &str, AddressingError)] = &[
            (
                "/Bad_Bucket/k",
                "",
                AddressingError::InvalidBucketName("Bad_Bucket".into()),
            ),
            ("/ab/k", "", AddressingError::InvalidBucketName("ab".into())),
            (
                "/192.168.1.1/k",
                "",
                AddressingError::InvalidBucketName("192.168.1.1".into()),
            ),
            ("/bkt/%zz", "", AddressingError::InvalidPath),
            ("/bkt/%FF", "", AddressingError::InvalidPath),
            ("/bkt/k", "prefix=%G1", AddressingError::InvalidQuery),
            ("http://evil/bkt/k", "", AddressingError::NotOriginForm),
            ("*", "", AddressingError::NotOriginForm),
        ];
        for (path, query, want) in cases {
            assert_eq!(
                parse_target(Some("h"), path, Some(query), &[]).unwrap_err(),
                *want,
                "{path}"
            );
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my.bucket-1", "a".repeat(63).as_str()] {
            assert!(BucketName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a..b",
            "ABC",
            "a_b",
            "a".repeat(64).as_str(),
            "1.2.3.4",
        ] {
            assert!(BucketName::parse(bad).is_err(), "{bad}");
        }
    }
}
