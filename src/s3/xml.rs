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

/// The S3 namespace, the only one a request body may declare.
pub const S3_NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// The most elements, and the deepest nesting, a request body apgate reads may have (a 1000-key
/// DeleteObjects body has about 2,000 elements, three deep).
const MAX_ELEMENTS: usize = 8_000;
const MAX_DEPTH: usize = 8;

/// An element of a request body: its name, and either text or child elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The children with this name.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Reads a request body apgate inspects, strictly: only what any XML parser reads the same way.
/// One root element (optionally declaring the S3 namespace, no other attribute, no prefixes),
/// optionally preceded by `<?xml version="1.0" encoding="UTF-8"?>`; no DTD, no processing
/// instruction, no entity but the five predefined and character references to XML characters, no
/// comment with `--` inside; text only in elements without children, none outside the root but
/// white space; no raw carriage return inside text (XML turns it into a line feed, which would
/// make the key S3 reads another than the one checked); no control character. Anything else is an
/// error, never a guess.
pub fn parse_strict(body: &[u8]) -> Result<Element, XmlError> {
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(xml_err("a byte order mark is not accepted"));
    }
    let mut reader = Reader::from_reader(body);
    let config = reader.config_mut();
    config.trim_text(false);
    config.check_comments = true;
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.expand_empty_elements = true;
    // Open elements: (element, whether it has seen text).
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    let mut first = true;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        let at_start = std::mem::replace(&mut first, false);
        match event {
            Event::Eof => break,
            Event::Decl(decl) => {
                if !at_start {
                    return Err(xml_err("the XML declaration must come first"));
                }
                let version = decl.version().map_err(xml_err)?;
                if version.as_ref() != b"1.0" {
                    return Err(xml_err("only XML 1.0 is accepted"));
                }
                if let Some(enc) = decl.encoding() {
                    let enc = enc.map_err(xml_err)?;
                    if !enc.as_ref().eq_ignore_ascii_case(b"UTF-8") {
                        return Err(xml_err("only UTF-8 is accepted"));
                    }
                }
            }
            Event::DocType(_) => return Err(xml_err("a document type declaration is not accepted")),
            Event::PI(_) => return Err(xml_err("a processing instruction is not accepted")),
            Event::Comment(_) => {}
            Event::Start(start) => {
                if root.is_some() {
                    return Err(xml_err("there is more than one root element"));
                }
                elements += 1;
                if elements > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(xml_err("the document is too large or too deep"));
                }
                let name = std::str::from_utf8(start.name().as_ref()).map_err(xml_err)?.to_owned();
                if name.contains(':') {
                    return Err(xml_err("namespace prefixes are not accepted"));
                }
                for attr in start.attributes() {
                    let attr = attr.map_err(xml_err)?;
                    let value = attr.unescape_value().map_err(xml_err)?;
                    if !(stack.is_empty() && attr.key.as_ref() == b"xmlns" && value == S3_NAMESPACE) {
                        return Err(xml_err(format!(
                            "the attribute {} is not accepted",
                            String::from_utf8_lossy(attr.key.as_ref())
                        )));
                    }
                }
                if let Some(parent) = stack.last() {
                    if !parent.text.trim_matches(XML_SPACE).is_empty() {
                        return Err(xml_err("an element holds both text and elements"));
                    }
                }
                stack.push(Element {
                    name,
                    text: String::new(),
                    children: Vec::new(),
                });
            }
            Event::End(_) => {
                let Some(mut done) = stack.pop() else {
                    return Err(xml_err("an end tag without its start"));
                };
                if !done.children.is_empty() {
                    done.text.clear();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Empty(_) => return Err(xml_err("unexpected empty element")),
            Event::Text(t) => {
                let text = t.decode().map_err(xml_err)?;
                push_text(&mut stack, &text, false)?;
            }
            Event::CData(t) => {
                let text = t.decode().map_err(xml_err)?;
                if stack.is_empty() {
                    return Err(xml_err("text outside the root element"));
                }
                push_text(&mut stack, &text, false)?;
            }
            Event::GeneralRef(r) => {
                let name: &[u8] = &r;
                let text = resolve_ref(name, &r)?;
                push_text(&mut stack, &text, true)?;
            }
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("the body ends inside an element"));
    }
    root.ok_or_else(|| xml_err("there is no root element"))
}

/// XML's white space.
const XML_SPACE: &[char] = &[' ', '\t', '\n', '\r'];

