//! What apgate does with a request, decided once, from its head: [`decide`].
//!
//! The head is parsed once (addressing, the decoded query, the S3 operation from the API model), the
//! caller authenticated, the operation's support and the caller's routes applied, and the outbound
//! request head built from what was decided: the path from the decoded key, the query parameters the
//! operation takes, the headers it takes, a rewritten copy source. The proxy signs and sends exactly
//! that head, `apgate explain` prints it, and the `decide` fuzz target checks it; nothing else
//! decides. Bodies apgate must read (DeleteObjects' keys, RestoreObject's request) are named in the
//! [`BodyPlan`] and checked by [`check_inspected`], as the decoded content that is then forwarded.
//!
//! **Architecture invariant:** pure: no IO, no clock but `now`, nothing but what it is given.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::chunked;
use crate::config::AccessChange;
use crate::error::{GatewayError, S3ErrorCode};
use crate::identity::{self, sigv2, CallerIdentity, ListenerIdentity, RequestHead, SigV4Verifier};
use crate::routing::{Denial, Route, Router, Scope};
use crate::s3::addressing::{parse_target, AddressingError};
use crate::s3::copy_source::CopySource;
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::headers::{
    X_AMZ_ACL, X_AMZ_BYPASS_GOVERNANCE_RETENTION, X_AMZ_COPY_SOURCE, X_AMZ_DECODED_CONTENT_LENGTH,
    X_AMZ_EXPECTED_BUCKET_OWNER, X_AMZ_SOURCE_EXPECTED_BUCKET_OWNER, X_AMZ_SSE_KMS_KEY_ID, X_AMZ_TRAILER,
};
use crate::s3::operation::{self, Payload, Spec};
use crate::s3::request::{self, is_auth_param, RequestError, FRAMING_HEADERS};
use crate::s3::{BucketName, Operation, OperationClass, PayloadHash, S3Target, Support};

/// The largest object one PUT may carry (S3's limit; larger uploads are multipart).
pub const MAX_PUT_BYTES: u64 = 5 << 30;
/// The largest body apgate reads to check it (a 1000-key DeleteObjects body is about 1 MiB).
pub const MAX_INSPECTED_BODY: u64 = 2 << 20;

/// A request head as received.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub remote: IpAddr,
    /// The subject of the client's verified certificate (TLS listeners that ask for one).
    pub client_certificate: Option<&'a str>,
}

/// Everything a decision reads besides the head.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'p> {
    /// Virtual-host base domains.
    pub domains: &'p [String],
    pub verifier: &'p SigV4Verifier,
    pub router: &'p Router,
    pub listener: &'p ListenerIdentity,
}

/// What was decided, and what was learned on the way (for the log line and metrics).
#[derive(Debug)]
pub struct Decision<'p> {
    /// The parsed target, once it parsed.
    pub target: Option<S3Target>,
    /// The operation, once one was selected.
    pub operation: Option<Operation>,
    /// The caller, once authenticated.
    pub caller: Option<CallerIdentity>,
    pub outcome: Result<Outcome<'p>, GatewayError>,
}

/// What apgate does with an accepted request. (One per request, on the stack: the size of a
/// `Forward` costs less than boxing it would.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome<'p> {
    /// ListBuckets, answered from the caller's routes.
    ListBuckets(&'p [BucketName]),
    /// GetBucketLocation, answered with the region of the route's access point.
    BucketLocation(Arc<Route>),
    /// Sent upstream through the route's access point.
    Forward(Forward),
}

/// A request to send upstream.
#[derive(Debug)]
pub struct Forward {
    pub route: Arc<Route>,
    /// For copies: the route that gives the caller the source.
    pub copy_source: Option<Arc<Route>>,
    pub head: OutboundHead,
    pub body: BodyPlan,
    /// What the request asks for that needs a route's opt-in, read from its head once: checked
    /// against `route`, or, for an operation whose keys are in its body (DeleteObjects), against
    /// the route of each key by [`inspect_body`].
    pub changes: AccessChanges,
}

impl Forward {
    /// The outbound head, moved out for forwarding (one head, not a copy of it); what is left is
    /// an empty head that nothing reads.
    pub fn take_head(&mut self) -> OutboundHead {
        std::mem::replace(
            &mut self.head,
            OutboundHead {
                method: Method::GET,
                path_and_query: String::new(),
                headers: HeaderMap::new(),
                payload: PayloadHash::Unsigned,
            },
        )
    }
}

/// The outbound request head, before signing (which adds Host, `x-amz-date`,
/// `x-amz-content-sha256`, the token and `Authorization`).
#[derive(Debug, Clone)]
pub struct OutboundHead {
    pub method: Method,
    /// `/key?params`: the decoded key and parameters, S3-`UriEncode`d once.
    pub path_and_query: String,
    /// The headers the operation takes that the request carried, the body's framing, and the
    /// copy source rewritten to the source's access point.
    pub headers: HeaderMap,
    /// What `x-amz-content-sha256` says of the body sent.
    pub payload: PayloadHash,
}

