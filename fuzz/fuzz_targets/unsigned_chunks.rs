#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apgate_fuzz::harness::unsigned_chunks(data));