fn push_text(stack: &mut [Element], text: &str, from_reference: bool) -> Result<(), XmlError> {
    let bad = text
        .chars()
        .find(|&c| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}'));
    if let Some(c) = bad {
        return Err(xml_err(format!("the character U+{:04X} is not accepted", u32::from(c))));
    }
    match stack.last_mut() {
        None if text.trim_matches(XML_SPACE).is_empty() && !from_reference => Ok(()),
        None => Err(xml_err("text outside the root element")),
        Some(open) => {
            if !from_reference && text.contains('\r') && !text.trim_matches(XML_SPACE).is_empty() {
                return Err(xml_err("a raw carriage return in text is not accepted (write &#13;)"));
            }
            if !open.children.is_empty() && !text.trim_matches(XML_SPACE).is_empty() {
                return Err(xml_err("an element holds both text and elements"));
            }
            open.text.push_str(text);
            Ok(())
        }
    }
}

/// One object of a DeleteObjects request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteEntry {
    pub key: String,
    pub version_id: Option<String>,
}

/// The objects of a DeleteObjects request body, read strictly ([`parse_strict`]) against the
/// model's `Delete` shape: `<Delete><Object><Key/>[<VersionId/>][<ETag/>][<LastModifiedTime/>]
/// [<Size/>]</Object>...[<Quiet/>]</Delete>`, each element where the shape has it and at most
/// once, 1 to 1000 objects, every key non-empty.
pub fn delete_objects(body: &[u8]) -> Result<Vec<DeleteEntry>, XmlError> {
    let root = parse_strict(body)?;
    if root.name != "Delete" {
        return Err(xml_err("the root element must be Delete"));
    }
    let mut entries = Vec::new();
    let mut quiet = 0;
    for child in &root.children {
        match child.name.as_str() {
            "Object" => {
                let mut key = None;
                let mut version_id = None;
                let mut seen: Vec<&str> = Vec::new();
                for field in &child.children {
                    let name = field.name.as_str();
                    if !matches!(name, "Key" | "VersionId" | "ETag" | "LastModifiedTime" | "Size") {
                        return Err(xml_err(format!("Object does not take {name}")));
                    }
                    if !field.children.is_empty() {
                        return Err(xml_err(format!("{name} holds elements")));
                    }
                    if seen.contains(&name) {
                        return Err(xml_err(format!("{name} is given twice in one Object")));
                    }
                    seen.push(name);
                    match name {
                        "Key" => key = Some(field.text.clone()),
                        "VersionId" => version_id = Some(field.text.clone()),
                        _ => {}
                    }
                }
                let key = key.ok_or_else(|| xml_err("an Object without a Key"))?;
                if key.is_empty() {
                    return Err(xml_err("an empty Key"));
                }
                entries.push(DeleteEntry { key, version_id });
            }
            "Quiet" => {
                quiet += 1;
                if quiet > 1
                    || !child.children.is_empty()
                    || !matches!(child.text.trim_matches(XML_SPACE), "true" | "false")
                {
                    return Err(xml_err("Quiet must be given once, true or false"));
                }
            }
            other => return Err(xml_err(format!("Delete does not take {other}"))),
        }
    }
    if entries.is_empty() || entries.len() > 1000 {
        return Err(xml_err("DeleteObjects takes 1 to 1000 objects"));
    }
    Ok(entries)
}