/// How the request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body.
    Empty,
    /// As received: `Content-Length` bytes.
    Stream,
    /// Unsigned aws-chunked with a checksum trailer (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`):
    /// forwarded as received, each byte once its framing was read and accepted, the trailer held
    /// until checked: only the checksum `x-amz-trailer` announced (`checksum`), nothing else
    /// (`chunked::unsigned`).
    UnsignedChunks {
        checksum: Option<chunked::TrailerChecksum>,
        decoded_length: u64,
    },
    /// Signed aws-chunked: each chunk verified against the caller's key, the data sent again in
    /// apgate's own signed chunks (`crate::chunked`), `Content-Length` [`chunked::outbound_length`].
    SignedChunks {
        ending: chunked::Ending,
        decoded_length: u64,
    },
    /// Read whole (at most [`MAX_INSPECTED_BODY`]), decoded, checked by [`check_inspected`], and
    /// forwarded as the checked content.
    Inspect { framing: Framing, length: u64 },
}

/// How an inspected body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `length` bytes as they are.
    Plain,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`; `length` is the decoded length.
    UnsignedChunks { trailer: bool },
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`; `length` is the decoded length.
    SignedChunks { trailer: bool },
}

impl Decision<'_> {
    /// The decoded key, for the log line.
    pub fn key(&self) -> Option<&str> {
        self.target.as_ref().and_then(|t| t.key.as_deref())
    }

    /// The client-facing bucket.
    pub fn bucket(&self) -> Option<&BucketName> {
        self.target.as_ref().and_then(|t| t.bucket.as_ref())
    }

    /// The route whose access point the request goes through (or is answered from).
    pub fn route(&self) -> Option<&Route> {
        match &self.outcome {
            Ok(Outcome::Forward(f)) => Some(&f.route),
            Ok(Outcome::BucketLocation(r)) => Some(r),
            _ => None,
        }
    }
}

/// Decides what to do with a request head.
pub fn decide<'p>(head: &Head<'_>, policy: &Policy<'p>, now: SystemTime) -> Decision<'p> {
    let mut decision = Decision {
        target: None,
        operation: None,
        caller: None,
        outcome: Ok(Outcome::ListBuckets(&[])),
    };
    decision.outcome = decide_into(&mut decision, head, policy, now);
    decision
}

fn decide_into<'p>(
    d: &mut Decision<'p>,
    head: &Head<'_>,
    policy: &Policy<'p>,
    now: SystemTime,
) -> Result<Outcome<'p>, GatewayError> {
    let headers = head.headers;
    // The head as HTTP: an origin-form target, one Host, one framing.
    if head.uri.scheme().is_some() || head.uri.authority().is_some() {
        return Err(invalid_request(
            "The request target must be an absolute path, not an absolute URI.",
        ));
    }
    let host = single_host(headers)?;
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        // Both framings at once is how requests are smuggled past proxies (hyper already frames
        // such a request by Transfer-Encoding; this refusal is defence in depth).
        return Err(invalid_request(
            "A request may not carry both Content-Length and Transfer-Encoding.",
        ));
    }

    // Parse once: everything below reads this parse.
    let target =
        parse_target(Some(host), head.uri.path(), head.uri.query(), policy.domains).map_err(addressing_error)?;
    let selected = request::select(head.method, &target, headers);
    d.operation = selected.as_ref().ok().map(|s| s.operation);
    let classified = selected.and_then(|spec| request::check(spec, &target, headers).map(|()| spec.operation));
    let target = &*d.target.insert(target);

    // Authenticate, from the head alone.
    let caller = identity::authenticate(
        policy.listener,
        policy.verifier,
        &RequestHead {
            remote: head.remote,
            client_certificate: head.client_certificate,
            method: head.method,
            target,
            headers,
        },
        now,
    )?;
    let caller = &*d.caller.insert(caller);

    // The operation, and what the signature covers of it.
    let op = classified.map_err(request_error)?;
    let spec = op.spec();
    check_auth_params(caller, target)?;
    if caller.method == crate::config::IdentityMethod::SigV2 {
        sigv2::covers(spec).map_err(|param| {
            GatewayError::client(
                S3ErrorCode::InvalidRequest,
                format!(
                    "A SigV2 signature does not cover the {param:?} parameter that selects {}; sign the request with AWS4-HMAC-SHA256.",
                    op.as_str()
                ),
            )
        })?;
    }

    let class = match op.support() {
        Support::Synthesized(None) => return Ok(Outcome::ListBuckets(policy.router.buckets_of(&caller.name))),
        Support::Withheld => {
            return Err(GatewayError::client(
                S3ErrorCode::NotImplemented,
                format!(
                    "{} is not offered through apgate: its answer shows the bucket's configuration, which belongs to the upstream side.",
                    op.as_str()
                ),
            ))
        }
        Support::NotThroughAccessPoints => {
            return Err(GatewayError::client(
                S3ErrorCode::NotImplemented,
                format!(
                    "{} is not supported through access points (they take object operations only).",
                    op.as_str()
                ),
            ))
        }
        Support::Forwarded(class) | Support::Synthesized(Some(class)) => class,
    };
    refuse_owner_checks(headers)?;
    let body = body_plan(op, spec, head.method, headers, &caller.payload)?;

    // Route.
    let bucket = target
        .bucket
        .as_ref()
        .ok_or_else(|| GatewayError::internal("a routed operation without a bucket"))?;
    let scope = match (&target.key, op.list_prefix_param()) {
        (Some(key), _) => Scope::Key(key),
        (None, Some(param)) => Scope::ListPrefix(target.param(param).unwrap_or("")),
        (None, None) => Scope::Bucket,
    };
    let route = policy
        .router
        .route(&caller.name, bucket, scope, class)
        .map_err(|denial| access_denied(&denial))?;
    if op == Operation::GetBucketLocation {
        return Ok(Outcome::BucketLocation(route));
    }
    let changes = AccessChanges::requested(op, headers);
    // DeleteObjects names its keys in its body: the route found for the bucket is none of theirs
    // (any route of the bucket that may delete), so the opt-ins are judged per key, by
    // `inspect_body`, which every DeleteObjects passes through before it is sent (`inspected`).
    if !keys_in_body(op) {
        changes.check(op, &route)?;
    }
    let (copy_source, copy_header) = match headers.get(&X_AMZ_COPY_SOURCE) {
        Some(raw) => {
            let (r, value) = copy_source(policy.router, caller, raw, &route)?;
            (Some(r), Some(value))
        }
        None => (None, None),
    };
    let outbound = outbound_head(head.method, target, spec, headers, &caller.payload, body, copy_header)?;
    Ok(Outcome::Forward(Forward {
        route,
        copy_source,
        head: outbound,
        body,
        changes,
    }))
}

