//! `frame_decoder`: see `ferrysync_fuzz::frames` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrysync_fuzz::frames::run(data));
