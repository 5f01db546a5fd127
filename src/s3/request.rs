//! Which S3 operation a request is, decided from the S3 API model, and the refusal of everything
//! the model does not give that operation.
//!
//! A request is matched against every operation of the model with its method and resource
//! (service, bucket or object): an operation is a candidate when its marker sub-resources
//! (`?tagging`, `?list-type=2`) and its required query parameters and headers are all present.
//! The candidate with the most of them wins (`?uploadId=` makes a GET ListParts, not GetObject;
//! `x-amz-copy-source` makes a PUT CopyObject); two candidates with as many is a request naming two
//! operations at once (`?list-type=2&tagging`), refused. Then every query parameter must be one the
//! winner takes, and every `x-amz-*` header one it takes or one of authentication, body framing or
//! checksums: nothing the operation does not define reaches the upstream, where S3 might act on it.
//!
//! **Architecture invariant:** pure, over the one parse of the request ([`S3Target`]).

use std::fmt;

use http::{HeaderMap, Method};

use super::addressing::S3Target;
use super::operation::{self, Checksum, HttpMethod, Operation, Resource, Spec};

/// The query parameters of a SigV4 presigned (query-authenticated) request.
pub const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// The query parameters of a SigV2 presigned URL.
pub const PRESIGN_V2_PARAMS: &[&str] = &["AWSAccessKeyId", "Expires", "Signature"];

/// Whether a query parameter belongs to request authentication (SigV4 or SigV2 presigned URLs):
/// checked by apgate, never part of an operation, never forwarded.
pub fn is_auth_param(name: &str) -> bool {
    PRESIGN_PARAMS.contains(&name) || PRESIGN_V2_PARAMS.contains(&name)
}

/// The parameter SDKs generated from Smithy models add to name the operation (`?x-id=GetObject`).
/// S3 ignores it; apgate checks it names the operation it classified, and does not forward it.
pub const OPERATION_ID_PARAM: &str = "x-id";

/// `x-amz-*` headers of authentication and of the SDKs, which any request may carry: apgate reads
/// them (or ignores them) and sets its own.
const AUTH_HEADERS: &[&str] = &[
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "x-amz-user-agent",
];

/// The headers of an aws-chunked body, for operations with a body.
pub const FRAMING_HEADERS: &[&str] = &["x-amz-decoded-content-length", "x-amz-trailer"];

/// Why a request is none of the model's operations, or more than the one it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// No operation of the model takes this method on this resource with these sub-resources.
    NoOperation,
    /// Two operations match as well as each other: the request names two sub-resources.
    TwoOperations { first: Operation, second: Operation },
    /// A query parameter the operation does not take; `marker_of` names the operation it would
    /// select instead, when it is another operation's sub-resource.
    UnknownParameter {
        name: String,
        operation: Operation,
        marker_of: Option<Operation>,
    },
    /// `x-id` names another operation.
    OperationIdMismatch { given: String, operation: Operation },
    /// An `x-amz-*` header the operation does not take.
    UnexpectedHeader { name: String, operation: Operation },
    /// A header the operation takes, given more than once.
    RepeatedHeader { name: String },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoOperation => f.write_str("no S3 operation takes this method on this resource"),
            Self::TwoOperations { first, second } => write!(
                f,
                "the request names two operations at once ({} and {}): send one sub-resource",
                first.as_str(),
                second.as_str()
            ),
            Self::UnknownParameter {
                name,
                operation,
                marker_of: Some(other),
            } => write!(
                f,
                "the query parameter {name:?} selects {} and cannot be added to {}",
                other.as_str(),
                operation.as_str()
            ),
            Self::UnknownParameter { name, operation, .. } => {
                write!(f, "{} does not take the query parameter {name:?}", operation.as_str())
            }
            Self::OperationIdMismatch { given, operation } => write!(
                f,
                "x-id={given:?} does not name the operation of this request ({})",
                operation.as_str()
            ),
            Self::UnexpectedHeader { name, operation } => {
                write!(f, "{} does not take the header {name}", operation.as_str())
            }
            Self::RepeatedHeader { name } => write!(f, "the header {name} is given more than once"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The resource a target names.
pub fn resource(target: &S3Target) -> Resource {
    match (&target.bucket, &target.key) {
        (None, _) => Resource::Service,
        (Some(_), None) => Resource::Bucket,
        (Some(_), Some(_)) => Resource::Object,
    }
}

/// The operation a request is; `Err` when it is none of the model's, or carries what its operation
/// does not take. (Authentication parameters are left to authentication.)
pub fn classify(method: &Method, target: &S3Target, headers: &HeaderMap) -> Result<Operation, RequestError> {
    let spec = select(method, target, headers)?;
    check(spec, target, headers)?;
    Ok(spec.operation)
}

/// Whether the request carries only what the selected operation takes.
pub fn check(spec: &Spec, target: &S3Target, headers: &HeaderMap) -> Result<(), RequestError> {
    check_params(spec, target)?;
    check_headers(spec, headers)
}

/// The operation whose markers and required members the request carries, the most of them.
pub fn select(method: &Method, target: &S3Target, headers: &HeaderMap) -> Result<&'static Spec, RequestError> {
    let method = HttpMethod::of(method).ok_or(RequestError::NoOperation)?;
    let mut best: Option<(usize, &'static Spec)> = None;
    let mut tie: Option<&'static Spec> = None;
    for &spec in candidates(method, resource(target)) {
        let Some(score) = selection_score(spec, target, headers) else {
            continue;
        };
        match best {
            Some((s, _)) if s > score => {}
            Some((s, _)) if s == score => tie = Some(spec),
            _ => {
                best = Some((score, spec));
                tie = None;
            }
        }
    }
    match (best, tie) {
        (None, _) => Err(RequestError::NoOperation),
        (Some((_, first)), Some(second)) => Err(RequestError::TwoOperations {
            first: first.operation,
            second: second.operation,
        }),
        (Some((_, spec)), None) => Ok(spec),
    }
}

/// The operations of a method and resource, in the model's order: an index built once, so a
/// request is scored against its handful of candidates instead of scanning all 105.
fn candidates(method: HttpMethod, resource: Resource) -> &'static [&'static Spec] {
    fn slot(method: HttpMethod, resource: Resource) -> usize {
        let m = match method {
            HttpMethod::Get => 0,
            HttpMethod::Put => 1,
            HttpMethod::Post => 2,
            HttpMethod::Delete => 3,
            HttpMethod::Head => 4,
        };
        let r = match resource {
            Resource::Service => 0,
            Resource::Bucket => 1,
            Resource::Object => 2,
        };
        m * 3 + r
    }
    static INDEX: std::sync::OnceLock<[Vec<&'static Spec>; 15]> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut index: [Vec<&'static Spec>; 15] = Default::default();
        for op in Operation::ALL {
            let spec = op.spec();
            index[slot(spec.method, spec.resource)].push(spec);
        }
        index
    });
    &index[slot(method, resource)]
}