/// Exactly one Host header, as HTTP/1.1 requires (RFC 9112 §3.2).
fn single_host(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .map_err(|_| invalid_request("The Host header is not ASCII.")),
        (None, _) => Err(invalid_request("The request has no Host header.")),
        (Some(_), Some(_)) => Err(invalid_request("The request has more than one Host header.")),
    }
}

/// Authentication parameters of a scheme the caller did not authenticate with are not silently
/// carried along (a SigV2 `Signature` beside SigV4 header authentication, say).
fn check_auth_params(caller: &CallerIdentity, target: &S3Target) -> Result<(), GatewayError> {
    let used: &[&str] = if sigv2::is_presigned_v2(target) && caller.method == crate::config::IdentityMethod::SigV2 {
        sigv2::PRESIGN_V2_PARAMS
    } else if crate::identity::sigv4::is_presigned(target) && caller.method == crate::config::IdentityMethod::SigV4 {
        crate::identity::sigv4::PRESIGN_PARAMS
    } else {
        &[]
    };
    match target
        .query
        .iter()
        .find(|p| is_auth_param(&p.key) && !used.contains(&p.key.as_str()))
    {
        Some(p) => Err(GatewayError::client(
            S3ErrorCode::InvalidArgument,
            format!(
                "The query parameter {:?} belongs to another authentication scheme than this request's; only one auth mechanism is allowed.",
                p.key
            ),
        )),
        None => Ok(()),
    }
}

/// Checks that would name the upstream account: apgate hides it, so it cannot check it either.
fn refuse_owner_checks(headers: &HeaderMap) -> Result<(), GatewayError> {
    for name in [&X_AMZ_EXPECTED_BUCKET_OWNER, &X_AMZ_SOURCE_EXPECTED_BUCKET_OWNER] {
        if headers.contains_key(name) {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidArgument,
                format!("{name} is not supported through apgate: the account behind it is not the client's to name."),
            ));
        }
    }
    Ok(())
}

