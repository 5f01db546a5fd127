//! The programs behind `scripts/bench` (docs/PERFORMANCE.md): `bench_upstream`, a fast upstream
//! that does no S3 work, and `bench_client`, the signing load and streaming client. A package of its
//! own so that building them does not build apgate's test-only dependencies (the AWS SDK).

mod repeat;

pub use repeat::Repeat;
