//! Negative tests: damaged, cut, oversized, padded and reordered input. Each gives a specific
//! error, never a panic and never a wrong message, and the decoder recovers at the next frame
//! delimiter.

mod common;

use common::*;
use ferrysync_core::frame::{
    EncodeError, FrameDecoder, FrameEncoder, FrameError, MessageError, DEFAULT_MAX_FRAME,
};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::stream::{ReplyCheck, RequestCheck, StreamError};
use ferrysync_core::wire::{
    Accepted, Change, Done, End, Hello, Mapping, Mode, Op, RejectReason, Rejected, Remove, Reply,
    Request, Upsert, PROTOCOL_VERSION,
};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use proptest::prelude::*;

const BODY: &[u8] = b"\x0eACME Logistics\x04Lyon\x11+33 4 72 00 00 00";
const BATCH: u64 = 42;

fn hello() -> Request<'static> {
    Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash: EXAMPLE.hash(),
        batch_id: BATCH,
        cursor: Some(1234),
        mode: Mode::Delta,
    })
}

fn change(table: u8, local: u32, parent: Option<RecordRef>) -> Request<'static> {
    Request::Change(Change {
        table: TableId(table),
        op: Op::Add,
        key: RecordRef::Local(LocalId(local)),
        parent,
        modified_at: Hlc::new(1_764_139_200_000, 3, 17),
        body: BODY,
    })
}

fn end(count: u32) -> Request<'static> {
    Request::End(End { count })
}

fn accepted(batch_id: u64) -> Reply<'static> {
    Reply::Accepted(Accepted {
        batch_id,
        server_time: 1_764_139_200_500,
    })
}

fn mapping() -> Reply<'static> {
    Reply::Mapping(Mapping {
        table: TableId(0),
        local: LocalId(5),
        server: ServerId(135),
    })
}

fn rejected() -> Reply<'static> {
    Reply::Rejected(Rejected {
        table: TableId(1),
        op: Op::Update,
        key: RecordRef::Server(ServerId(9)),
        reason: RejectReason::Deleted,
        body: BODY,
    })
}

fn upsert(table: u8, id: u64) -> Reply<'static> {
    Reply::Upsert(Upsert {
        table: TableId(table),
        id: ServerId(id),
        parent: (table > 0).then_some(ServerId(135)),
        modified_at: Hlc::new(1_764_139_200_000, 0, 0),
        body: BODY,
    })
}

fn remove() -> Reply<'static> {
    Reply::Remove(Remove {
        table: TableId(1),
        id: ServerId(77),
    })
}

fn done(count: u32) -> Reply<'static> {
    Reply::Done(Done { cursor: 99, count })
}

fn good_request() -> Vec<Request<'static>> {
    vec![
        hello(),
        change(0, 5, None),
        change(1, 1, Some(RecordRef::Local(LocalId(5)))),
        change(1, 2, Some(RecordRef::Server(ServerId(135)))),
        end(3),
    ]
}

fn good_reply() -> Vec<Reply<'static>> {
    vec![
        accepted(BATCH),
        mapping(),
        rejected(),
        Reply::Reset,
        upsert(0, 135),
        remove(),
        upsert(1, 136),
        remove(),
        done(7),
    ]
}

// ---- frames ----------------------------------------------------------------------------------