/// How the body goes upstream, from the head: framing rules and limits first.
fn body_plan(
    op: Operation,
    spec: &Spec,
    method: &Method,
    headers: &HeaderMap,
    payload: &PayloadHash,
) -> Result<BodyPlan, GatewayError> {
    if *payload == PayloadHash::StreamingSigV4a {
        return Err(GatewayError::client(
            S3ErrorCode::NotImplemented,
            "SigV4a streaming payloads (STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD) are not supported; use SigV4.",
        ));
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let content_length =
        match (lengths.next(), lengths.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                GatewayError::client(S3ErrorCode::InvalidArgument, "Content-Length is not a number.")
            })?),
            (Some(_), Some(_)) => {
                return Err(GatewayError::client(
                    S3ErrorCode::InvalidArgument,
                    "Content-Length is given more than once.",
                ))
            }
        };
    let aws_chunked = matches!(
        payload,
        PayloadHash::StreamingUnsignedTrailer | PayloadHash::StreamingSigned { .. }
    );
    // apgate frames a body by x-amz-content-sha256; a plain body whose Content-Encoding also says
    // aws-chunked would be one apgate reads as plain and an upstream going by that header reads
    // as framed (trailer lines included, which S3 takes as headers). No client sends it; any
    // spelling that holds the word (quoted, with parameters) is refused, not only the token.
    if !aws_chunked && headers.get_all(header::CONTENT_ENCODING).iter().any(says_aws_chunked) {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidArgument,
            "Content-Encoding aws-chunked belongs to aws-chunked bodies (x-amz-content-sha256 STREAMING-...).",
        ));
    }
    if chunked && !aws_chunked {
        return Err(GatewayError::client(
            S3ErrorCode::MissingContentLength,
            "You must provide the Content-Length HTTP header (or an aws-chunked body with x-amz-decoded-content-length).",
        ));
    }
    let has_body = chunked || content_length.is_some_and(|n| n > 0);
    if !spec.has_body() {
        if has_body || aws_chunked {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidRequest,
                format!("{} takes no request body.", op.as_str()),
            ));
        }
        return Ok(BodyPlan::Empty);
    }
    if *method == Method::PUT && content_length.is_none() && !chunked {
        return Err(GatewayError::client(
            S3ErrorCode::MissingContentLength,
            "You must provide the Content-Length HTTP header.",
        ));
    }
    let decoded_length = if aws_chunked {
        Some(
            headers
                .get(&X_AMZ_DECODED_CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    GatewayError::client(
                        S3ErrorCode::MissingContentLength,
                        "aws-chunked bodies need a numeric x-amz-decoded-content-length.",
                    )
                })?,
        )
    } else {
        if headers.contains_key(&X_AMZ_DECODED_CONTENT_LENGTH) {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidArgument,
                "x-amz-decoded-content-length belongs to aws-chunked bodies only.",
            ));
        }
        None
    };
    let size = decoded_length.or(content_length).unwrap_or(0);
    if matches!(op, Operation::PutObject | Operation::UploadPart) && size > MAX_PUT_BYTES {
        return Err(GatewayError::client(
            S3ErrorCode::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed size (5 GiB for one PUT; upload larger objects in parts).",
        )
        .with_detail("MaxSizeAllowed", MAX_PUT_BYTES.to_string()));
    }
    let trailer = matches!(
        payload,
        PayloadHash::StreamingUnsignedTrailer | PayloadHash::StreamingSigned { trailer: true }
    );
    // A trailer carries one checksum of the body, announced by x-amz-trailer; S3 acts on nothing
    // else in it.
    match (headers.get(&X_AMZ_TRAILER), trailer) {
        (None, _) => {}
        (Some(v), true) if v.to_str().is_ok_and(operation::is_checksum_header) => {}
        (Some(_), _) => {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidArgument,
                "x-amz-trailer must name one x-amz-checksum-* header, on a body with a trailer.",
            ))
        }
    }
    if matches!(spec.payload, Payload::Xml(_)) && inspected(op) {
        if size > MAX_INSPECTED_BODY || content_length.is_some_and(|n| n > 2 * MAX_INSPECTED_BODY) {
            return Err(GatewayError::client(
                S3ErrorCode::MalformedXML,
                format!("The {} request body is too large.", op.as_str()),
            ));
        }
        let framing = match payload {
            PayloadHash::StreamingUnsignedTrailer => Framing::UnsignedChunks { trailer },
            PayloadHash::StreamingSigned { .. } => Framing::SignedChunks { trailer },
            _ => Framing::Plain,
        };
        return Ok(BodyPlan::Inspect { framing, length: size });
    }
    Ok(match payload {
        PayloadHash::StreamingSigned { trailer } => BodyPlan::SignedChunks {
            ending: if *trailer {
                chunked::Ending::Trailer(announced_checksum(headers))
            } else {
                chunked::Ending::Plain
            },
            decoded_length: size,
        },
        _ if !has_body => BodyPlan::Empty,
        // Forwarded as framed, so its framing and trailer are read first: S3 takes trailer lines
        // as headers of the request, which nothing above has seen.
        PayloadHash::StreamingUnsignedTrailer => BodyPlan::UnsignedChunks {
            checksum: announced_checksum(headers),
            decoded_length: size,
        },
        _ => BodyPlan::Stream,
    })
}

/// The checksum `x-amz-trailer` announces, if given (one checksum header: `body_plan` checked it).
fn announced_checksum(headers: &HeaderMap) -> Option<chunked::TrailerChecksum> {
    let name = headers.get(&X_AMZ_TRAILER)?.to_str().ok()?;
    Some(chunked::TrailerChecksum {
        header: operation::checksum_header(name)?,
        value_len: operation::checksum_value_len(name)?,
    })
}

