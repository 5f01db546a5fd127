//! Access point ARNs and the hosts they are reached at.
//!
//! `arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME` (botocore also accepts `accesspoint:NAME`).
//! The host is `{name}-{account}.s3-accesspoint.{region}.{dns suffix}` (botocore's endpoint
//! rule set, PROTOCOL.md §1.1).

use std::fmt;

/// A validated S3 access point.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessPoint {
    arn: String,
    partition: Partition,
    region: String,
    account: String,
    name: String,
    host: String,
}

/// The AWS partitions apgate knows the DNS suffix of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    Aws,
    AwsCn,
    AwsUsGov,
}

impl Partition {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "aws" => Some(Self::Aws),
            "aws-cn" => Some(Self::AwsCn),
            "aws-us-gov" => Some(Self::AwsUsGov),
            _ => None,
        }
    }

    fn dns_suffix(self) -> &'static str {
        match self {
            Self::Aws | Self::AwsUsGov => "amazonaws.com",
            Self::AwsCn => "amazonaws.com.cn",
        }
    }
}

/// Why an access point ARN was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArn(pub String);

impl fmt::Display for InvalidArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidArn {}

impl AccessPoint {
    /// Parses and validates an access point ARN.
    pub fn parse(arn: &str) -> Result<Self, InvalidArn> {
        let err = |m: &str| InvalidArn(m.to_owned());
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(err("not an ARN (want arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME)"));
        }
        let partition = Partition::parse(parts[1]).ok_or_else(|| err("partition must be aws, aws-cn or aws-us-gov"))?;
        if parts[2] != "s3" {
            return Err(err("service must be s3"));
        }
        let region = parts[3];
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err("region must be set (multi-region access points are not supported)"));
        }
        let account = parts[4];
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("account must be 12 digits"));
        }
        let name = parts[5]
            .strip_prefix("accesspoint/")
            .or_else(|| parts[5].strip_prefix("accesspoint:"))
            .ok_or_else(|| err("resource must be accesspoint/NAME"))?;
        if !valid_name(name) {
            return Err(err(
                "access point name must be 3-50 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
            ));
        }
        let host = format!("{name}-{account}.s3-accesspoint.{region}.{}", partition.dns_suffix());
        Ok(Self {
            arn: format!("arn:{}:s3:{region}:{account}:accesspoint/{name}", parts[1]),
            partition,
            region: region.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
            host,
        })
    }

    /// The ARN in canonical `accesspoint/NAME` form.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The region the access point lives in; requests are signed for it.
    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual host the access point answers on.
    pub fn host(&self) -> &str {
        &self.host
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=50).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl fmt::Debug for AccessPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

impl fmt::Display for AccessPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arns_into_hosts() {
        let cases = [
            (
                "arn:aws:s3:us-west-2:123456789012:accesspoint/myendpoint",
                "myendpoint-123456789012.s3-accesspoint.us-west-2.amazonaws.com",
            ),
            (
                "arn:aws:s3:us-east-1:123456789012:accesspoint:bob-access-point-test",
                "bob-access-point-test-123456789012.s3-accesspoint.us-east-1.amazonaws.com",
            ),
            (
                "arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/myendpoint",
                "myendpoint-123456789012.s3-accesspoint.cn-north-1.amazonaws.com.cn",
            ),
        ];
        for (arn, host) in cases {
            let ap = AccessPoint::parse(arn).unwrap();
            assert_eq!(ap.host(), host);
            assert!(ap.arn().contains(":accesspoint/"));
        }
    }

    #[test]
    fn rejects_bad_arns_with_a_reason() {
        let cases = [
            (
                "arn:aws:s3:us-east-1:12345:accesspoint/x-y-z",
                "account must be 12 digits",
            ),
            ("arn:aws:s3:us-east-1:123456789012:accesspoint/ab", "access point name"),
            (
                "arn:aws:s3:us-east-1:123456789012:accesspoint/Upper",
                "access point name",
            ),
            ("arn:aws:s3::123456789012:accesspoint/mrap.mrap", "region must be set"),
            (
                "arn:aws:s3-object-lambda:us-east-1:123456789012:accesspoint/abc",
                "service must be s3",
            ),
            (
                "arn:aws:s3:us-east-1:123456789012:bucket/abc",
                "resource must be accesspoint",
            ),
            ("arn:foo:s3:us-east-1:123456789012:accesspoint/abc", "partition"),
            ("bucket-name", "not an ARN"),
        ];
        for (arn, want) in cases {
            let err = AccessPoint::parse(arn).unwrap_err();
            assert!(err.0.contains(want), "{arn}: {err}");
        }
    }
}
