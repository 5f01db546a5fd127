use super::*;
use crate::s3::addressing::parse_target;
use Operation::*;

/// (method, path, query, headers) → the operation, or the error's kind.
fn check(method: &str, path: &str, query: &str, headers: &[(&str, &str)]) -> Result<Operation, String> {
    let t = parse_target(Some("h"), path, Some(query), &[]).map_err(|e| format!("addressing: {e}"))?;
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let m: Method = method.parse().unwrap();
    classify(&m, &t, &h).map_err(|e| match e {
        RequestError::NoOperation => "none".to_owned(),
        RequestError::TwoOperations { .. } => "two".to_owned(),
        RequestError::UnknownParameter { marker_of: Some(_), .. } => "marker".to_owned(),
        RequestError::UnknownParameter { .. } => "param".to_owned(),
        RequestError::OperationIdMismatch { .. } => "x-id".to_owned(),
        RequestError::UnexpectedHeader { .. } => "header".to_owned(),
        RequestError::RepeatedHeader { .. } => "repeated".to_owned(),
    })
}

const COPY: (&str, &str) = ("x-amz-copy-source", "src/k");

#[test]
fn classifies_the_operations_apgate_forwards() {
    let cases: &[(&str, &str, &str, &[(&str, &str)], Operation)] = &[
        ("GET", "/", "", &[], ListBuckets),
        ("HEAD", "/bkt", "", &[], HeadBucket),
        ("GET", "/bkt", "location", &[], GetBucketLocation),
        ("GET", "/bkt", "list-type=2&prefix=a", &[], ListObjectsV2),
        (
            "GET",
            "/bkt",
            "list-type=2&prefix=a&x-id=ListObjectsV2",
            &[],
            ListObjectsV2,
        ),
        ("GET", "/bkt/", "prefix=a&delimiter=%2F", &[], ListObjects),
        ("GET", "/bkt", "versions&prefix=a", &[], ListObjectVersions),
        ("GET", "/bkt", "uploads", &[], ListMultipartUploads),
        ("POST", "/bkt", "delete", &[], DeleteObjects),
        ("GET", "/bkt/k", "", &[], GetObject),
        ("GET", "/bkt/k", "x-id=GetObject", &[], GetObject),
        ("GET", "/bkt/k", "partNumber=1&versionId=v", &[], GetObject),
        ("GET", "/bkt/k", "response-content-type=text%2Fplain", &[], GetObject),
        ("HEAD", "/bkt/k", "", &[], HeadObject),
        ("PUT", "/bkt/k", "", &[], PutObject),
        ("PUT", "/bkt/k", "", &[COPY], CopyObject),
        ("PUT", "/bkt/k", "partNumber=2&uploadId=u", &[], UploadPart),
        ("PUT", "/bkt/k", "partNumber=2&uploadId=u", &[COPY], UploadPartCopy),
        ("POST", "/bkt/k", "uploads", &[], CreateMultipartUpload),
        ("POST", "/bkt/k", "uploadId=u", &[], CompleteMultipartUpload),
        ("DELETE", "/bkt/k", "uploadId=u", &[], AbortMultipartUpload),
        ("GET", "/bkt/k", "uploadId=u&max-parts=2", &[], ListParts),
        ("DELETE", "/bkt/k", "", &[], DeleteObject),
        ("DELETE", "/bkt/k", "versionId=v", &[], DeleteObject),
        ("GET", "/bkt/k", "tagging", &[], GetObjectTagging),
        ("PUT", "/bkt/k", "tagging", &[], PutObjectTagging),
        ("DELETE", "/bkt/k", "tagging", &[], DeleteObjectTagging),
        ("GET", "/bkt/k", "acl", &[], GetObjectAcl),
        ("PUT", "/bkt/k", "acl", &[], PutObjectAcl),
        (
            "GET",
            "/bkt/k",
            "attributes",
            &[("x-amz-object-attributes", "ETag")],
            GetObjectAttributes,
        ),
        ("GET", "/bkt/k", "legal-hold", &[], GetObjectLegalHold),
        ("PUT", "/bkt/k", "retention", &[], PutObjectRetention),
        ("POST", "/bkt/k", "restore", &[], RestoreObject),
        // Operations apgate does not forward are still named, so the refusal can say which.
        ("GET", "/bkt", "policy", &[], GetBucketPolicy),
        ("GET", "/bkt", "tagging", &[], GetBucketTagging),
        ("PUT", "/bkt", "", &[], CreateBucket),
        ("DELETE", "/bkt", "", &[], DeleteBucket),
        ("GET", "/bkt", "analytics&id=a", &[], GetBucketAnalyticsConfiguration),
        ("GET", "/bkt", "analytics", &[], ListBucketAnalyticsConfigurations),
        ("POST", "/bkt/k", "select&select-type=2", &[], SelectObjectContent),
        ("GET", "/bkt/k", "torrent", &[], GetObjectTorrent),
    ];
    for (m, p, q, h, want) in cases {
        assert_eq!(check(m, p, q, h), Ok(*want), "{m} {p}?{q} {h:?}");
    }
}

