//! `frame_decoder`: arbitrary bytes, in arbitrary chunks, into `FrameDecoder::<1024>` for
//! `Request` and for `Reply`.
//!
//! Invariants:
//! - `feed` consumes at least one byte of non-empty input and never more than it was given;
//!   it answers "need more" only after consuming everything.
//! - Every decoded message re-encodes (`frame::encode`) into one frame that decodes, with a
//!   fresh decoder and with `frame::decode`, to an equal message, and re-encodes to the same
//!   bytes (decode → encode → decode is stable).
//! - The chunking does not matter: the same input fed as one chunk gives the same sequence of
//!   messages and errors, the same frame count and the same "mid frame" answer.
//! - `is_mid_frame` is true exactly when non-delimiter bytes follow the last `00`.

use crate::{chunks, invariant, planted, split_chunking};
use ferrysync_core::frame::{self, FrameDecoder, FrameError};
use ferrysync_core::wire::{End, Reply, Request};

const N: usize = 1024;

/// What one `feed` produced: a message as its re-encoded frame, or an error.
type Outcome = Result<Vec<u8>, FrameError>;

/// The whole check, for both message types.
pub fn run(input: &[u8]) {
    let (sizes, data) = split_chunking(input);
    let split = chunks(data, &sizes);
    let whole = chunks(data, &[]);
    let tail_open = data
        .rsplit(|&b| b == 0)
        .next()
        .is_some_and(|s| !s.is_empty());

    let a = feed_all(&split, request_roundtrip);
    let b = feed_all(&whole, request_roundtrip);
    invariant!(
        a == b,
        "request decoding depends on chunking: {a:?} vs {b:?}"
    );
    invariant!(
        a.2 == tail_open,
        "request decoder mid-frame {} but tail open {tail_open}",
        a.2
    );

    let a = feed_all(&split, reply_roundtrip);
    let b = feed_all(&whole, reply_roundtrip);
    invariant!(a == b, "reply decoding depends on chunking: {a:?} vs {b:?}");
    invariant!(
        a.2 == tail_open,
        "reply decoder mid-frame {} but tail open {tail_open}",
        a.2
    );
}

/// Feeds the chunks through one decoder; returns the outcomes, the frame count and whether
/// the decoder is mid-frame at the end.
fn feed_all(
    chunks: &[&[u8]],
    roundtrip: fn(&mut FrameDecoder<N>, &[u8]) -> (usize, Option<Outcome>),
) -> (Vec<Outcome>, u32, bool) {
    let mut dec = FrameDecoder::<N>::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input: &[u8] = chunk;
        while !input.is_empty() {
            let (consumed, outcome) = roundtrip(&mut dec, input);
            invariant!(
                consumed >= 1 && consumed <= input.len(),
                "feed consumed {consumed} of {} bytes",
                input.len()
            );
            input = &input[consumed..];
            match outcome {
                None => invariant!(
                    input.is_empty(),
                    "need-more with {} bytes left",
                    input.len()
                ),
                Some(o) => out.push(o),
            }
        }
    }
    (out, dec.frames(), dec.is_mid_frame())
}

macro_rules! roundtrip_fn {
    ($name:ident, $ty:ident, $plant:expr) => {
        fn $name(dec: &mut FrameDecoder<N>, input: &[u8]) -> (usize, Option<Outcome>) {
            let fed = dec.feed::<$ty<'_>>(input);
            let msg = match fed.result {
                Ok(None) => return (fed.consumed, None),
                Err(e) => return (fed.consumed, Some(Err(e))),
                Ok(Some(m)) => m,
            };
            let sent: $ty<'_> = if planted("frame_decoder") {
                ($plant)(msg)
            } else {
                msg
            };
            let mut buf = [0u8; N];
            let Ok(frame) = frame::encode(&sent, &mut buf) else {
                panic!(
                    "invariant broken: decoded message does not re-encode in {N} bytes: {msg:?}"
                );
            };
            let bytes = frame.to_vec();
            invariant!(
                bytes.last() == Some(&0),
                "encoded frame lacks its delimiter"
            );
            invariant!(
                !bytes[..bytes.len() - 1].contains(&0),
                "encoded frame holds a 00 inside"
            );
            // A fresh decoder reads it back in one go.
            let mut dec2 = FrameDecoder::<N>::new();
            let fed2 = dec2.feed::<$ty<'_>>(&bytes);
            invariant!(
                fed2.consumed == bytes.len(),
                "re-encoded frame not consumed whole"
            );
            match fed2.result {
                Ok(Some(m2)) => invariant!(m2 == msg, "re-decoded {m2:?} != decoded {msg:?}"),
                other => panic!("invariant broken: re-encoded frame decodes to {other:?}"),
            }
            // `frame::decode` of the same frame agrees, and re-encoding is stable.
            let mut copy = bytes.clone();
            match frame::decode::<$ty<'_>>(&mut copy) {
                Ok(m3) => {
                    invariant!(m3 == msg, "frame::decode gives {m3:?} != {msg:?}");
                    let mut buf3 = [0u8; N];
                    let again = frame::encode(&m3, &mut buf3).map(|f| f.to_vec());
                    invariant!(
                        again.as_deref() == Ok(&bytes[..]),
                        "re-encoding is not stable"
                    );
                }
                Err(e) => {
                    panic!("invariant broken: frame::decode refuses a re-encoded frame: {e:?}")
                }
            }
            (fed.consumed, Some(Ok(bytes)))
        }
    };
}

// The planted bug (selftest): the re-encoder writes `End` with a count one too high.
fn plant_request(m: Request<'_>) -> Request<'_> {
    match m {
        Request::End(e) => Request::End(End {
            count: e.count.wrapping_add(1),
        }),
        other => other,
    }
}

fn plant_reply(m: Reply<'_>) -> Reply<'_> {
    m
}

roundtrip_fn!(request_roundtrip, Request, plant_request);
roundtrip_fn!(reply_roundtrip, Reply, plant_reply);
