//! The in-process integration tests, as one test binary: apgate served in this process in front of
//! fake upstreams, driven by raw sockets and hyper clients. One binary rather than one per file:
//! each links all of apgate and compiles the shared helpers (tests/support/) again, which made
//! them a quarter of a cold `cargo test --release`.
//!
//! - `admin`: the admin port's bounds (connection cap, head deadline and size, one request each).
//! - `bad_input`: malformed and hostile requests get the right S3 error, never a panic or a hang.
//! - `bounds`: what one connection may hold (head buffer, unread answers, connection caps, drains).
//! - `faults`: one test per fault (upstream resets, timeouts, stalls, shutdown under load, ...).
//! - `proxy`: the request path end to end against a recording upstream.
//! - `retries`: what is retried upstream, and how.
//! - `ssrf`: no request reaches anything but the configured upstream.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

#[path = "../support/gateway.rs"]
mod gateway;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/upstream.rs"]
mod upstream;

mod admin;
mod bad_input;
mod bounds;
mod faults;
mod proxy;
mod retries;
mod ssrf;