/// Every single-bit flip anywhere in a frame (delimiter included) is refused, by both decoders,
/// with a framing error (CRC, COBS, length): the damaged bytes never yield a message. Feeding a
/// delimiter and a good frame afterwards gives that good frame: the decoder recovered.
#[test]
fn every_single_bit_flip_is_detected() {
    let requests = good_request();
    let replies = good_reply();
    let mut cases: Vec<(Side, Vec<u8>)> = Vec::new();
    cases.extend(requests.iter().map(|m| (Side::Request, frame_of(m))));
    cases.extend(replies.iter().map(|m| (Side::Reply, frame_of(m))));
    let next_req = frame_of(&end(0));
    let next_rep = frame_of(&done(0));
    let mut flips = 0;
    for (side, f) in &cases {
        let next = match side {
            Side::Request => &next_req,
            Side::Reply => &next_rep,
        };
        let next_pc = decode_one(*side, &mut next.clone()).unwrap();
        for bit in 0..f.len() * 8 {
            let mut bad = f.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            flips += 1;

            // Whole-frame decode: an error, and one that says the frame is damaged.
            let whole = decode_one(*side, &mut bad.clone());
            assert!(
                matches!(
                    whole,
                    Err(FrameError::Crc
                        | FrameError::Cobs
                        | FrameError::TooShort
                        | FrameError::TrailingBytes)
                ),
                "flip of bit {bit} in {f:02x?}: {whole:?}"
            );

            // Streaming: only errors until the extra delimiter, then the next frame decodes.
            let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
            let mut events = Vec::new();
            feed_all(&mut dec, *side, &bad, &mut events);
            feed_all(&mut dec, *side, &[0], &mut events);
            assert!(!events.is_empty(), "flip of bit {bit}: nothing reported");
            for e in &events {
                assert!(
                    matches!(
                        e,
                        Err(FrameError::Crc | FrameError::Cobs | FrameError::TooShort)
                    ),
                    "flip of bit {bit} in {f:02x?}: {e:?}"
                );
            }
            assert!(!dec.is_mid_frame());
            let mut after = Vec::new();
            feed_all(&mut dec, *side, next, &mut after);
            assert_eq!(
                after,
                vec![Ok(next_pc.clone())],
                "no recovery after bit {bit}"
            );
        }
    }
    assert!(flips > 1000);
}

/// A frame with an intact CRC but a damaged COBS layout, and frames too short for a CRC.
#[test]
fn bad_cobs_and_short_frames() {
    // Code byte 0x09 promises 8 data bytes but only 2 follow.
    assert_eq!(
        decode_one(Side::Request, &mut [0x09, 0x01, 0x02, 0x00]),
        Err(FrameError::Cobs)
    );
    // Four bytes of payload: room for a CRC but not for a message.
    let short = raw_frame(&[]);
    assert_eq!(
        decode_one(Side::Request, &mut short.clone()),
        Err(FrameError::TooShort)
    );
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, Side::Reply, &[0x02, 0x07, 0x00], &mut events);
    assert_eq!(events, vec![Err(FrameError::TooShort)]);
    assert_eq!(dec.frames(), 1);
}

/// `frame::decode` takes exactly one frame: bytes after its delimiter are an error.
#[test]
fn whole_frame_decode_refuses_a_second_frame() {
    let mut two = stream_of(&[done(0), done(1)]);
    assert_eq!(
        decode_one(Side::Reply, &mut two),
        Err(FrameError::TrailingBytes)
    );
}

/// A stream cut at every byte: the decoder knows whether it stopped inside a frame, and the
/// stream check refuses the cut stream as `Truncated`. Only the whole stream is complete.
#[test]
fn truncated_streams_are_refused() {
    let req = stream_of(&good_request());
    let boundaries: Vec<usize> = good_request()
        .iter()
        .scan(0, |at, m| {
            *at += frame_of(m).len();
            Some(*at)
        })
        .collect();
    for cut in 0..=req.len() {
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let mut check = RequestCheck::new(EXAMPLE.hash());
        let mut off = 0;
        while off < cut {
            let fed = dec.feed::<Request<'_>>(&req[off..cut]);
            off += fed.consumed;
            if let Some(m) = fed.result.unwrap() {
                check.handle(&m).unwrap();
            }
        }
        let at_boundary = cut == 0 || boundaries.contains(&cut);
        assert_eq!(dec.is_mid_frame(), !at_boundary, "cut at {cut}");
        if cut == req.len() {
            assert_eq!(check.finish(), Ok(()));
            assert!(check.is_complete());
        } else {
            assert_eq!(check.finish(), Err(StreamError::Truncated), "cut at {cut}");
        }
    }

    let rep = stream_of(&good_reply());
    for cut in 0..rep.len() {
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let mut check = ReplyCheck::new(BATCH);
        let mut off = 0;
        while off < cut {
            let fed = dec.feed::<Reply<'_>>(&rep[off..cut]);
            off += fed.consumed;
            if let Some(m) = fed.result.unwrap() {
                check.handle(&m).unwrap();
            }
        }
        assert_eq!(check.finish(), Err(StreamError::Truncated), "cut at {cut}");
    }
}

