//! Harnesses behind the cargo-fuzz targets of `fuzz_targets/`, and the seed-corpus builders.
//!
//! Each target is a thin `fuzz_target!` around one function here, so the same checks run
//! from `make-corpus` (which replays every seed it writes) and from a debugger on a saved
//! crash. Every harness checks invariants, not only "does not crash":
//!
//! - [`frames::run`]: decode → encode → decode is stable, and chunking changes nothing.
//! - [`request::run`]: the server's request path on a real `SqliteStore`; a refused stream
//!   changes nothing, an accepted one leaves no orphan detail, a retry creates no row.
//! - [`reply::run`]: `engine::receive_reply` on a `MemStore`; an error leaves the store
//!   exactly as before, a success leaves no orphan and loses no in-flight local edit.
//! - [`schema::run`]: `LoadedSchema::parse`; an accepted schema validates, hashes the same
//!   twice, round-trips a body per table and opens as a SQLite store.
//! - [`coding::run`]: gzip and brotli bodies through the step-wise `Inflater`; each step's
//!   output is bounded, the chunking changes nothing, an accepted body round-trips.
//!
//! `FERRYSYNC_FUZZ_SELFTEST=<target>` (or `all`) plants one deliberate bug per harness (see
//! [`planted`]); `.ci/fuzz` checks that the fuzzer finds each within seconds.

pub mod coding;
pub mod frames;
pub mod reply;
pub mod request;
pub mod schema;
pub mod spec;

use std::sync::OnceLock;

/// Whether the deliberate bug of `target` is planted (`FERRYSYNC_FUZZ_SELFTEST` is `all` or
/// names the target, comma-separated). Read once per process.
pub fn planted(target: &str) -> bool {
    static SELFTEST: OnceLock<String> = OnceLock::new();
    let v = SELFTEST.get_or_init(|| std::env::var("FERRYSYNC_FUZZ_SELFTEST").unwrap_or_default());
    v == "all" || v.split(',').any(|t| t.trim() == target)
}

/// Whether the checks for known, still open findings run (`FERRYSYNC_FUZZ_STRICT=1`). They
/// are off by default so that CI stays green until the finding is fixed; each is listed in
/// `fuzz/README.md` with its minimized input under `fuzz/regressions/<target>/open/`.
pub fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var("FERRYSYNC_FUZZ_STRICT").is_ok_and(|v| v == "1"))
}

/// Counts outcomes by name and, with `FERRYSYNC_FUZZ_STATS=1`, prints the tally to stderr
/// every 10 000 inputs (to see how deep the inputs get: how many streams are accepted, ...).
pub fn tally(what: &'static str) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static ON: OnceLock<bool> = OnceLock::new();
    static COUNTS: Mutex<(u64, BTreeMap<&'static str, u64>)> = Mutex::new((0, BTreeMap::new()));
    if !*ON.get_or_init(|| std::env::var("FERRYSYNC_FUZZ_STATS").is_ok_and(|v| v == "1")) {
        return;
    }
    let mut c = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    *c.1.entry(what).or_default() += 1;
    c.0 += 1;
    if c.0.is_multiple_of(10_000) {
        eprintln!("tally after {}: {:?}", c.0, c.1);
    }
}

/// Panics with a message that names the broken invariant (libFuzzer reports it as a crash).
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("invariant broken: {}", format!($($arg)+));
        }
    };
}

/// Splits a raw input into chunk sizes and data: byte 0 (mod 8) is how many of the following
/// bytes are chunk sizes (each `b + 1`, used in turn); the rest is the data. With no sizes the
/// data is one chunk.
pub fn split_chunking(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&k, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let k = (k as usize % 8).min(rest.len());
    let sizes = rest[..k].iter().map(|&b| b as usize + 1).collect();
    (sizes, &rest[k..])
}

/// `data` cut into chunks of `sizes` (cycled); one chunk if `sizes` is empty.
pub fn chunks<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return if data.is_empty() {
            Vec::new()
        } else {
            vec![data]
        };
    }
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - pos);
        out.push(&data[pos..pos + n]);
        pos += n;
        i += 1;
    }
    out
}

/// Prefixes `data` with a chunking header of `sizes` (at most 7), for seed files.
pub fn with_chunking(sizes: &[u8], data: &[u8]) -> Vec<u8> {
    let k = sizes.len().min(7);
    let mut out = vec![k as u8];
    out.extend_from_slice(&sizes[..k]);
    out.extend_from_slice(data);
    out
}
