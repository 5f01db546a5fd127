//! The S3 wire protocol as apgate sees it: addressing, access point ARNs, operations and the
//! percent-encoding rules. Everything here is pure: no IO, no state.

pub mod access_point;
pub mod addressing;
pub mod amzdate;
pub mod copy_source;
pub mod encoding;
pub mod headers;
pub mod operation;
pub mod payload;
pub mod regions;
pub mod request;
pub mod xml;

pub use access_point::AccessPoint;
pub use addressing::{BucketName, S3Target};
pub use operation::{Operation, OperationClass, Support};
pub use payload::PayloadHash;
