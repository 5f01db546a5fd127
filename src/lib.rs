//! apgate: a transparent S3 access-point gateway.
//!
//! Legacy clients send plain bucket-style S3 requests; apgate works out who is calling, picks the
//! access point for that caller and bucket, rewrites the request to it, re-signs it with its own
//! credentials and streams it upstream.
//!
//! # Layout
//! - [`config`]: TOML → validated types.
//! - [`s3`]: addressing, the operations of the S3 API model, access point ARNs, encodings (pure).
//! - [`sigv4`]: canonical requests, signing keys, chunk signatures (pure).
//! - [`identity`]: who is calling (SigV4, SigV2, source networks, client certificates).
//! - [`routing`]: (identity, bucket, prefix, class) → access point (pure).
//! - [`decision`]: what apgate does with a request, and the outbound head it sends (pure).
//! - [`signing`]: outbound SigV4 and apgate's credentials.
//! - [`upstream`]: the pooled client.
//! - [`proxy`]: one request, phase by phase.
//! - [`retry`]: which failed upstream exchanges are tried again, and when (pure).
//! - [`state`], [`app`], [`admin`], [`metrics`]: running it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod chunked;
pub mod cli;
pub mod config;
pub mod connection;
pub mod decision;
pub mod error;
pub mod explain;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod routing;
pub mod s3;
pub mod secret;
pub mod signing;
pub mod sigv4;
pub mod state;
pub mod tls;
pub mod upstream;