/// The findings of issue 15: a second sub-resource beside the first, a parameter another
/// operation takes, a copy source outside the copies, headers the operation does not take.
#[test]
fn refuses_what_the_operation_does_not_take() {
    let cases: &[(&str, &str, &str, &[(&str, &str)], &str)] = &[
        // A listing that also names a bucket configuration (S3 dispatches on the second).
        ("GET", "/bkt", "list-type=2&prefix=lo%2F&tagging", &[], "two"),
        ("GET", "/bkt", "list-type=2&prefix=lo%2F&acl", &[], "two"),
        ("GET", "/bkt", "list-type=2&cors", &[], "two"),
        ("GET", "/bkt", "versions&policy", &[], "two"),
        ("GET", "/bkt", "uploads&versioning", &[], "two"),
        ("GET", "/bkt", "prefix=lo%2F&tagging", &[], "param"),
        ("GET", "/bkt", "list-type=2&uploads&versions", &[], "two"),
        // Encoded names are the names S3 reads.
        ("GET", "/bkt", "list-type=2&%74agging", &[], "two"),
        ("PUT", "/bkt/k", "%74agging", &[], "ok:PutObjectTagging"),
        // Object operations: one sub-resource each.
        ("GET", "/bkt/k", "acl&tagging", &[], "two"),
        ("PUT", "/bkt/k", "partNumber=1&uploadId=u&tagging", &[], "marker"),
        ("GET", "/bkt/k", "uploadId=u&tagging", &[], "two"),
        ("POST", "/bkt/k", "uploads&uploadId=u", &[], "two"),
        ("PUT", "/bkt/k", "partNumber=1", &[], "param"),
        ("GET", "/bkt/k", "prefix=a", &[], "param"),
        ("GET", "/bkt/k", "x-amz-acl=public-read", &[], "param"),
        ("GET", "/bkt/k", "x-id=PutObject", &[], "x-id"),
        ("PUT", "/bkt/k", "tagging&x-id=PutObject", &[], "x-id"),
        // A copy source outside CopyObject and UploadPartCopy.
        ("GET", "/bkt/k", "", &[COPY], "header"),
        ("PUT", "/bkt/k", "tagging", &[COPY], "two"),
        ("POST", "/bkt/k", "uploads", &[COPY], "header"),
        ("DELETE", "/bkt/k", "", &[COPY], "header"),
        // Headers the operation does not take.
        ("GET", "/bkt/k", "", &[("x-amz-acl", "public-read")], "header"),
        ("PUT", "/bkt/k", "tagging", &[("x-amz-grant-read", "uri=x")], "header"),
        (
            "GET",
            "/bkt",
            "list-type=2",
            &[("x-amz-bypass-governance-retention", "true")],
            "header",
        ),
        ("GET", "/bkt/k", "", &[("x-amz-decoded-content-length", "5")], "header"),
        ("GET", "/bkt/k", "", &[("x-amz-checksum-crc32", "AAAAAA==")], "header"),
        ("GET", "/bkt/k", "", &[("x-amz-made-up", "1")], "header"),
        // Repeated headers the operation takes.
        (
            "GET",
            "/bkt/k",
            "",
            &[("range", "bytes=0-1"), ("range", "bytes=5-9")],
            "repeated",
        ),
        (
            "PUT",
            "/bkt/k",
            "",
            &[("x-amz-tagging", "a=1"), ("x-amz-tagging", "b=2")],
            "repeated",
        ),
        // No operation takes these.
        ("PATCH", "/bkt/k", "", &[], "none"),
        ("POST", "/", "", &[], "none"),
        ("POST", "/bkt/k", "", &[], "none"),
        ("PUT", "/", "", &[], "none"),
    ];
    for (m, p, q, h, want) in cases {
        let got = match check(m, p, q, h) {
            Ok(op) => format!("ok:{}", op.as_str()),
            Err(e) => e,
        };
        assert_eq!(got, *want, "{m} {p}?{q} {h:?}");
    }
}

