//! `x-amz-copy-source`: parsing what a bucket-style client sends, and the access point object ARN
//! that replaces it (PROTOCOL.md §2: `arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/object/KEY`,
//! URL-encoded except `-._~/`, with an unencoded `?versionId=` suffix, as botocore sends it).

use std::fmt;

use super::access_point::AccessPoint;
use super::addressing::BucketName;
use super::encoding::{percent_decode_path, uri_encode_into, Slash};

/// A parsed copy source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: BucketName,
    pub key: String,
    /// The raw `versionId` value, if any.
    pub version_id: Option<String>,
}

/// Why a copy source was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCopySource(pub &'static str);

impl fmt::Display for InvalidCopySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidCopySource {}

impl CopySource {
    /// Parses `[/]bucket/key[?versionId=ID]`, the key URL-encoded or not.
    pub fn parse(value: &str) -> Result<Self, InvalidCopySource> {
        let (path, query) = match value.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (value, None),
        };
        let version_id = match query {
            None => None,
            Some(q) => match q.strip_prefix("versionId=") {
                Some(v) if !v.is_empty() && !v.contains('&') => Some(v.to_owned()),
                _ => {
                    return Err(InvalidCopySource(
                        "the copy source may only carry a versionId parameter",
                    ))
                }
            },
        };
        let decoded =
            percent_decode_path(path).map_err(|_| InvalidCopySource("the copy source is not validly URL-encoded"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| InvalidCopySource("the copy source is not UTF-8"))?;
        let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
        let (bucket, key) = decoded
            .split_once('/')
            .ok_or(InvalidCopySource("the copy source must be of the form bucket/key"))?;
        if key.is_empty() {
            return Err(InvalidCopySource("the copy source must name a key"));
        }
        let bucket =
            BucketName::parse(bucket).map_err(|_| InvalidCopySource("the copy source names an invalid bucket"))?;
        Ok(Self {
            bucket,
            key: key.to_owned(),
            version_id,
        })
    }

    /// The header value naming the same object through `ap`.
    pub fn to_access_point_header(&self, ap: &AccessPoint) -> String {
        let mut out = String::with_capacity(ap.arn().len() + self.key.len() * 2 + 32);
        let mut plain = String::with_capacity(ap.arn().len() + self.key.len() + 8);
        plain.push_str(ap.arn());
        plain.push_str("/object/");
        plain.push_str(&self.key);
        uri_encode_into(&mut out, plain.as_bytes(), Slash::Keep);
        if let Some(v) = &self.version_id {
            out.push_str("?versionId=");
            out.push_str(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_clients_send() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("src-bucket/a/b.txt", "src-bucket", "a/b.txt", None),
            ("/src-bucket/a/b.txt", "src-bucket", "a/b.txt", None),
            ("src-bucket/src%20dir/a%2Bb.txt", "src-bucket", "src dir/a+b.txt", None),
            (
                "src-bucket/k?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
                "src-bucket",
                "k",
                Some("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
            ),
            ("src-bucket//lead", "src-bucket", "/lead", None),
            ("src-bucket/%C3%BC", "src-bucket", "ü", None),
        ];
        for (raw, bucket, key, version) in cases {
            let c = CopySource::parse(raw).unwrap();
            assert_eq!(
                (c.bucket.as_str(), c.key.as_str(), c.version_id.as_deref()),
                (*bucket, *key, *version),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_malformed_sources() {
        for bad in [
            "nokey",
            "bucket/",
            "Bad_Bucket/k",
            "bucket/%zz",
            "bucket/k?acl",
            "bucket/k?versionId=",
            "bucket/k?versionId=1&x=2",
        ] {
            assert!(CopySource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrites_to_the_access_point_object_arn_as_botocore_does() {
        let ap = AccessPoint::parse("arn:aws:s3:us-west-2:123456789012:accesspoint/myap").unwrap();
        let c = CopySource::parse("bucket/src%20dir/a%2Bb.txt").unwrap();
        // The exact value botocore sends (PROTOCOL.md §2, checked there against botocore 1.43).
        assert_eq!(
            c.to_access_point_header(&ap),
            "arn%3Aaws%3As3%3Aus-west-2%3A123456789012%3Aaccesspoint/myap/object/src%20dir/a%2Bb.txt"
        );
        let v = CopySource::parse("bucket/k?versionId=abc").unwrap();
        assert!(v.to_access_point_header(&ap).ends_with("/object/k?versionId=abc"));
    }
}