/// Checks a RestoreObject request body (`RestoreRequest`): a restore of an archived copy for a
/// number of days at a retrieval tier. The SELECT form (`Type`, `SelectParameters`,
/// `OutputLocation`) is refused: it writes query results to a location of its own choosing, which
/// no route of apgate's covers.
pub fn restore_request(body: &[u8]) -> Result<(), XmlError> {
    let root = parse_strict(body)?;
    if root.name != "RestoreRequest" {
        return Err(xml_err("the root element must be RestoreRequest"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for child in &root.children {
        let name = child.name.as_str();
        match name {
            "Days" | "Tier" | "Description" if child.children.is_empty() => {}
            "GlacierJobParameters"
                if child.children.iter().all(|c| c.name == "Tier" && c.children.is_empty())
                    && child.children.len() == 1 => {}
            "Type" | "SelectParameters" | "OutputLocation" => {
                return Err(xml_err(format!(
                    "{name}: restores with SELECT write to a location of their own, which apgate does not route"
                )))
            }
            _ => return Err(xml_err(format!("RestoreRequest does not take {name} here"))),
        }
        if seen.contains(&name) {
            return Err(xml_err(format!("{name} is given twice")));
        }
        seen.push(name);
    }
    Ok(())
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

    fn keys(body: &[u8]) -> Result<Vec<String>, XmlError> {
        delete_objects(body).map(|e| e.into_iter().map(|e| e.key).collect())
    }

    #[test]
    fn reads_delete_objects_keys_with_escapes() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>Bob/a &amp; b&lt;c&gt;</Key><VersionId>v1</VersionId></Object><Object><Key>Bob/&#252;&#x2B;</Key></Object><Object><Key><![CDATA[Bob/cdata]]></Key></Object><Quiet>true</Quiet></Delete>"#;
        assert_eq!(keys(body).unwrap(), ["Bob/a & b<c>", "Bob/ü+", "Bob/cdata"]);
        let with_comment =
            b"<!-- a well-formed comment --><Delete><Object><!-- x --><Key>Bob/a</Key></Object></Delete>\r\n";
        assert_eq!(keys(with_comment).unwrap(), ["Bob/a"]);
        assert_eq!(
            keys(b"<Delete><Object><Key>Bob/&#13;x</Key></Object></Delete>").unwrap(),
            ["Bob/\rx"]
        );
    }

    /// Issue 15: whatever an XML parser might read differently from apgate is refused.
    #[test]
    fn refuses_what_parsers_may_read_differently() {
        let cases: &[(&str, &[u8])] = &[
            ("other root", b"<Other><Object><Key>x</Key></Object></Other>"),
            ("truncated", b"<Delete><Object><Key>x</Key></Object>"),
            ("unknown entity", b"<Delete><Object><Key>a &bogus; b</Key></Object></Delete>"),
            (
                "doctype",
                b"<!DOCTYPE d [<!ENTITY e \"ro/x\">]><Delete><Object><Key>&e;</Key></Object></Delete>",
            ),
            ("doctype alone", b"<!DOCTYPE Delete><Delete><Object><Key>Bob/x</Key></Object></Delete>"),
            ("processing instruction", b"<?pi x?><Delete><Object><Key>Bob/x</Key></Object></Delete>"),
            ("late declaration", b" <?xml version=\"1.0\"?><Delete><Object><Key>Bob/x</Key></Object></Delete>"),
            ("utf-16", b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><Delete><Object><Key>Bob/x</Key></Object></Delete>"),
            ("bom", b"\xEF\xBB\xBF<Delete><Object><Key>Bob/x</Key></Object></Delete>"),
            ("bad comment", b"<Delete><!-- a -- b --><Object><Key>Bob/x</Key></Object></Delete>"),
            ("unterminated comment", b"<Delete><Object><Key>Bob/x</Key></Object><!-- <Object><Key>ro/y</Key></Object></Delete>"),
            ("text outside the root", b"<Delete><Object><Key>Bob/x</Key></Object></Delete>tail"),
            ("two roots", b"<Delete><Object><Key>Bob/x</Key></Object></Delete><Delete/>"),
            ("mixed content", b"<Delete>x<Object><Key>Bob/x</Key></Object></Delete>"),
            ("prefix", b"<s3:Delete xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\"><s3:Object><s3:Key>Bob/x</s3:Key></s3:Object></s3:Delete>"),
            ("other attribute", b"<Delete a=\"1\"><Object><Key>Bob/x</Key></Object></Delete>"),
            ("other namespace", b"<Delete xmlns=\"urn:x\"><Object><Key>Bob/x</Key></Object></Delete>"),
            ("raw carriage return", b"<Delete><Object><Key>Bob\r/x</Key></Object></Delete>"),
            ("control character", b"<Delete><Object><Key>Bob/\x01</Key></Object></Delete>"),
            ("control reference", b"<Delete><Object><Key>Bob/&#1;</Key></Object></Delete>"),
            ("two keys", b"<Delete><Object><Key>Bob/x</Key><Key>ro/y</Key></Object></Delete>"),
            ("unknown element", b"<Delete><Object><Key>Bob/x</Key><Bucket>b</Bucket></Object></Delete>"),
            ("key with elements", b"<Delete><Object><Key><K>ro/y</K></Key></Object></Delete>"),
            ("empty key", b"<Delete><Object><Key></Key></Object></Delete>"),
            ("no object", b"<Delete><Quiet>true</Quiet></Delete>"),
            ("bad quiet", b"<Delete><Object><Key>Bob/x</Key></Object><Quiet>yes</Quiet></Delete>"),
        ];
        for (what, body) in cases {
            assert!(keys(body).is_err(), "{what}: {:?}", keys(body));
        }
        let many = format!("<Delete>{}</Delete>", "<Object><Key>Bob/x</Key></Object>".repeat(1001));
        assert!(keys(many.as_bytes()).is_err(), "1001 objects");
        let deep = format!("<Delete>{}{}</Delete>", "<a>".repeat(20), "</a>".repeat(20));
        assert!(keys(deep.as_bytes()).is_err(), "deep");
    }

    #[test]
    fn restore_requests_without_select() {
        assert!(restore_request(b"<RestoreRequest><Days>2</Days><GlacierJobParameters><Tier>Bulk</Tier></GlacierJobParameters></RestoreRequest>").is_ok());
        for bad in [
            &b"<RestoreRequest><Type>SELECT</Type></RestoreRequest>"[..],
            b"<RestoreRequest><OutputLocation><S3><BucketName>x</BucketName></S3></OutputLocation></RestoreRequest>",
            b"<RestoreRequest><Days>2</Days><Days>3</Days></RestoreRequest>",
            b"<Other/>",
        ] {
            assert!(restore_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