/// Whether a Content-Encoding value names aws-chunked anywhere in it, in any case.
fn says_aws_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .windows(b"aws-chunked".len())
        .any(|w| w.eq_ignore_ascii_case(b"aws-chunked"))
}

/// Operations whose body apgate reads before it forwards it.
fn inspected(op: Operation) -> bool {
    keys_in_body(op) || op == Operation::RestoreObject
}

/// Operations whose keys are named in their body, not their target: routed by each key once the
/// body is read (`inspect_body`).
fn keys_in_body(op: Operation) -> bool {
    op == Operation::DeleteObjects
}

/// The refusals of [`AccessChanges::check`]: the route was found, and lacks an opt-in.
const OPT_IN_REFUSALS: [&str; 3] = [NEEDS_ALLOW, ACL_NOT_ENABLED, KMS_KEY_NOT_LISTED];
const NEEDS_ALLOW: &str = "need a route that allows";
const ACL_NOT_ENABLED: &str = "PutObjectAcl is not enabled on this route: a route must allow \"acl\".";
const KMS_KEY_NOT_LISTED: &str =
    "Access Denied: the KMS key named in x-amz-server-side-encryption-aws-kms-key-id is not one the route lists in kms_key_ids.";

/// Whether a refusal is one of a found route lacking an opt-in (`allow`, `kms_key_ids`), for
/// `apgate explain` to name the route.
pub fn is_route_opt_in_refusal(e: &GatewayError) -> bool {
    OPT_IN_REFUSALS.iter().any(|m| e.message().contains(m))
}

/// What a request asks for that widens access (ACL or grant changes, bypassing governance
/// retention, object lock settings) or names a KMS key to encrypt with: each needs the opt-in of
/// the route it goes through (`allow`, `kms_key_ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessChanges {
    acl: bool,
    bypass: bool,
    lock: bool,
    kms_key: Option<HeaderValue>,
}

