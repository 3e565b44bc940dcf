//! `body_coding`: arbitrary bytes as a gzip or brotli body (input byte 0: even gzip, odd
//! brotli; then the chunking header of [`split_chunking`]), in chunks, through
//! `ferrysync_sqlite::coding::Inflater` as the server reads a request and the phone a reply:
//! steps while a chunk is left, steps with no input while the decoder holds output, `end` at
//! the end, up to a limit of decoded bytes as the server's body limit.
//!
//! Invariants:
//! - a step puts out at most `STEP` bytes and uses at most what it was given; a step on a
//!   non-empty chunk makes progress (uses input or puts out bytes) or fails;
//! - the chunking does not matter: split or whole, the same bytes come out and the body is
//!   accepted or refused alike (a refusal may come at a different step);
//! - an accepted body, compressed again with `Deflater` (the same coding), decodes to the
//!   same bytes.

use crate::{chunks, invariant, planted, split_chunking};
use ferrysync_sqlite::coding::{Deflater, Inflater, STEP};

/// Decoded bytes after which the harness stops reading a body, as the server stops at its body
/// limit: enough for a bomb to show itself, little enough to keep each run short.
const LIMIT: usize = 1 << 20;

/// How a body read ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `end` accepted it.
    Accepted,
    /// A step or `end` refused it.
    Refused,
    /// More than [`LIMIT`] bytes came out (the server's 413).
    OverLimit,
}

/// The whole check.
pub fn run(input: &[u8]) {
    let Some((&coding, rest)) = input.split_first() else {
        return;
    };
    let brotli = coding % 2 == 1;
    let new = || {
        if brotli {
            Inflater::brotli()
        } else {
            Inflater::gzip()
        }
    };
    let (sizes, data) = split_chunking(rest);
    let split = decode(new(), &chunks(data, &sizes));
    let whole = decode(new(), &chunks(data, &[]));
    // The planted bug (selftest): the split reading loses the last byte of its output.
    let split_out = if planted("body_coding") && !split.0.is_empty() {
        &split.0[..split.0.len() - 1]
    } else {
        &split.0[..]
    };
    // A step that fails drops its output: a reading may stop up to a step short of another.
    let near_limit = |out: &[u8]| out.len() + 2 * STEP > LIMIT;
    match (&split.1, &whole.1) {
        // Past the limit, both read about that much, whatever the chunking.
        (End::OverLimit, End::OverLimit) => {}
        (End::OverLimit, other) | (other, End::OverLimit) => invariant!(
            *other == End::Refused && near_limit(split_out) && near_limit(&whole.0),
            "one reading passed the limit, the other did not: {:?} ({} bytes) / {:?} ({} bytes)",
            split.1,
            split_out.len(),
            whole.1,
            whole.0.len()
        ),
        // A refusal may come a step earlier or later; what came out before it is the same
        // stream, so one is a prefix of the other.
        (End::Refused, _) | (_, End::Refused) => {
            invariant!(
                split.1 == whole.1,
                "split {:?} but whole {:?}",
                split.1,
                whole.1
            );
            let n = split_out.len().min(whole.0.len());
            invariant!(
                split_out[..n] == whole.0[..n],
                "refused bodies decode differently before the refusal"
            );
        }
        (End::Accepted, End::Accepted) => {
            invariant!(
                split_out == &whole.0[..],
                "the chunking changed the output: {} vs {} bytes",
                split_out.len(),
                whole.0.len()
            );
            let mut z = if brotli {
                Deflater::brotli()
            } else {
                Deflater::gzip(6)
            };
            // `finish` returns every compressed byte not taken yet: here, all of them.
            let again = z.write(&whole.0).and_then(|()| z.finish());
            invariant!(again.is_ok(), "compressing into memory failed");
            let again = again.unwrap_or_default();
            let back = decode(new(), &[&again]);
            invariant!(
                back.1 == End::Accepted && back.0 == whole.0,
                "an accepted body compressed again decodes to {:?}, {} bytes for {}",
                back.1,
                back.0.len(),
                whole.0.len()
            );
        }
    }
}

/// Reads `chunks` through `z` as the server does; returns the output and how it ended.
fn decode(mut z: Inflater, chunks: &[&[u8]]) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let step = |z: &mut Inflater, chunk: &[u8], out: &mut Vec<u8>| -> Option<usize> {
        let (used, o) = z.step(chunk).ok()?;
        invariant!(o.len() <= STEP, "a step put out {} bytes", o.len());
        invariant!(
            used <= chunk.len(),
            "a step used {used} of {} bytes",
            chunk.len()
        );
        invariant!(
            chunk.is_empty() || used > 0 || !o.is_empty(),
            "a step on {} bytes made no progress",
            chunk.len()
        );
        out.extend_from_slice(&o);
        Some(used)
    };
    for chunk in chunks {
        let mut chunk = *chunk;
        while !chunk.is_empty() || z.holds_output() {
            let Some(used) = step(&mut z, chunk, &mut out) else {
                return (out, End::Refused);
            };
            chunk = &chunk[used..];
            if out.len() > LIMIT {
                return (out, End::OverLimit);
            }
        }
    }
    match z.end() {
        Ok(rest) => {
            out.extend_from_slice(&rest);
            if out.len() > LIMIT {
                (out, End::OverLimit)
            } else {
                (out, End::Accepted)
            }
        }
        Err(_) => (out, End::Refused),
    }
}