/// How many of the operation's markers and required members the request carries, `None` when one
/// is missing.
fn selection_score(spec: &Spec, target: &S3Target, headers: &HeaderMap) -> Option<usize> {
    let mut score = 0;
    for m in spec.markers {
        let present = match m.value {
            None => target.has_param(m.name),
            Some(v) => target.param(m.name) == Some(v),
        };
        if !present {
            return None;
        }
        score += 1;
    }
    for (name, _) in spec.query.iter().filter(|(_, required)| *required) {
        if !target.has_param(name) {
            return None;
        }
        score += 1;
    }
    for (name, _) in spec.headers.iter().filter(|(_, required)| *required) {
        if !headers.contains_key(*name) {
            return None;
        }
        score += 1;
    }
    Some(score)
}

/// Every query parameter is one the operation takes (authentication's aside).
fn check_params(spec: &Spec, target: &S3Target) -> Result<(), RequestError> {
    for p in &target.query {
        let name = p.key.as_str();
        if is_auth_param(name) || spec.takes_param(name) {
            continue;
        }
        if name == OPERATION_ID_PARAM {
            if p.value != spec.operation.as_str() {
                return Err(RequestError::OperationIdMismatch {
                    given: p.value.clone(),
                    operation: spec.operation,
                });
            }
            continue;
        }
        let marker_of = Operation::ALL
            .into_iter()
            .find(|op| op.spec().markers.iter().any(|m| m.name == name));
        return Err(RequestError::UnknownParameter {
            name: name.to_owned(),
            operation: spec.operation,
            marker_of,
        });
    }
    Ok(())
}

/// Every `x-amz-*` header is one the operation takes, or one of authentication, of an aws-chunked
/// body, or of a body checksum; no header the operation takes is repeated.
fn check_headers(spec: &Spec, headers: &HeaderMap) -> Result<(), RequestError> {
    for key in headers.keys() {
        let name = key.as_str();
        let amz = name.starts_with("x-amz-");
        let member = spec.takes_header(name);
        if amz && !member && !AUTH_HEADERS.contains(&name) && !body_header(spec, name) {
            return Err(RequestError::UnexpectedHeader {
                name: name.to_owned(),
                operation: spec.operation,
            });
        }
        if (amz || member) && headers.get_all(key).iter().nth(1).is_some() {
            return Err(RequestError::RepeatedHeader { name: name.to_owned() });
        }
    }
    Ok(())
}

/// Headers of a request body rather than of the operation: aws-chunked framing, and the checksum
/// headers of operations whose body carries a checksum.
fn body_header(spec: &Spec, name: &str) -> bool {
    (spec.has_body() && FRAMING_HEADERS.contains(&name))
        || (spec.checksum != Checksum::None
            && (name == "x-amz-sdk-checksum-algorithm" || operation::is_checksum_header(name)))
}

#[cfg(test)]
mod tests;
