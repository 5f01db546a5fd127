//! The `x-amz-content-sha256` values S3 accepts (PROTOCOL.md §4.1) and what apgate does with each.

/// What the client declared about its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadHash {
    /// The lowercase hex SHA-256 of the body; forwarded as is, S3 checks it.
    Sha256(HexSha256),
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked with a checksum trailer, no signatures.
    StreamingUnsignedTrailer,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: every chunk is signed with the caller's key.
    StreamingSigned { trailer: bool },
    /// `STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD[-TRAILER]` (SigV4a).
    StreamingSigV4a,
}

/// 64 lowercase hex digits, held inline (no allocation per request).
#[derive(Clone, PartialEq, Eq)]
pub struct HexSha256([u8; 64]);

impl HexSha256 {
    pub fn as_str(&self) -> &str {
        // Only ever built from 64 ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for HexSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
                let mut digits = [0u8; 64];
                digits.copy_from_slice(hex.as_bytes());
                Self::Sha256(HexSha256(digits))
            }
            _ => return None,
        })
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Sha256(h) => h.as_str(),
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
            (
                empty,
                Some(PayloadHash::Sha256(HexSha256(empty.as_bytes().try_into().unwrap()))),
            ),
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
            let parsed = PayloadHash::parse(v);
            assert_eq!(parsed, *want, "{v}");
            if let Some(p) = parsed {
                assert_eq!(p.as_str(), *v);
            }
        }
    }
}