/// A 200-byte frame into a 64-byte decoder: `TooLarge`, the rest of it skipped, and the next
/// frame decodes. Holds in any chunking. A stream that ends while skipping is mid-frame.
#[test]
fn oversized_frame_then_recovery() {
    let body = [0x55u8; 180];
    let big = Request::Change(Change {
        body: &body,
        ..match change(0, 1, None) {
            Request::Change(c) => c,
            _ => unreachable!(),
        }
    });
    let big_frame = frame_of(&big);
    assert!(big_frame.len() >= 190 && big_frame.len() <= 210);
    let small = end(1);
    let mut bytes = big_frame.clone();
    bytes.extend(frame_of(&small));
    let want = vec![Err(FrameError::TooLarge), Ok(postcard_of(&small))];
    for sizes in [&[1usize][..], &[7], &[63], &[64], &[65], &[bytes.len()]] {
        let mut dec = FrameDecoder::<64>::new();
        assert_eq!(feed_chunked(&mut dec, Side::Request, &bytes, sizes), want);
        assert_eq!(dec.frames(), 2);
        assert!(!dec.is_mid_frame());
    }
    // Cut inside the skipped part: still mid-frame.
    let mut dec = FrameDecoder::<64>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, Side::Request, &big_frame[..150], &mut events);
    assert_eq!(events, vec![Err(FrameError::TooLarge)]);
    assert!(dec.is_mid_frame());

    // The encoder refuses it too.
    assert_eq!(
        FrameEncoder::<64>::new().encode(&big),
        Err(EncodeError::TooLarge)
    );
}

/// The size limit is exact: a frame of `N` bytes (delimiter included) decodes with
/// `FrameDecoder<N>` and encodes with `FrameEncoder<N>`; one of `N + 1` does neither.
#[test]
fn maximum_frame_size_is_exact() {
    const N: usize = 64;
    let body = [0x33u8; 64];
    let with = |len: usize| {
        Reply::Upsert(Upsert {
            body: &body[..len],
            ..match upsert(1, 136) {
                Reply::Upsert(u) => u,
                _ => unreachable!(),
            }
        })
    };
    let len_n = (0..64).find(|&l| frame_of(&with(l)).len() == N).unwrap();
    let len_over = (0..64)
        .find(|&l| frame_of(&with(l)).len() == N + 1)
        .unwrap();

    let at_n = with(len_n);
    let f = frame_of(&at_n);
    assert_eq!(FrameEncoder::<N>::new().encode(&at_n).unwrap(), &f[..]);
    let mut dec = FrameDecoder::<N>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, Side::Reply, &f, &mut events);
    assert_eq!(events, vec![Ok(postcard_of(&at_n))]);

    let over = with(len_over);
    assert_eq!(
        FrameEncoder::<N>::new().encode(&over),
        Err(EncodeError::TooLarge)
    );
    let mut dec = FrameDecoder::<N>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, Side::Reply, &frame_of(&over), &mut events);
    assert_eq!(events, vec![Err(FrameError::TooLarge)]);
}