impl AccessChanges {
    /// Read from the request's operation and head (the headers it forwards).
    fn requested(op: Operation, headers: &HeaderMap) -> Self {
        Self {
            acl: op == Operation::PutObjectAcl
                || headers
                    .get(&X_AMZ_ACL)
                    .is_some_and(|v| !matches!(v.as_bytes(), b"private" | b"bucket-owner-full-control"))
                || headers.keys().any(|k| k.as_str().starts_with("x-amz-grant-")),
            bypass: headers
                .get(&X_AMZ_BYPASS_GOVERNANCE_RETENTION)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"false")),
            lock: matches!(op, Operation::PutObjectRetention | Operation::PutObjectLegalHold)
                || headers.keys().any(|k| k.as_str().starts_with("x-amz-object-lock-")),
            // The header is one the operations take, so it is not repeated (request::check).
            kms_key: headers.get(&X_AMZ_SSE_KMS_KEY_ID).cloned(),
        }
    }

    /// Whether `route` allows them all.
    fn check(&self, op: Operation, route: &Route) -> Result<(), GatewayError> {
        // S3 encrypts with the named key as apgate's role, which may use keys (another team's,
        // another account's) the caller may not. Compared as written: a key listed in another
        // form (its ARN for its id, an alias for the key) is refused, never taken for a different
        // one.
        if let Some(key) = &self.kms_key {
            if !route.kms_key_ids.iter().any(|k| k.as_bytes() == key.as_bytes()) {
                return Err(GatewayError::client(S3ErrorCode::AccessDenied, KMS_KEY_NOT_LISTED));
            }
        }
        for (needed, change, what) in [
            (self.acl, AccessChange::Acl, "ACL or grant changes"),
            (
                self.bypass,
                AccessChange::BypassGovernanceRetention,
                "bypassing governance retention",
            ),
            (
                self.lock,
                AccessChange::ObjectLock,
                "object lock settings (retention, legal hold)",
            ),
        ] {
            if needed && !route.allow.contains(&change) && op == Operation::PutObjectAcl {
                // The operation itself is not offered on this route (clients such as s3cmd's copy
                // carry on without setting an ACL when told so; the object keeps the default).
                return Err(GatewayError::client(S3ErrorCode::NotImplemented, ACL_NOT_ENABLED));
            }
            if needed && !route.allow.contains(&change) {
                return Err(GatewayError::client(
                    S3ErrorCode::AccessDenied,
                    // Not which rule (`routes[N]`): the caller learns nothing of the
                    // configuration's layout; `apgate explain` shows the rule to whoever holds the
                    // file.
                    format!("Access Denied: {what} {NEEDS_ALLOW} \"{}\".", change.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// The copy source: readable by the caller through a route, in the destination's region; its
/// header rewritten to the source's access point object ARN.
fn copy_source(
    router: &Router,
    caller: &CallerIdentity,
    raw: &HeaderValue,
    dest: &Route,
) -> Result<(Arc<Route>, HeaderValue), GatewayError> {
    let raw = raw
        .to_str()
        .map_err(|_| GatewayError::client(S3ErrorCode::InvalidArgument, "x-amz-copy-source is not valid ASCII."))?;
    let source = CopySource::parse(raw).map_err(|e| {
        GatewayError::client(
            S3ErrorCode::InvalidArgument,
            format!("Copy Source must mention the source bucket and key: {e}."),
        )
    })?;
    let route = router
        .route(
            &caller.name,
            &source.bucket,
            Scope::Key(&source.key),
            OperationClass::Read,
        )
        .map_err(|denial| {
            GatewayError::client(S3ErrorCode::AccessDenied, format!("{} (copy source)", denial.message()))
        })?;
    if route.access_point.region() != dest.access_point.region() {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidRequest,
            "Copies through access points must stay within one region.",
        ));
    }
    let value = HeaderValue::from_str(&source.to_access_point_header(&route.access_point))
        .map_err(|_| GatewayError::internal("the rewritten copy source is not a valid header"))?;
    Ok((route, value))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those of authentication, which never go upstream as
/// received.
fn consumed(name: &str) -> bool {
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
            | "date"
            | "x-amz-date"
            | "x-amz-security-token"
            | "x-amz-content-sha256"
            | "x-amz-user-agent"
            | "content-length"
    )
}

/// The outbound head, built from the decision: nothing of the request that was not decided on.
fn outbound_head(
    method: &Method,
    target: &S3Target,
    spec: &Spec,
    headers: &HeaderMap,
    payload: &PayloadHash,
    body: BodyPlan,
    copy_source: Option<HeaderValue>,
) -> Result<OutboundHead, GatewayError> {
    let mut pq = String::with_capacity(target.raw_path.len() + target.raw_query.len() + 8);
    pq.push('/');
    if let Some(key) = &target.key {
        // A key's own leading `/` goes out as `%2F` (S3 reads the same key): a request target
        // starting `//` is read as a network path by URL parsers on the way (moto's server), and
        // no S3 reading of it differs.
        let rest = match key.strip_prefix('/') {
            Some(rest) => {
                pq.push_str("%2F");
                rest
            }
            None => key,
        };
        uri_encode_into(&mut pq, rest.as_bytes(), Slash::Keep);
    }
    let mut first = true;
    for p in target.query.iter().filter(|p| spec.takes_param(&p.key)) {
        pq.push(if std::mem::take(&mut first) { '?' } else { '&' });
        uri_encode_into(&mut pq, p.key.as_bytes(), Slash::Encode);
        if p.has_value {
            pq.push('=');
            uri_encode_into(&mut pq, p.value.as_bytes(), Slash::Encode);
        }
    }

    // A header the client marks hop-by-hop is one hop-by-hop handling would remove; if apgate
    // would forward it (or the client signed it), the request is refused rather than changed.
    let connection_listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for token in &connection_listed {
        let hop = matches!(
            token.as_str(),
            "close" | "keep-alive" | "te" | "trailer" | "upgrade" | "proxy-connection"
        );
        if !hop && headers.contains_key(token.as_str()) {
            return Err(invalid_request(&format!(
                "The Connection header names {token}, an end-to-end header of this request: apgate does not drop headers a client sends."
            )));
        }
    }

    let aws_chunked_forwarded = matches!(
        body,
        BodyPlan::Stream | BodyPlan::UnsignedChunks { .. } | BodyPlan::SignedChunks { .. }
    ) && matches!(
        payload,
        PayloadHash::StreamingUnsignedTrailer | PayloadHash::StreamingSigned { .. }
    );
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        let n = name.as_str();
        if consumed(n) || *name == X_AMZ_COPY_SOURCE {
            continue;
        }
        if *name == header::CONTENT_TYPE && value.is_empty() {
            // An empty Content-Type is no media type (RFC 9110 §8.3): S3 applies its default
            // either way, and WSGI servers (moto) cannot tell it from a missing one, so a signature
            // over it would not verify there.
            continue;
        }
        let forwarded = if n == "content-encoding" {
            // aws-chunked framing goes with a body forwarded as framed; other encodings are the
            // object's (a member of PutObject's).
            aws_chunked_forwarded || (spec.takes_header(n) && !matches!(body, BodyPlan::Inspect { .. }))
        } else if FRAMING_HEADERS.contains(&n) {
            aws_chunked_forwarded
        } else if n == "x-amz-sdk-checksum-algorithm" || operation::is_checksum_header(n) || n == "content-md5" {
            // A body's checksums (classification refused them on operations without a checksum;
            // Content-MD5 only ever guards the body, which legacy clients send with DeleteObjects).
            spec.has_body()
        } else {
            spec.takes_header(n)
        };
        if forwarded {
            out.append(name.clone(), canonical_value(value));
        }
    }
    if let Some(value) = copy_source {
        out.insert(X_AMZ_COPY_SOURCE.clone(), value);
    }
    if let BodyPlan::SignedChunks { ending, decoded_length } = body {
        // apgate's own chunks: a length of their own, whatever framing the client's had.
        out.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(chunked::outbound_length(decoded_length, ending)),
        );
    } else if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        match body {
            // The bytes go as they came.
            BodyPlan::Stream | BodyPlan::UnsignedChunks { .. } => {
                out.insert(header::CONTENT_LENGTH, len.clone());
            }
            // An empty body said so (a PUT of nothing, a copy).
            BodyPlan::Empty => {
                out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            // Set to the checked content's length once it is read; SignedChunks above.
            BodyPlan::Inspect { .. } | BodyPlan::SignedChunks { .. } => {}
        }
    }
    Ok(OutboundHead {
        method: method.clone(),
        path_and_query: pq,
        headers: out,
        payload: payload.clone(),
    })
}

/// A forwarded header value that holds a tab, with its runs of spaces and tabs made one space and
/// its ends trimmed. SigV4 canonicalizations disagree on tabs only (botocore collapses every run of
/// white space, aws-sigv4 runs of spaces): without tabs they read a value alike, with them they
/// would not, and a client could make the upstream refuse apgate's own signature (issue 16).
/// Values without a tab go as they came (a double space in metadata stays).
fn canonical_value(value: &HeaderValue) -> HeaderValue {
    let bytes = value.as_bytes();
    if !bytes.contains(&b'\t') {
        return value.clone();
    }
    let mut out = Vec::with_capacity(bytes.len());
    for word in bytes.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| value.clone())
}

/// The content of an inspected body, decoded and checked.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The payload, as forwarded.
    pub content: bytes::Bytes,
    /// The checksum the trailer carried, now a header of the forwarded request.
    pub trailer_checksum: Option<(HeaderName, HeaderValue)>,
    /// DeleteObjects: the keys it deletes.
    pub keys: Vec<String>,
    /// DeleteObjects: the route of its first key, whose access point every key shares and the
    /// request goes through (the forward's route was found for the bucket, not for these keys).
    pub route: Option<Arc<Route>>,
}

