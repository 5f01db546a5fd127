//! Rewriting a bucket-style request into an access point request.
//!
//! **Architecture invariant:** rewriting is pure. The outbound host is always the access point's
//! host, and the connection always goes to the configured endpoint: nothing the client sends
//! (Host, absolute URI, bucket name) can choose where apgate connects.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Uri};

use crate::config::Endpoint;
use crate::identity::sigv2::PRESIGN_V2_PARAMS;
use crate::identity::sigv4::PRESIGN_PARAMS;
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::{AccessPoint, S3Target};

/// Headers never forwarded: hop-by-hop (RFC 9110 §7.6.1), inbound authentication, and those the
/// signer sets afresh. (A `match`: the compiler turns it into a length switch, not a scan.)
fn dropped(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "host"
            | "authorization"
            | "x-amz-date"
            | "x-amz-security-token"
            | "x-amz-content-sha256"
    )
}

/// The outbound request head, before signing.
#[derive(Debug)]
pub struct Outbound {
    /// Where to connect: the access point host over HTTPS, or the custom endpoint.
    pub connect_uri: Uri,
    /// What the signature covers: `https://{access point host}{path}?{query}`.
    pub signing_uri: String,
    /// Forwarded headers, with `host` set to the access point host.
    pub headers: HeaderMap,
}

/// Builds the outbound request head for `target` through `ap`.
pub fn rewrite(
    method: &Method,
    headers: &HeaderMap,
    target: &S3Target,
    ap: &AccessPoint,
    endpoint: &Endpoint,
) -> Outbound {
    let _ = method;
    let mut pq = String::with_capacity(target.raw_path.len() + target.raw_query.len() + 8);
    pq.push('/');
    if let Some(key) = &target.key {
        uri_encode_into(&mut pq, key.as_bytes(), Slash::Keep);
    }
    // Inbound query authentication is apgate's to check, not the upstream's: apgate signs anew.
    let forwarded = target
        .query
        .iter()
        .filter(|p| !PRESIGN_PARAMS.contains(&p.key.as_str()) && !PRESIGN_V2_PARAMS.contains(&p.key.as_str()));
    for (i, p) in forwarded.enumerate() {
        pq.push(if i == 0 { '?' } else { '&' });
        uri_encode_into(&mut pq, p.key.as_bytes(), Slash::Encode);
        if !p.value.is_empty() {
            pq.push('=');
            uri_encode_into(&mut pq, p.value.as_bytes(), Slash::Encode);
        }
    }

    let signing_uri = concat(&["https://", ap.host(), &pq]);
    let connect = match endpoint {
        Endpoint::Aws => signing_uri.clone(),
        Endpoint::Custom(base) => {
            let scheme = base.scheme_str().unwrap_or("https");
            let authority = base.authority().map_or("", |a| a.as_str());
            concat(&[scheme, "://", authority, &pq])
        }
    };
    // Every piece was percent-encoded above, so the URI always parses; it takes the string's
    // buffer as it is.
    let connect_uri = Uri::from_maybe_shared(bytes::Bytes::from(connect)).unwrap_or_else(|_| Uri::from_static("/"));

    let connection_listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        if dropped(name.as_str()) || connection_listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Ok(host) = header::HeaderValue::from_str(ap.host()) {
        out.insert(header::HOST, host);
    }
    Outbound {
        connect_uri,
        signing_uri,
        headers: out,
    }
}

fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::s3::addressing::parse_target;

    fn ap() -> AccessPoint {
        AccessPoint::parse("arn:aws:s3:us-west-2:123456789012:accesspoint/myap").unwrap()
    }

    #[test]
    fn path_is_the_key_alone_encoded_once() {
        let cases = [
            ("/bkt/dir/a%20b%2Bc~%C3%BC.txt", "", "/dir/a%20b%2Bc~%C3%BC.txt"),
            ("/bkt/a+b", "", "/a%2Bb"),
            ("/bkt/x=y:z!'()", "", "/x%3Dy%3Az%21%27%28%29"),
            ("/bkt//lead//double", "", "//lead//double"),
            (
                "/bkt",
                "list-type=2&prefix=a%20b%2Bc%2F&encoding-type=url",
                "/?list-type=2&prefix=a%20b%2Bc%2F&encoding-type=url",
            ),
            ("/bkt/k", "uploads", "/k?uploads"),
            (
                "/bkt/k",
                "versionId=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&X-Amz-Date=x&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00",
                "/k?versionId=1",
            ),
            (
                "/bkt/k",
                "partNumber=1&uploadId=a%2Fb",
                "/k?partNumber=1&uploadId=a%2Fb",
            ),
        ];
        for (path, query, want) in cases {
            let t = parse_target(Some("127.0.0.1"), path, Some(query), &[]).unwrap();
            let out = rewrite(&Method::GET, &HeaderMap::new(), &t, &ap(), &Endpoint::Aws);
            assert_eq!(
                out.connect_uri.path_and_query().unwrap().as_str(),
                want,
                "{path}?{query}"
            );
            assert_eq!(
                out.signing_uri,
                format!("https://myap-123456789012.s3-accesspoint.us-west-2.amazonaws.com{want}")
            );
        }
    }

    #[test]
    fn custom_endpoint_changes_where_we_connect_not_the_host() {
        let t = parse_target(Some("evil.example"), "/bkt/k", None, &[]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("evil.example"));
        let out = rewrite(
            &Method::GET,
            &h,
            &t,
            &ap(),
            &Endpoint::Custom("http://127.0.0.1:5000".parse().unwrap()),
        );
        assert_eq!(out.connect_uri.to_string(), "http://127.0.0.1:5000/k");
        assert_eq!(
            out.headers["host"],
            "myap-123456789012.s3-accesspoint.us-west-2.amazonaws.com"
        );
    }

    #[test]
    fn drops_auth_and_hop_by_hop_headers() {
        let t = parse_target(Some("h"), "/bkt/k", None, &[]).unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "AWS4-HMAC-SHA256 x"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-security-token", "tok"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("range", "bytes=0-9"),
            ("x-amz-meta-a", "b"),
            ("content-md5", "abc=="),
            ("if-match", "\"etag\""),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let out = rewrite(&Method::PUT, &h, &t, &ap(), &Endpoint::Aws);
        let mut names: Vec<&str> = out.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-md5", "host", "if-match", "range", "x-amz-meta-a"]);
    }
}
