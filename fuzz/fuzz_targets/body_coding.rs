//! `body_coding`: see `ferrysync_fuzz::coding` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrysync_fuzz::coding::run(data));
