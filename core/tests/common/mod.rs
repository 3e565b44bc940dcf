//! Helpers shared by the integration tests: proptest strategies for every message, a reference
//! framer written independently of the crate's, and a driver that feeds bytes to a decoder.
//!
//! Each test file uses part of this module, so unused items are expected in each of them.
#![allow(dead_code)]

use ferrysync_core::frame::{self, FrameDecoder, FrameError};
use ferrysync_core::wire::{
    Accepted, Change, Done, End, Hello, Mapping, Mode, Op, RejectReason, Rejected, Remove, Reply,
    Request, Upsert,
};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use proptest::prelude::*;

/// Largest body the strategies generate.
pub const MAX_BODY: usize = 800;

/// A body that lives for the whole test run (messages borrow their bodies; leaking keeps the
/// strategies simple and `Request<'static>` is `Copy`).
pub fn leak(body: Vec<u8>) -> &'static [u8] {
    Box::leak(body.into_boxed_slice())
}

pub fn table_id() -> impl Strategy<Value = TableId> {
    any::<u8>().prop_map(TableId)
}

pub fn server_id() -> impl Strategy<Value = ServerId> {
    // Mix small ids (one-byte varints) with the full range (ten-byte varints).
    prop_oneof![
        (0u64..300).prop_map(ServerId),
        any::<u64>().prop_map(ServerId)
    ]
}

pub fn local_id() -> impl Strategy<Value = LocalId> {
    prop_oneof![
        (0u32..300).prop_map(LocalId),
        any::<u32>().prop_map(LocalId)
    ]
}

pub fn record_ref() -> impl Strategy<Value = RecordRef> {
    prop_oneof![
        local_id().prop_map(RecordRef::Local),
        server_id().prop_map(RecordRef::Server),
    ]
}

pub fn hlc() -> impl Strategy<Value = Hlc> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(w, c, d)| Hlc::new(w, c, d))
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Add), Just(Op::Update), Just(Op::Delete)]
}

pub fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Delta), Just(Mode::Full)]
}

pub fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::UnknownTable),
        Just(RejectReason::InvalidBody),
        Just(RejectReason::OutOfScope),
        Just(RejectReason::ParentMissing),
        Just(RejectReason::Deleted),
        Just(RejectReason::UnknownRecord),
        Just(RejectReason::BadKey),
    ]
}

/// Bodies of 0..=800 bytes, often with zeros (which COBS must escape) and long zero-free runs
/// (which cross COBS's 254-byte block boundary).
pub fn body() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=MAX_BODY),
        proptest::collection::vec(1u8..=255, 0..=MAX_BODY),
        proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..=MAX_BODY),
    ]
    .prop_map(leak)
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        mode(),
    )
        .prop_map(|(protocol, schema_hash, batch_id, cursor, mode)| Hello {
            protocol,
            schema_hash,
            batch_id,
            cursor,
            mode,
        })
}

pub fn request() -> impl Strategy<Value = Request<'static>> {
    prop_oneof![
        hello().prop_map(Request::Hello),
        (
            table_id(),
            op(),
            record_ref(),
            proptest::option::of(record_ref()),
            hlc(),
            body()
        )
            .prop_map(|(table, op, key, parent, modified_at, body)| {
                Request::Change(Change {
                    table,
                    op,
                    key,
                    parent,
                    modified_at,
                    body,
                })
            }),
        any::<u32>().prop_map(|count| Request::End(End { count })),
    ]
}

pub fn reply() -> impl Strategy<Value = Reply<'static>> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(batch_id, server_time)| Reply::Accepted(
            Accepted {
                batch_id,
                server_time
            }
        )),
        (table_id(), local_id(), server_id()).prop_map(|(table, local, server)| {
            Reply::Mapping(Mapping {
                table,
                local,
                server,
            })
        }),
        (table_id(), op(), record_ref(), reason(), body()).prop_map(
            |(table, op, key, reason, body)| Reply::Rejected(Rejected {
                table,
                op,
                key,
                reason,
                body,
            })
        ),
        Just(Reply::Reset),
        (
            table_id(),
            server_id(),
            proptest::option::of(server_id()),
            hlc(),
            body()
        )
            .prop_map(
                |(table, id, parent, modified_at, body)| Reply::Upsert(Upsert {
                    table,
                    id,
                    parent,
                    modified_at,
                    body,
                })
            ),
        (table_id(), server_id()).prop_map(|(table, id)| Reply::Remove(Remove { table, id })),
        (any::<u64>(), any::<u32>())
            .prop_map(|(cursor, count)| Reply::Done(Done { cursor, count })),
    ]
}