/// Decodes an inspected body from its wire bytes (verifying chunk signatures) and checks the
/// content against the operation and the caller's routes (DeleteObjects: every key deletable, with
/// the opt-ins the request asks for, by routes of one access point, the one it is then sent
/// through: [`Inspected::route`]; RestoreObject: no SELECT restore). `announced` is the request's
/// `x-amz-trailer`. What passes is what is forwarded.
pub fn inspect_body(
    forward: &Forward,
    operation: Operation,
    router: &Router,
    caller: &CallerIdentity,
    announced: Option<&str>,
    wire: &[u8],
) -> Result<Inspected, GatewayError> {
    let BodyPlan::Inspect { framing, length } = forward.body else {
        return Err(GatewayError::internal("a body inspected without an inspection plan"));
    };
    let (content, trailer_checksum) = match framing {
        Framing::Plain => {
            if wire.len() as u64 != length {
                return Err(GatewayError::client(
                    S3ErrorCode::IncompleteBody,
                    "You did not provide the number of bytes specified by the Content-Length HTTP header.",
                ));
            }
            (bytes::Bytes::copy_from_slice(wire), None)
        }
        Framing::UnsignedChunks { trailer } | Framing::SignedChunks { trailer } => {
            use crate::chunked::decode::{decode_all, Framing as Chunks};
            let chunks = match framing {
                Framing::SignedChunks { .. } => Chunks::Signed(caller.chunks.as_ref()),
                _ => Chunks::Unsigned,
            };
            let decoded = decode_all(wire, chunks, trailer, length).map_err(|e| e.to_gateway_error())?;
            let mut checksum = None;
            for (name, value) in decoded.trailers {
                // The trailer carries the checksum x-amz-trailer announced; it is the decoded
                // content's checksum, so it holds as a header of the content forwarded.
                let header = HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .filter(|n| announced == Some(n.as_str()) && checksum.is_none());
                let value = HeaderValue::from_str(&value).ok();
                let (Some(header), Some(value)) = (header, value) else {
                    return Err(GatewayError::client(
                        S3ErrorCode::InvalidRequest,
                        "The trailer may only carry the one checksum x-amz-trailer announced.",
                    ));
                };
                checksum = Some((header, value));
            }
            (decoded.payload, checksum)
        }
    };
    let malformed = |e: crate::s3::xml::XmlError| {
        GatewayError::client(
            S3ErrorCode::MalformedXML,
            format!("The XML you provided was not well-formed or did not validate against our published schema: {e}."),
        )
    };
    let mut keys = Vec::new();
    let mut keys_route: Option<Arc<Route>> = None;
    match operation {
        Operation::DeleteObjects => {
            let entries = crate::s3::xml::delete_objects(&content).map_err(malformed)?;
            keys = entries.into_iter().map(|e| e.key).collect();
            keys_route = Some(
                route_of_keys(forward, operation, router, caller, &keys)
                    .map_err(KeyRefusal::into_error)?
                    .ok_or_else(|| GatewayError::internal("a DeleteObjects body without a key passed its reader"))?,
            );
        }
        Operation::RestoreObject => crate::s3::xml::restore_request(&content).map_err(malformed)?,
        other => return Err(GatewayError::internal(format!("{} has no body check", other.as_str()))),
    }
    Ok(Inspected {
        content,
        trailer_checksum,
        keys,
        route: keys_route,
    })
}