/// Garbage without a zero byte more than a frame long: `TooLarge`, then recovery.
#[test]
fn long_garbage_then_recovery() {
    let mut bytes = vec![0xA5u8; 3 * DEFAULT_MAX_FRAME];
    bytes.extend(stream_of(&good_reply()));
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let events = feed_chunked(&mut dec, Side::Reply, &bytes, &[100]);
    // The garbage swallows the first frame (Accepted): no delimiter until its end.
    let mut want = vec![Err(FrameError::TooLarge)];
    want.extend(good_reply()[1..].iter().map(|m| Ok(postcard_of(m))));
    assert_eq!(events, want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Non-zero garbage glued before a frame merges with it: exactly one error, then every
    /// following frame decodes.
    #[test]
    fn nonzero_garbage_costs_one_frame(
        garbage in proptest::collection::vec(1u8..=255, 1..200),
        sizes in proptest::collection::vec(1usize..=300, 1..8),
    ) {
        let msgs = good_reply();
        let mut bytes = garbage.clone();
        bytes.extend(stream_of(&msgs));
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let events = feed_chunked(&mut dec, Side::Reply, &bytes, &sizes);
        prop_assert_eq!(events.len(), msgs.len());
        prop_assert!(matches!(
            events[0],
            Err(FrameError::Crc | FrameError::Cobs | FrameError::TooShort)
        ), "{:?}", events[0]);
        for (e, m) in events[1..].iter().zip(&msgs[1..]) {
            prop_assert_eq!(e, &Ok(postcard_of(m)));
        }
    }

    /// Garbage that contains zeros, then a delimiter, then good frames: only errors (or
    /// nothing, for runs of bare delimiters) before the good frames, which all decode.
    #[test]
    fn garbage_with_zeros_then_recovery(
        garbage in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..400),
        sizes in proptest::collection::vec(1usize..=300, 1..8),
    ) {
        let msgs = good_request();
        let mut bytes = garbage.clone();
        bytes.push(0);
        bytes.extend(stream_of(&msgs));
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let events = feed_chunked(&mut dec, Side::Request, &bytes, &sizes);
        prop_assert!(events.len() >= msgs.len());
        let (junk, good) = events.split_at(events.len() - msgs.len());
        for e in junk {
            prop_assert!(e.is_err(), "garbage decoded as a message: {:?}", e);
        }
        let nonempty_segments = garbage.split(|&b| b == 0).filter(|s| !s.is_empty()).count();
        prop_assert_eq!(junk.len(), nonempty_segments);
        for (e, m) in good.iter().zip(&msgs) {
            prop_assert_eq!(e, &Ok(postcard_of(m)));
        }
    }

    /// Arbitrary bytes, arbitrary chunks, as requests and as replies, into decoders of two
    /// sizes: no panic, and any message accepted re-encodes to a frame that decodes to it.
    /// A delimiter and a good frame afterwards always decode.
    #[test]
    fn arbitrary_bytes_never_panic(
        parts in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(prop_oneof![Just(0u8), 1u8..=4, any::<u8>()], 0..300),
                request().prop_map(|m| frame_of(&m)),
                reply().prop_map(|m| frame_of(&m)),
            ],
            1..6,
        ),
        sizes in proptest::collection::vec(1usize..=500, 1..8),
    ) {
        let bytes: Vec<u8> = parts.concat();
        for side in [Side::Request, Side::Reply] {
            let mut big = FrameDecoder::<1024>::new();
            let mut small = FrameDecoder::<32>::new();
            let mut events = feed_chunked(&mut big, side, &bytes, &sizes);
            events.extend(feed_chunked(&mut small, side, &bytes, &sizes));
            for e in &events {
                if let Ok(pc) = e {
                    // Re-encode the message: its frame decodes to the same message.
                    let f = raw_frame(pc);
                    prop_assert_eq!(&decode_one(side, &mut f.clone()), e);
                }
            }
            let tail = match side {
                Side::Request => frame_of(&end(0)),
                Side::Reply => frame_of(&done(0)),
            };
            let mut after = Vec::new();
            feed_all(&mut big, side, &[0], &mut after);
            after.clear();
            feed_all(&mut big, side, &tail, &mut after);
            prop_assert_eq!(after, vec![decode_one(side, &mut tail.clone())]);
        }
    }
}

// ---- messages --------------------------------------------------------------------------------

/// Frames with a good CRC around message bytes this version cannot read: each a specific
/// `FrameError::Message` (or `TrailingBytes`).
#[test]
fn undecodable_messages() {
    use MessageError::*;
    let req = |bytes: &[u8]| decode_one(Side::Request, &mut raw_frame(bytes));
    let rep = |bytes: &[u8]| decode_one(Side::Reply, &mut raw_frame(bytes));
    let msg = |e| Err(FrameError::Message(e));

    // Unknown discriminants are refused as undecodable messages (which kind: see
    // `unknown_discriminants_are_unknown_variant`).
    for bad in unknown_discriminants() {
        let got = decode_one(bad.0, &mut raw_frame(bad.1));
        assert!(
            matches!(got, Err(FrameError::Message(_))),
            "{bad:?}: {got:?}"
        );
    }
    // Hello.cursor with option tag 2.
    assert_eq!(req(&[0, 1, 0, 0, 2, 0]), msg(BadOption));
    // Hello.protocol = 65536 does not fit a u16.
    assert_eq!(req(&[0, 0x80, 0x80, 0x04, 0, 0, 0, 0]), msg(BadVarint));
    // A u64 varint of eleven bytes.
    assert_eq!(
        rep(&[6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0]),
        msg(BadVarint)
    );
    // Hello cut after its schema hash.
    assert_eq!(req(&[0, 1, 5]), msg(UnexpectedEnd));
    // Body length 10 with 2 bytes left.
    assert_eq!(rep(&[4, 0, 1, 0, 1, 0, 0, 10, 1, 2]), msg(UnexpectedEnd));
    // A good Done followed by a stray byte.
    assert_eq!(rep(&[6, 99, 0, 0x55]), Err(FrameError::TrailingBytes));
    // And the untouched Done decodes, so the cases above fail for the reason named.
    assert_eq!(rep(&[6, 99, 0]), Ok(postcard_of(&done(0))));
}