/// The frame of `msg` (delimiter included), at the default maximum frame size.
pub fn frame_of<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = [0u8; frame::DEFAULT_MAX_FRAME];
    frame::encode(msg, &mut buf).unwrap().to_vec()
}

/// The frames of `msgs`, back to back.
pub fn stream_of<M: serde::Serialize>(msgs: &[M]) -> Vec<u8> {
    msgs.iter().flat_map(frame_of).collect()
}

/// The postcard bytes of a message (no CRC, no COBS): its identity for comparisons, since
/// postcard encodes these types canonically.
pub fn postcard_of<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = [0u8; 2 * frame::DEFAULT_MAX_FRAME];
    postcard::to_slice(msg, &mut buf).unwrap().to_vec()
}

/// Which message type a decoder is asked for.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Request,
    Reply,
}

/// What a decoder reported for one frame: a message (as its postcard bytes) or an error.
pub type Event = Result<Vec<u8>, FrameError>;

/// Feeds all of `input` to `dec` (in as many `feed` calls as it takes) and appends one event
/// per completed frame.
pub fn feed_all<const N: usize>(
    dec: &mut FrameDecoder<N>,
    side: Side,
    mut input: &[u8],
    out: &mut Vec<Event>,
) {
    loop {
        let (consumed, event) = match side {
            Side::Request => {
                let fed = dec.feed::<Request<'_>>(input);
                (fed.consumed, fed.result.map(|m| m.map(|m| postcard_of(&m))))
            }
            Side::Reply => {
                let fed = dec.feed::<Reply<'_>>(input);
                (fed.consumed, fed.result.map(|m| m.map(|m| postcard_of(&m))))
            }
        };
        assert!(consumed <= input.len(), "consumed more than given");
        match event {
            Ok(None) => assert_eq!(consumed, input.len(), "Ok(None) must consume everything"),
            Ok(Some(m)) => out.push(Ok(m)),
            Err(e) => out.push(Err(e)),
        }
        input = &input[consumed..];
        if input.is_empty() {
            return;
        }
        assert!(consumed > 0, "no progress on non-empty input");
    }
}

/// Feeds `input` to a fresh decoder in chunks whose sizes cycle through `sizes` (each >= 1).
pub fn feed_chunked<const N: usize>(
    dec: &mut FrameDecoder<N>,
    side: Side,
    input: &[u8],
    sizes: &[usize],
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at >= input.len() {
            break;
        }
        let end = (at + size.max(1)).min(input.len());
        feed_all(dec, side, &input[at..end], &mut out);
        at = end;
    }
    out
}

/// Reference CRC-32/ISO-HDLC, bit by bit (reflected poly 0xEDB88320, init and xorout all ones),
/// written independently of the `crc` crate the codec uses.
pub fn ref_crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Reference COBS encoder (canonical: no trailing empty block), written independently of the
/// `cobs` crate and postcard's flavor. No delimiter.
pub fn ref_cobs(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut code_at = 0;
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// A frame built by hand from raw message bytes: `cobs(msg ‖ crc32_le(msg)) ‖ 0x00`.
pub fn raw_frame(msg: &[u8]) -> Vec<u8> {
    let mut payload = msg.to_vec();
    payload.extend_from_slice(&ref_crc32(msg).to_le_bytes());
    let mut f = ref_cobs(&payload);
    f.push(0);
    f
}

/// `frame::decode` of one whole frame as `side`, the message given as its postcard bytes.
pub fn decode_one(side: Side, frame_bytes: &mut [u8]) -> Event {
    match side {
        Side::Request => frame::decode::<Request<'_>>(frame_bytes).map(|m| postcard_of(&m)),
        Side::Reply => frame::decode::<Reply<'_>>(frame_bytes).map(|m| postcard_of(&m)),
    }
}
