//! The `x-amz-content-sha256` values S3 accepts (PROTOCOL.md §4.1) and what apgate does with each.

/// What the client declared about its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadHash {
    /// The lowercase hex SHA-256 of the body; forwarded as is, S3 checks it.
    Sha256(String),
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked with a checksum trailer, no signatures.
    StreamingUnsignedTrailer,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: every chunk is signed with the caller's key.
    StreamingSigned { trailer: bool },
    /// `STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD[-TRAILER]` (SigV4a).
    StreamingSigV4a,
}

impl PayloadHash {
    /// Parses a header value; `None` when it is none of the accepted forms.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "UNSIGNED-PAYLOAD" => Self::Unsigned,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Self::StreamingUnsignedTrailer,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Self::StreamingSigned { trailer: false },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => Self::StreamingSigned { trailer: true },
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD" | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => {
                Self::StreamingSigV4a
            }
            hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                Self::Sha256(hex.to_owned())
            }
            _ => return None,
        })
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Sha256(h) => h,
            Self::Unsigned => "UNSIGNED-PAYLOAD",
            Self::StreamingUnsignedTrailer => "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            Self::StreamingSigned { trailer: false } => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            Self::StreamingSigned { trailer: true } => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            Self::StreamingSigV4a => "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_values() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases: &[(&str, Option<PayloadHash>)] = &[
            (empty, Some(PayloadHash::Sha256(empty.into()))),
            ("UNSIGNED-PAYLOAD", Some(PayloadHash::Unsigned)),
            (
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                Some(PayloadHash::StreamingUnsignedTrailer),
            ),
            (
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                Some(PayloadHash::StreamingSigned { trailer: false }),
            ),
            (
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                Some(PayloadHash::StreamingSigned { trailer: true }),
            ),
            ("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", None),
            ("e3b0", None),
            ("unsigned-payload", None),
        ];
        for (v, want) in cases {
            assert_eq!(PayloadHash::parse(v), *want, "{v}");
        }
    }
}