/// Message bytes, each with one enum discriminant this version does not know.
fn unknown_discriminants() -> [(Side, &'static [u8]); 7] {
    [
        // Message kinds (Request has 0..=2, Reply 0..=6).
        (Side::Request, &[4]),
        (Side::Request, &[0x80, 0x01]),
        (Side::Reply, &[10]),
        // Hello with mode 2 (Mode has Delta = 0, Full = 1).
        (Side::Request, &[0, 1, 0, 0, 0, 2]),
        // Change with op 3, then with key kind 2 (RecordRef has Local = 0, Server = 1).
        (Side::Request, &[1, 0, 3, 0, 5, 0, 0, 0, 0, 0]),
        (Side::Request, &[1, 0, 0, 2, 5, 0, 0, 0, 0, 0]),
        // Rejected with reason 7.
        (Side::Reply, &[2, 0, 0, 0, 5, 7, 0]),
    ]
}

/// An unknown discriminant must be reported as `MessageError::UnknownVariant`.
///
/// Postcard hands the variant index to serde's derived visitor, which fails with a custom
/// error (`postcard::Error::SerdeDeCustom`), not `DeserializeBadEnum`; both must map here.
#[test]
fn unknown_discriminants_are_unknown_variant() {
    for bad in unknown_discriminants() {
        assert_eq!(
            decode_one(bad.0, &mut raw_frame(bad.1)),
            Err(FrameError::Message(MessageError::UnknownVariant)),
            "{bad:?}"
        );
    }
}

// ---- stream order ----------------------------------------------------------------------------

/// Runs a request stream through framing, the streaming decoder (7-byte chunks) and the
/// request check; the first error, or the end-of-stream verdict.
fn check_request(msgs: &[Request<'_>]) -> Result<(), StreamError> {
    let bytes = stream_of(msgs);
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let mut check = RequestCheck::new(EXAMPLE.hash());
    for chunk in bytes.chunks(7) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let fed = dec.feed::<Request<'_>>(rest);
            rest = &rest[fed.consumed..];
            if let Some(m) = fed.result.unwrap() {
                check.handle(&m)?;
            }
        }
    }
    check.finish()
}

/// The same for a reply stream to batch [`BATCH`].
fn check_reply(msgs: &[Reply<'_>]) -> Result<(), StreamError> {
    let bytes = stream_of(msgs);
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let mut check = ReplyCheck::new(BATCH);
    for chunk in bytes.chunks(7) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let fed = dec.feed::<Reply<'_>>(rest);
            rest = &rest[fed.consumed..];
            if let Some(m) = fed.result.unwrap() {
                check.handle(&m)?;
            }
        }
    }
    check.finish()
}

#[test]
fn good_streams_pass() {
    assert_eq!(check_request(&good_request()), Ok(()));
    assert_eq!(check_request(&[hello(), end(0)]), Ok(()));
    assert_eq!(check_reply(&good_reply()), Ok(()));
    assert_eq!(check_reply(&[accepted(BATCH), done(0)]), Ok(()));
    // Upserts and Removes mix; Reset is optional.
    assert_eq!(
        check_reply(&[
            accepted(BATCH),
            remove(),
            upsert(0, 1),
            remove(),
            upsert(1, 2),
            done(4)
        ]),
        Ok(())
    );
}

