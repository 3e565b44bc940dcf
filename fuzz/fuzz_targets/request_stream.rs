//! `request_stream`: see `ferrysync_fuzz::request` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrysync_fuzz::request::run(data));
