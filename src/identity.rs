//! Who is calling: an ordered chain of identity methods per listener.
//!
//! `sigv4` applies when the request carries an `Authorization` header, and then decides: a bad
//! signature is an error, never a fall-through to a weaker method. `source` applies when the
//! connection's address is in a configured network; any signature the caller sent is ignored.

pub mod sigv2;
pub mod sigv4;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method};
use ipnet::IpNet;

use crate::config::IdentityMethod;
use crate::error::{GatewayError, S3ErrorCode};
use crate::s3::{PayloadHash, S3Target};

pub use sigv4::SigV4Verifier;

/// The caller, once identified.
#[derive(Debug, Clone)]
pub struct CallerIdentity {
    pub name: Arc<str>,
    /// How the caller was identified.
    pub method: IdentityMethod,
    /// What the caller declared about its payload (forwarded when it is safe to).
    pub payload: PayloadHash,
    /// For signed aws-chunked payloads of a SigV4 caller: the key and seed its chunks are checked
    /// against. `None` for callers trusted without a signature, whose chunks are re-signed unchecked.
    pub chunks: Option<crate::chunked::Inbound>,
}

/// Source networks of one listener, most specific first.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    nets: Vec<(IpNet, Arc<str>)>,
}

impl SourceMap {
    pub fn new(mut nets: Vec<(IpNet, Arc<str>)>) -> Self {
        nets.sort_by_key(|n| std::cmp::Reverse(n.0.prefix_len()));
        Self { nets }
    }

    /// The identity for a source address (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn lookup(&self, addr: IpAddr) -> Option<&Arc<str>> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().find(|(net, _)| net.contains(&addr)).map(|(_, id)| id)
    }
}

/// How a listener identifies its callers: its ordered methods and their tables.
#[derive(Debug, Clone, Default)]
pub struct ListenerIdentity {
    /// Tried in order; the first that applies decides.
    pub methods: Vec<IdentityMethod>,
    /// Source networks (the `source` method).
    pub sources: SourceMap,
    /// Client-certificate subject → identity (the `mtls` method).
    pub certificates: HashMap<String, Arc<str>>,
}

impl ListenerIdentity {
    /// A listener's identity chain, from its configuration.
    pub fn from_config(l: &crate::config::ListenerConfig) -> Self {
        Self {
            methods: l.identity_methods.clone(),
            sources: SourceMap::new(
                l.sources
                    .iter()
                    .map(|(net, id)| (*net, Arc::from(id.as_str())))
                    .collect(),
            ),
            certificates: l
                .client_certificates
                .iter()
                .map(|(subject, id)| (subject.clone(), Arc::from(id.as_str())))
                .collect(),
        }
    }
}

/// What identity methods look at: the request head and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub remote: IpAddr,
    /// The subject of the verified client certificate, on TLS listeners that ask for one.
    pub client_certificate: Option<&'a str>,
    pub method: &'a Method,
    pub target: &'a S3Target,
    pub headers: &'a HeaderMap,
}

/// Runs a listener's identity chain over a request head.
pub fn authenticate(
    listener: &ListenerIdentity,
    verifier: &SigV4Verifier,
    head: &RequestHead<'_>,
    now: SystemTime,
) -> Result<CallerIdentity, GatewayError> {
    let ListenerIdentity {
        methods,
        sources,
        certificates,
    } = listener;
    let RequestHead {
        remote,
        client_certificate,
        method,
        target,
        headers,
    } = *head;
    let signed = |v: sigv4::Verified, m: IdentityMethod| CallerIdentity {
        name: v.identity,
        method: m,
        payload: v.payload,
        chunks: v.chunks,
    };
    for m in methods {
        match m {
            IdentityMethod::SigV4 => {
                if sigv4::is_presigned(target) {
                    return Ok(signed(verifier.verify_presigned(method, target, headers, now)?, *m));
                }
                let v2_enabled = methods.contains(&IdentityMethod::SigV2);
                if !v2_enabled && sigv2::is_presigned_v2(target) {
                    return Err(GatewayError::client(
                        S3ErrorCode::InvalidRequest,
                        "SigV2 presigned URLs are not enabled on this listener. Please use AWS4-HMAC-SHA256.",
                    ));
                }
                let v2_header = sigv2::is_header_v2(headers);
                if headers.contains_key(http::header::AUTHORIZATION) && !(v2_header && v2_enabled) {
                    return Ok(signed(verifier.verify(method, target, headers, now)?, *m));
                }
            }
            IdentityMethod::SigV2 => {
                if sigv2::is_header_v2(headers) || sigv2::is_presigned_v2(target) {
                    return Ok(signed(sigv2::verify(verifier, method, target, headers, now)?, *m));
                }
            }
            IdentityMethod::Mtls => {
                if let Some(subject) = client_certificate {
                    let name = certificates.get(subject).ok_or_else(|| {
                        GatewayError::client(
                            S3ErrorCode::AccessDenied,
                            "Access Denied: the client certificate has no subject of the configured kind, or it is not mapped to an identity.",
                        )
                    })?;
                    let payload = declared_payload(headers)?;
                    return Ok(CallerIdentity {
                        name: name.clone(),
                        method: *m,
                        payload,
                        chunks: None,
                    });
                }
            }
            IdentityMethod::Source => {
                if let Some(name) = sources.lookup(remote) {
                    let payload = declared_payload(headers)?;
                    return Ok(CallerIdentity {
                        name: name.clone(),
                        method: *m,
                        payload,
                        chunks: None,
                    });
                }
            }
        }
    }
    Err(GatewayError::client(
        S3ErrorCode::AccessDenied,
        "Access Denied: the caller could not be identified on this listener.",
    ))
}

/// What a caller trusted without a signature declared about its payload (`UNSIGNED-PAYLOAD` when
/// nothing).
fn declared_payload(headers: &HeaderMap) -> Result<PayloadHash, GatewayError> {
    match headers.get(&crate::s3::headers::X_AMZ_CONTENT_SHA256) {
        None => Ok(PayloadHash::Unsigned),
        Some(v) => v.to_str().ok().and_then(PayloadHash::parse).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::InvalidArgument,
                "x-amz-content-sha256 is not a value S3 accepts.",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_map_prefers_the_most_specific_network() {
        let m = SourceMap::new(vec![
            ("10.0.0.0/8".parse().unwrap(), Arc::from("wide")),
            ("10.1.2.0/24".parse().unwrap(), Arc::from("narrow")),
            ("::1/128".parse().unwrap(), Arc::from("v6")),
        ]);
        let cases = [
            ("10.1.2.3", Some("narrow")),
            ("10.9.9.9", Some("wide")),
            ("::ffff:10.1.2.3", Some("narrow")),
            ("::1", Some("v6")),
            ("192.0.2.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(m.lookup(ip.parse().unwrap()).map(|s| &**s), want, "{ip}");
        }
    }
}
