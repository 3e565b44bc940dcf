//! `schema_file`: see `ferrysync_fuzz::schema` for what it feeds and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrysync_fuzz::schema::run(data));
