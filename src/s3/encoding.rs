//! Percent-encoding as S3 and SigV4 define it.
//!
//! S3's `UriEncode` leaves only `A-Z a-z 0-9 - . _ ~` unencoded (plus `/` in paths) and writes
//! upper-case hex (<https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html>).

use std::fmt;

/// A malformed percent escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEncoding;

impl fmt::Display for InvalidEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid percent-encoding")
    }
}

impl std::error::Error for InvalidEncoding {}

/// Whether `/` is kept as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slash {
    /// Paths: `/` separates nothing for S3 but is sent as is.
    Keep,
    /// Query parameters and header values: `/` becomes `%2F`.
    Encode,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// S3 `UriEncode` of raw bytes, appended to `out`.
pub fn uri_encode_into(out: &mut String, input: &[u8], slash: Slash) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input {
        if is_unreserved(b) || (b == b'/' && slash == Slash::Keep) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

/// Lowercase hex, as SigV4 writes hashes and signatures (`hex::encode` goes char by char through an
/// iterator; this is the hot path of every request).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes, HEX_LOWER);
    out
}

/// Lowercase hex digits.
pub const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
/// Uppercase hex digits.
pub const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `bytes` in hex with the given digits.
pub fn push_hex(out: &mut String, bytes: &[u8], digits: &[u8; 16]) {
    // Through a stack buffer, 32 bytes at a time: one append per 64 digits instead of a
    // char push (with its capacity check) per digit.
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        write_hex(&mut buf, chunk, digits);
        // Hex digits are ASCII, so this never falls back.
        out.push_str(std::str::from_utf8(&buf[..chunk.len() * 2]).unwrap_or_default());
    }
}

/// A 32-byte digest (SHA-256, HMAC-SHA256) in lowercase hex, on the stack.
pub fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    write_hex(&mut out, bytes, HEX_LOWER);
    out
}

/// `bytes` in hex into the start of `dst` (two digits a byte, as many as `dst` holds).
fn write_hex(dst: &mut [u8], bytes: &[u8], digits: &[u8; 16]) {
    for (pair, &b) in dst.chunks_exact_mut(2).zip(bytes) {
        pair[0] = digits[usize::from(b >> 4)];
        pair[1] = digits[usize::from(b & 0x0f)];
    }
}

pub fn uri_encode(input: &[u8], slash: Slash) -> String {
    let mut out = String::with_capacity(input.len() + input.len() / 2);
    uri_encode_into(&mut out, input, slash);
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict percent-decoding of a path segment: `%` must be followed by two hex digits and `+` stays
/// a plus sign.
pub fn percent_decode_path(raw: &str) -> Result<Vec<u8>, InvalidEncoding> {
    decode(raw, false)
}

/// Strict percent-decoding of a query component: as for paths, but a raw `+` is a space (form
/// encoding, as S3 and aws-sigv4 read it).
pub fn percent_decode_query(raw: &str) -> Result<Vec<u8>, InvalidEncoding> {
    decode(raw, true)
}

fn decode(raw: &str, plus_is_space: bool) -> Result<Vec<u8>, InvalidEncoding> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val).ok_or(InvalidEncoding)?;
                let lo = bytes.get(i + 2).copied().and_then(hex_val).ok_or(InvalidEncoding)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// One decoded query parameter. A key with no `=` has an empty value and `has_value == false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    pub key: String,
    pub value: String,
    /// Whether the parameter had a `=` (`?acl` has none, `?prefix=` has one).
    pub has_value: bool,
}

/// Parses a raw query string into decoded parameters, in order. Invalid escapes and non-UTF-8
/// text are errors.
pub fn parse_query(raw: &str) -> Result<Vec<QueryParam>, InvalidEncoding> {
    let mut params = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v, has_value) = match pair.split_once('=') {
            Some((k, v)) => (k, v, true),
            None => (pair, "", false),
        };
        let key = String::from_utf8(percent_decode_query(k)?).map_err(|_| InvalidEncoding)?;
        let value = String::from_utf8(percent_decode_query(v)?).map_err(|_| InvalidEncoding)?;
        params.push(QueryParam { key, value, has_value });
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_matches_the_hex_crate() {
        let long: Vec<u8> = (0..=255).collect();
        let cases: [&[u8]; 7] = [
            b"",
            b"\x00\x0f\xf0\xff",
            b"apgate",
            &[0xab; 32],
            &long[..31],
            &long[..33],
            &long,
        ];
        for bytes in cases {
            assert_eq!(hex_lower(bytes), hex::encode(bytes));
        }
        assert_eq!(hex_lower(&[0xde, 0xad, 0xbe, 0xef]), "deadbeef");
        let digest: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(&hex32(&digest)[..], hex::encode(digest).as_bytes());
        let mut upper = String::from("x");
        push_hex(&mut upper, &[0x0a, 0xbc], HEX_UPPER);
        assert_eq!(upper, "x0ABC");
    }

    #[test]
    fn uri_encode_matches_s3_rules() {
        let cases: &[(&str, Slash, &str)] = &[
            ("abc-._~XYZ019", Slash::Keep, "abc-._~XYZ019"),
            ("dir/a b+c~ü.txt", Slash::Keep, "dir/a%20b%2Bc~%C3%BC.txt"),
            ("a/b", Slash::Encode, "a%2Fb"),
            ("=:@!$&'()*,;", Slash::Keep, "%3D%3A%40%21%24%26%27%28%29%2A%2C%3B"),
            ("//x", Slash::Keep, "//x"),
        ];
        for (input, slash, want) in cases {
            assert_eq!(uri_encode(input.as_bytes(), *slash), *want, "{input}");
        }
    }

    #[test]
    fn decoding_is_strict_and_plus_depends_on_context() {
        assert_eq!(percent_decode_path("a%20b+c").unwrap(), b"a b+c");
        assert_eq!(percent_decode_query("a%20b+c").unwrap(), b"a b c");
        assert_eq!(percent_decode_path("%c3%BC").unwrap(), "ü".as_bytes());
        for bad in ["%", "%2", "%zz", "a%2G"] {
            assert_eq!(percent_decode_path(bad), Err(InvalidEncoding), "{bad}");
        }
    }

    #[test]
    fn parses_query_parameters_in_order() {
        let q = parse_query("list-type=2&prefix=Bob%2F&delimiter=%2F&uploads&x=").unwrap();
        let got: Vec<(&str, &str)> = q.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("list-type", "2"),
                ("prefix", "Bob/"),
                ("delimiter", "/"),
                ("uploads", ""),
                ("x", "")
            ]
        );
        assert!(parse_query("a=%FF").is_err(), "non-UTF-8 is refused");
    }
}
