//! The small S3 XML bodies apgate must look into: DeleteObjects requests (the keys, checked against
//! routes) and responses that name the bucket (rewritten to the client-facing bucket and URL so the
//! access point's name, alias or host never reaches the client).
//!
//! Only direct children of the root element are rewritten: `Name` (ListObjects, V2, Versions),
//! `Bucket` (multipart responses), `BucketName` (errors), `Location` (CompleteMultipartUpload) and
//! `Endpoint` (redirect errors). Everything else is copied event by event.

use std::fmt;

use quick_xml::events::{BytesText, Event};
use quick_xml::{Reader, Writer};

/// A body that is not the XML we expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError(pub String);

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XmlError {}

/// What bucket-revealing elements become.
#[derive(Debug, Clone)]
pub struct ClientView<'a> {
    /// The bucket name the client used.
    pub bucket: &'a str,
    /// The client-facing URL of the object (for `Location`), if there is one.
    pub location: Option<&'a str>,
    /// The client-facing endpoint (for `Endpoint`), e.g. `127.0.0.1:8080`.
    pub endpoint: &'a str,
}

fn xml_err(e: impl fmt::Display) -> XmlError {
    XmlError(e.to_string())
}

/// Resolves an entity or character reference to its text.
fn resolve_ref(name: &[u8], r: &quick_xml::events::BytesRef<'_>) -> Result<String, XmlError> {
    if r.is_char_ref() {
        return r
            .resolve_char_ref()
            .map_err(xml_err)?
            .map(String::from)
            .ok_or_else(|| xml_err("invalid character reference"));
    }
    Ok(match name {
        b"lt" => "<",
        b"gt" => ">",
        b"amp" => "&",
        b"apos" => "'",
        b"quot" => "\"",
        other => return Err(XmlError(format!("unknown entity &{};", String::from_utf8_lossy(other)))),
    }
    .to_owned())
}

