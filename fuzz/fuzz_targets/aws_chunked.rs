#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apgate_fuzz::harness::aws_chunked(data));