/// The one route through which every key of a DeleteObjects goes (`None` for no key): each key is
/// routed on its own for a delete, must be allowed what the request asks for (a governance bypass
/// asked for one request is asked for every key in it), and all must share one access point.
/// `apgate explain` reads the refusal to name the key and rule the client's answer does not.
pub(crate) fn route_of_keys(
    forward: &Forward,
    operation: Operation,
    router: &Router,
    caller: &CallerIdentity,
    keys: &[String],
) -> Result<Option<Arc<Route>>, KeyRefusal> {
    let mut first: Option<Arc<Route>> = None;
    for key in keys {
        let route = router
            .route(
                &caller.name,
                &forward.route.bucket,
                Scope::Key(key),
                OperationClass::Delete,
            )
            .map_err(|denial| KeyRefusal::NoRoute {
                key: key.clone(),
                denial,
            })?;
        if let Err(error) = forward.changes.check(operation, &route) {
            return Err(KeyRefusal::OptIn {
                key: key.clone(),
                route,
                error,
            });
        }
        match &first {
            Some(f) if f.access_point.arn() != route.access_point.arn() => {
                return Err(KeyRefusal::OtherAccessPoint {
                    key: key.clone(),
                    route,
                    first: Arc::clone(f),
                })
            }
            Some(_) => {}
            None => first = Some(route),
        }
    }
    Ok(first)
}

/// Why [`route_of_keys`] refused a key.
#[derive(Debug)]
pub(crate) enum KeyRefusal {
    /// No route of the caller may delete it.
    NoRoute { key: String, denial: Denial },
    /// Its route lacks an opt-in the request asks for.
    OptIn {
        key: String,
        route: Arc<Route>,
        error: GatewayError,
    },
    /// Its route goes through another access point than the first key's.
    OtherAccessPoint {
        key: String,
        route: Arc<Route>,
        first: Arc<Route>,
    },
}

impl KeyRefusal {
    /// The client's answer: it names neither the key nor the rule.
    fn into_error(self) -> GatewayError {
        match self {
            Self::NoRoute { denial, .. } => access_denied(&denial),
            Self::OptIn { error, .. } => error,
            Self::OtherAccessPoint { .. } => GatewayError::client(
                S3ErrorCode::AccessDenied,
                "Access Denied: the keys of one DeleteObjects request must all be reachable through the same access point.",
            ),
        }
    }

    /// For whoever holds the configuration (`apgate explain`).
    pub(crate) fn explain(&self) -> String {
        match self {
            Self::NoRoute { key, denial } => format!("key {key:?}: {}", denial.explain()),
            Self::OptIn { key, route, .. } => format!(
                "key {key:?}: its route routes[{}] (keys under {:?}) does not let this through",
                route.index, route.prefix
            ),
            Self::OtherAccessPoint { key, route, first } => format!(
                "key {key:?}: its route routes[{}] goes through access point {}, the request's first key's routes[{}] through {}",
                route.index,
                route.access_point.arn(),
                first.index,
                first.access_point.arn()
            ),
        }
    }
}

fn access_denied(denial: &Denial) -> GatewayError {
    GatewayError::client(S3ErrorCode::AccessDenied, denial.message())
}

fn invalid_request(message: &str) -> GatewayError {
    GatewayError::client(S3ErrorCode::InvalidRequest, message)
}

fn addressing_error(e: AddressingError) -> GatewayError {
    match e {
        AddressingError::InvalidBucketName(_) => GatewayError::client(S3ErrorCode::InvalidBucketName, e.to_string()),
        AddressingError::InvalidPath | AddressingError::InvalidQuery => GatewayError::client(
            S3ErrorCode::InvalidURI,
            format!("Couldn't parse the specified URI: {e}."),
        ),
        AddressingError::DuplicateParameter(_) => GatewayError::client(
            S3ErrorCode::InvalidArgument,
            format!("{}.", capitalized(&e.to_string())),
        ),
        AddressingError::NotOriginForm => GatewayError::client(S3ErrorCode::InvalidRequest, e.to_string()),
    }
}

fn request_error(e: RequestError) -> GatewayError {
    let code = match &e {
        RequestError::NoOperation => S3ErrorCode::MethodNotAllowed,
        RequestError::TwoOperations { .. } | RequestError::UnknownParameter { marker_of: Some(_), .. } => {
            S3ErrorCode::InvalidRequest
        }
        _ => S3ErrorCode::InvalidArgument,
    };
    GatewayError::client(code, format!("{}.", capitalized(&e.to_string())))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