#[test]
fn request_order_errors() {
    let c0 = change(0, 5, None);
    let c1 = change(1, 1, Some(RecordRef::Local(LocalId(5))));
    assert_eq!(
        check_request(&[c0, hello(), end(1)]),
        Err(StreamError::MissingStart)
    );
    assert_eq!(check_request(&[end(0)]), Err(StreamError::MissingStart));
    assert_eq!(
        check_request(&[hello(), c0, hello(), end(1)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_request(&[hello(), c1, c0, end(2)]),
        Err(StreamError::TableOrder { frame: 2 })
    );
    assert_eq!(
        check_request(&[hello(), c0, c1, end(3)]),
        Err(StreamError::CountMismatch {
            declared: 3,
            seen: 2
        })
    );
    assert_eq!(
        check_request(&[hello(), c0, end(1), c1]),
        Err(StreamError::AfterEnd { frame: 3 })
    );
    assert_eq!(
        check_request(&[hello(), c0, end(1), end(1)]),
        Err(StreamError::AfterEnd { frame: 3 })
    );
    assert_eq!(
        check_request(&[hello(), c0, c1]),
        Err(StreamError::Truncated)
    );
}

#[test]
fn unsupported_version_and_schema_mismatch() {
    let with = |protocol, schema_hash| {
        Request::Hello(Hello {
            protocol,
            schema_hash,
            batch_id: 1,
            cursor: None,
            mode: Mode::Full,
        })
    };
    let h = EXAMPLE.hash();
    assert_eq!(
        check_request(&[with(4, h), end(0)]),
        Err(StreamError::UnsupportedVersion { got: 4 })
    );
    // Version 2 sent clock counters whole: its batches would decode to other clocks.
    assert_eq!(
        check_request(&[with(2, h), end(0)]),
        Err(StreamError::UnsupportedVersion { got: 2 })
    );
    assert_eq!(
        check_request(&[with(1, h), end(0)]),
        Err(StreamError::UnsupportedVersion { got: 1 })
    );
    assert_eq!(
        check_request(&[with(0, h), end(0)]),
        Err(StreamError::UnsupportedVersion { got: 0 })
    );
    // The version is checked before the schema.
    assert_eq!(
        check_request(&[with(4, h ^ 1), end(0)]),
        Err(StreamError::UnsupportedVersion { got: 4 })
    );
    assert_eq!(
        check_request(&[with(PROTOCOL_VERSION, h ^ 1), end(0)]),
        Err(StreamError::SchemaMismatch {
            got: h ^ 1,
            want: h
        })
    );
    assert_eq!(
        StreamError::UnsupportedVersion { got: 2 }.as_str(),
        "unsupported_version"
    );
}

/// A future Hello that appends a field is not a v1 Hello: the v1 decoder refuses the frame
/// (`TrailingBytes`) before any stream check sees its version. The decoder still shows the
/// CRC-checked message bytes, and `wire::peek_protocol` reads the version from them, so a
/// server can answer `unsupported_version` rather than "malformed".
#[test]
fn future_hello_with_more_fields() {
    // Hello { protocol: 2, schema_hash: 0, batch_id: 0, cursor: None, mode: Delta, <new: 7> }
    let v2 = [0u8, 2, 0, 0, 0, 0, 7];
    assert_eq!(
        decode_one(Side::Request, &mut raw_frame(&v2)),
        Err(FrameError::TrailingBytes)
    );
    let frame = raw_frame(&v2);
    let mut dec = FrameDecoder::<1024>::new();
    let fed = dec.feed::<Request<'_>>(&frame);
    assert_eq!(fed.result, Err(FrameError::TrailingBytes));
    assert_eq!(dec.last_message(), Some(&v2[..]));
    assert_eq!(ferrysync_core::wire::peek_protocol(&v2), Some(2));
    // A damaged frame shows no message bytes.
    let mut bad = raw_frame(&v2);
    bad[1] ^= 1;
    let mut dec = FrameDecoder::<1024>::new();
    assert!(dec.feed::<Request<'_>>(&bad).result.is_err());
    assert_eq!(dec.last_message(), None);
}

#[test]
fn reply_order_errors() {
    assert_eq!(
        check_reply(&[upsert(0, 1), accepted(BATCH), done(1)]),
        Err(StreamError::MissingStart)
    );
    assert_eq!(
        check_reply(&[accepted(BATCH + 1), done(0)]),
        Err(StreamError::BatchMismatch {
            got: BATCH + 1,
            want: BATCH
        })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), accepted(BATCH), done(1)]),
        Err(StreamError::OutOfOrder { frame: 1 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), upsert(0, 1), mapping(), done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), rejected(), mapping(), done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), remove(), rejected(), done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), Reply::Reset, Reply::Reset, done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), upsert(0, 1), Reply::Reset, done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), Reply::Reset, mapping(), done(2)]),
        Err(StreamError::OutOfOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), upsert(1, 2), upsert(0, 1), done(2)]),
        Err(StreamError::TableOrder { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), mapping(), done(2)]),
        Err(StreamError::CountMismatch {
            declared: 2,
            seen: 1
        })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), done(0), remove()]),
        Err(StreamError::AfterEnd { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), done(0), done(0)]),
        Err(StreamError::AfterEnd { frame: 2 })
    );
    assert_eq!(
        check_reply(&[accepted(BATCH), mapping()]),
        Err(StreamError::Truncated)
    );
}