#[test]
fn authentication_framing_and_checksum_headers_are_taken_where_they_belong() {
    let put: &[(&str, &str)] = &[
        ("x-amz-date", "20260101T000000Z"),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("x-amz-decoded-content-length", "5"),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
        ("x-amz-user-agent", "aws-sdk-rust"),
        ("x-amz-meta-owner", "bob"),
        ("content-encoding", "aws-chunked"),
    ];
    assert_eq!(check("PUT", "/bkt/k", "", put), Ok(PutObject));
    assert_eq!(
        check("PUT", "/bkt/k", "partNumber=1&uploadId=u", put),
        Err("header".to_owned()),
        "no metadata on parts"
    );
    let delete: &[(&str, &str)] = &[
        ("x-amz-checksum-crc32", "AAAAAA=="),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
    ];
    assert_eq!(check("POST", "/bkt", "delete", delete), Ok(DeleteObjects));
    assert_eq!(
        check("GET", "/bkt/k", "", &[("x-amz-checksum-mode", "ENABLED")]),
        Ok(GetObject)
    );
}

#[test]
fn duplicated_parameters_are_refused_by_the_parse() {
    for q in [
        "prefix=lo%2F&prefix=ro%2F",
        "acl&acl",
        "tagging&%74agging",
        "list-type=2&list-type=2",
    ] {
        assert!(
            matches!(
                parse_target(Some("h"), "/bkt", Some(q), &[]),
                Err(crate::s3::addressing::AddressingError::DuplicateParameter(_))
            ),
            "{q}"
        );
    }
}

/// The index holds, for every method and resource, exactly the model's operations of that
/// method and resource, in the model's order (selection's tie rule depends on the order), and
/// every operation is in one slot.
#[test]
fn the_candidate_index_is_the_model_filtered_in_order() {
    use crate::s3::operation::{HttpMethod, Resource};
    let mut seen = 0;
    for method in [
        HttpMethod::Get,
        HttpMethod::Put,
        HttpMethod::Post,
        HttpMethod::Delete,
        HttpMethod::Head,
    ] {
        for resource in [Resource::Service, Resource::Bucket, Resource::Object] {
            let want: Vec<Operation> = Operation::ALL
                .into_iter()
                .filter(|op| op.spec().method == method && op.spec().resource == resource)
                .collect();
            let got: Vec<Operation> = candidates(method, resource).iter().map(|s| s.operation).collect();
            assert_eq!(got, want, "{method:?} {resource:?}");
            seen += got.len();
        }
    }
    assert_eq!(seen, Operation::ALL.len());
}