/// Rewrites bucket-revealing elements of an S3 response body.
pub fn rewrite_response(body: &[u8], view: &ClientView<'_>) -> Result<Vec<u8>, XmlError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut writer = Writer::new(Vec::with_capacity(body.len() + 64));
    let mut depth = 0usize;
    // When inside an element being replaced: its depth and the replacement text.
    let mut replacing: Option<(usize, String)> = None;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match &event {
            Event::Eof => break,
            Event::Start(start) => {
                depth += 1;
                if replacing.is_none() && depth == 2 {
                    let replacement = match start.local_name().as_ref() {
                        b"Name" | b"Bucket" | b"BucketName" => Some(view.bucket.to_owned()),
                        b"Location" => view.location.map(str::to_owned),
                        b"Endpoint" => Some(view.endpoint.to_owned()),
                        _ => None,
                    };
                    if let Some(text) = replacement {
                        writer.write_event(event.borrow()).map_err(xml_err)?;
                        replacing = Some((depth, text));
                        continue;
                    }
                }
            }
            Event::End(_) => {
                if let Some((d, text)) = &replacing {
                    if *d == depth {
                        writer.write_event(Event::Text(BytesText::new(text))).map_err(xml_err)?;
                        replacing = None;
                    }
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        if replacing.is_some() {
            // The original content of a replaced element is dropped, nested elements and their end
            // tags included (the `xml_rewrite` fuzz target found `</b>` of `<Name><b>x</b></Name>`
            // written without its start).
            continue;
        }
        writer.write_event(event).map_err(xml_err)?;
    }
    Ok(writer.into_inner())
}

/// One object named in a DeleteObjects request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteEntry {
    pub key: String,
}

/// The keys of a DeleteObjects request body (`<Delete><Object><Key>..</Key>..</Object>..</Delete>`).
pub fn delete_objects_keys(body: &[u8]) -> Result<Vec<DeleteEntry>, XmlError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<String> = None;
    let mut keys = Vec::new();
    loop {
        match reader.read_event().map_err(xml_err)? {
            Event::Eof => break,
            Event::Start(s) => {
                path.push(s.local_name().as_ref().to_vec());
                if path.len() == 1 && path[0] != b"Delete" {
                    return Err(xml_err("the root element must be Delete"));
                }
                if path.len() == 3 && path[0] == b"Delete" && path[1] == b"Object" && path[2] == b"Key" {
                    current = Some(String::new());
                }
            }
            Event::Empty(s) if path.len() == 2 && path[1] == b"Object" && s.local_name().as_ref() == b"Key" => {
                keys.push(DeleteEntry { key: String::new() });
            }
            Event::Text(t) => {
                if let Some(k) = current.as_mut() {
                    k.push_str(&t.decode().map_err(xml_err)?);
                }
            }
            Event::CData(t) => {
                if let Some(k) = current.as_mut() {
                    k.push_str(&t.decode().map_err(xml_err)?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(k) = current.as_mut() {
                    let name: &[u8] = &r;
                    k.push_str(&resolve_ref(name, &r)?);
                }
            }
            Event::End(_) => {
                if path.len() == 3 {
                    if let Some(k) = current.take() {
                        keys.push(DeleteEntry { key: k });
                    }
                }
                path.pop();
            }
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(xml_err("the body ends inside an element"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClientView<'static> {
        ClientView {
            bucket: "shared",
            location: Some("http://127.0.0.1:8080/shared/Bob/a%20b"),
            endpoint: "127.0.0.1:8080",
        }
    }

    #[test]
    fn rewrites_bucket_revealing_elements_only_at_the_top() {
        let cases: &[(&str, &str)] = &[
            (
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bob-ap-123456789012-s3alias</Name><Prefix>Bob/</Prefix><Contents><Key>Bob/Name</Key></Contents></ListBucketResult>"#,
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>shared</Name><Prefix>Bob/</Prefix><Contents><Key>Bob/Name</Key></Contents></ListBucketResult>"#,
            ),
            (
                "<CompleteMultipartUploadResult><Location>https://bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/a%20b</Location><Bucket>real-bucket</Bucket><Key>Bob/a b</Key><ETag>&quot;x-2&quot;</ETag></CompleteMultipartUploadResult>",
                "<CompleteMultipartUploadResult><Location>http://127.0.0.1:8080/shared/Bob/a%20b</Location><Bucket>shared</Bucket><Key>Bob/a b</Key><ETag>&quot;x-2&quot;</ETag></CompleteMultipartUploadResult>",
            ),
            (
                "<InitiateMultipartUploadResult><Bucket>arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap</Bucket><Key>k</Key><UploadId>u</UploadId></InitiateMultipartUploadResult>",
                "<InitiateMultipartUploadResult><Bucket>shared</Bucket><Key>k</Key><UploadId>u</UploadId></InitiateMultipartUploadResult>",
            ),
            (
                "<Error><Code>NoSuchBucket</Code><BucketName>real &amp; bucket</BucketName><Endpoint>x.s3-accesspoint.amazonaws.com</Endpoint></Error>",
                "<Error><Code>NoSuchBucket</Code><BucketName>shared</BucketName><Endpoint>127.0.0.1:8080</Endpoint></Error>",
            ),
            ("<ListPartsResult><Bucket/><Key>k</Key></ListPartsResult>", "<ListPartsResult><Bucket/><Key>k</Key></ListPartsResult>"),
        ];
        for (input, want) in cases {
            let got = rewrite_response(input.as_bytes(), &view()).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), *want);
        }
    }

    #[test]
    fn nested_content_of_a_replaced_element_is_dropped_whole() {
        let cases = [
            ("<R><Name><b>x</b></Name></R>", "<R><Name>shared</Name></R>"),
            (
                "<R><Name>a<b>x<c/></b>y</Name><K>k</K></R>",
                "<R><Name>shared</Name><K>k</K></R>",
            ),
            ("<R><Name/><K>k</K></R>", "<R><Name/><K>k</K></R>"),
        ];
        for (input, want) in cases {
            let out = rewrite_response(input.as_bytes(), &view()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_broken_xml() {
        assert!(rewrite_response(b"<a><b></a>", &view()).is_err());
    }

    #[test]
    fn reads_delete_objects_keys_with_escapes() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>Bob/a &amp; b&lt;c&gt;</Key><VersionId>v1</VersionId></Object><Object><Key>Bob/&#252;&#x2B;</Key></Object><Object><Key><![CDATA[Bob/cdata]]></Key></Object><Quiet>true</Quiet></Delete>"#;
        let keys: Vec<String> = delete_objects_keys(body).unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["Bob/a & b<c>", "Bob/ü+", "Bob/cdata"]);
        assert!(delete_objects_keys(b"<Other><Object><Key>x</Key></Object></Other>").is_err());
        assert!(
            delete_objects_keys(b"<Delete><Object><Key>x</Key></Object>").is_err(),
            "truncated"
        );
        assert!(delete_objects_keys(b"<Delete><Object><Key>a &bogus; b</Key></Object></Delete>").is_err());
    }
}
