//! Round-trip properties of the wire protocol: every message survives encode → decode, through
//! `frame::decode` and through the streaming `FrameDecoder` in any chunking, and record bodies
//! survive `body::encode` → `body::decode` against any schema.

mod common;

use common::*;
use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::{self, FrameDecoder, FrameEncoder, DEFAULT_MAX_FRAME};
use ferrysync_core::schema::{FieldDef, FieldType, Schema, TableDef};
use ferrysync_core::wire::{Reply, Request};
use proptest::prelude::*;

/// Checks one frame: its shape, that it is what the reference framer builds, and that both
/// decoders give `msg` back.
fn check_frame<M: serde::Serialize>(msg: &M, side: Side) {
    let f = frame_of(msg);
    // Shape: one delimiter, at the end, and within the maximum frame size.
    assert!(f.len() <= DEFAULT_MAX_FRAME);
    assert_eq!(f.iter().position(|&b| b == 0), Some(f.len() - 1));
    // Same bytes as the independent reference framer (postcard ‖ CRC-32 LE, COBS, 0x00).
    let pc = postcard_of(msg);
    assert_eq!(
        f,
        raw_frame(&pc),
        "crate framer and reference framer disagree"
    );
    // The owning encoder gives the same bytes.
    let mut enc = FrameEncoder::<DEFAULT_MAX_FRAME>::new();
    assert_eq!(enc.encode(msg).unwrap(), &f[..]);

    // Whole-frame decode, with and without the delimiter.
    assert_eq!(decode_one(side, &mut f.clone()), Ok(pc.clone()));
    assert_eq!(
        decode_one(side, &mut f[..f.len() - 1].to_vec()),
        Ok(pc.clone())
    );

    // Streaming decode, all at once: one message, all bytes consumed, at a boundary after.
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, side, &f, &mut events);
    assert_eq!(events, vec![Ok(pc.clone())]);
    assert!(!dec.is_mid_frame());
    assert_eq!(dec.frames(), 1);

    // Streaming decode, one byte at a time.
    let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
    let events = feed_chunked(&mut dec, side, &f, &[1]);
    assert_eq!(events, vec![Ok(pc)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every request message round-trips through both decoders.
    #[test]
    fn request_round_trips(msg in request()) {
        check_frame(&msg, Side::Request);
        // And the decoded value equals the original, field for field.
        let mut f = frame_of(&msg);
        prop_assert_eq!(frame::decode::<Request<'_>>(&mut f).unwrap(), msg);
    }

    /// Every reply message round-trips through both decoders.
    #[test]
    fn reply_round_trips(msg in reply()) {
        check_frame(&msg, Side::Reply);
        let mut f = frame_of(&msg);
        prop_assert_eq!(frame::decode::<Reply<'_>>(&mut f).unwrap(), msg);
    }
}

/// A stream of frames with chunk sizes in 1..=len (half the time small ones, 1..=4).
fn chunked_stream<M: serde::Serialize + core::fmt::Debug + Clone + 'static>(
    msgs: impl Strategy<Value = Vec<M>>,
) -> impl Strategy<Value = (Vec<M>, Vec<u8>, Vec<usize>)> {
    msgs.prop_flat_map(|msgs| {
        let bytes = stream_of(&msgs);
        let len = bytes.len().max(1);
        let sizes = proptest::collection::vec(prop_oneof![1..=4usize, 1..=len], 1..=64);
        (Just(msgs), Just(bytes), sizes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A request stream decoded in random chunks yields the same messages as fed whole, and
    /// those are the messages that were sent.
    #[test]
    fn request_stream_any_chunking(
        (msgs, bytes, sizes) in chunked_stream(proptest::collection::vec(request(), 1..=24))
    ) {
        let want: Vec<Event> = msgs.iter().map(|m| Ok(postcard_of(m))).collect();
        let mut whole_dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let mut whole = Vec::new();
        feed_all(&mut whole_dec, Side::Request, &bytes, &mut whole);
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let chunked = feed_chunked(&mut dec, Side::Request, &bytes, &sizes);
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&chunked, &whole);
        prop_assert!(!dec.is_mid_frame());
        prop_assert_eq!(dec.frames() as usize, msgs.len());
    }

    /// The same for reply streams.
    #[test]
    fn reply_stream_any_chunking(
        (msgs, bytes, sizes) in chunked_stream(proptest::collection::vec(reply(), 1..=24))
    ) {
        let want: Vec<Event> = msgs.iter().map(|m| Ok(postcard_of(m))).collect();
        let mut whole_dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let mut whole = Vec::new();
        feed_all(&mut whole_dec, Side::Reply, &bytes, &mut whole);
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let chunked = feed_chunked(&mut dec, Side::Reply, &bytes, &sizes);
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&chunked, &whole);
        prop_assert!(!dec.is_mid_frame());
    }
}

/// Bare delimiters between frames are empty frames: skipped, not counted, not errors.
#[test]
fn empty_frames_are_padding() {
    let msgs = [
        Reply::Reset,
        Reply::Done(ferrysync_core::wire::Done {
            cursor: 9,
            count: 1,
        }),
    ];
    let mut bytes = vec![0, 0, 0];
    bytes.extend(frame_of(&msgs[0]));
    bytes.extend([0, 0]);
    bytes.extend(frame_of(&msgs[1]));
    bytes.push(0);
    for sizes in [&[1usize][..], &[3], &[bytes.len()]] {
        let mut dec = FrameDecoder::<DEFAULT_MAX_FRAME>::new();
        let events = feed_chunked(&mut dec, Side::Reply, &bytes, sizes);
        let want: Vec<Event> = msgs.iter().map(|m| Ok(postcard_of(m))).collect();
        assert_eq!(events, want);
        assert_eq!(dec.frames(), 2);
        assert!(!dec.is_mid_frame());
    }
}

// ---- bodies ----------------------------------------------------------------------------------

/// An owned field value, so strategies can generate it; `Value` borrows.
#[derive(Clone, Debug)]
enum Owned {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Owned {
    fn value(&self) -> Value<'_> {
        match self {
            Owned::Null => Value::Null,
            Owned::Bool(v) => Value::Bool(*v),
            Owned::I64(v) => Value::I64(*v),
            Owned::U64(v) => Value::U64(*v),
            Owned::F64(v) => Value::F64(*v),
            Owned::Text(v) => Value::Text(v),
            Owned::Bytes(v) => Value::Bytes(v),
        }
    }
}

/// Equality that compares floats by bits (NaN round-trips too).
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

const NAMES: [&str; 10] = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"];

fn field_type() -> impl Strategy<Value = FieldType> {
    prop_oneof![
        Just(FieldType::Bool),
        Just(FieldType::I64),
        Just(FieldType::U64),
        Just(FieldType::F64),
        Just(FieldType::Text),
        Just(FieldType::Bytes),
    ]
}

fn value_of(ty: FieldType, optional: bool) -> BoxedStrategy<Owned> {
    let v = match ty {
        FieldType::Bool => any::<bool>().prop_map(Owned::Bool).boxed(),
        FieldType::I64 => any::<i64>().prop_map(Owned::I64).boxed(),
        FieldType::U64 => any::<u64>().prop_map(Owned::U64).boxed(),
        FieldType::F64 => any::<f64>().prop_map(Owned::F64).boxed(),
        FieldType::Text => ".{0,40}".prop_map(Owned::Text).boxed(),
        FieldType::Bytes => proptest::collection::vec(any::<u8>(), 0..=40)
            .prop_map(Owned::Bytes)
            .boxed(),
    };
    if optional {
        prop_oneof![1 => Just(Owned::Null), 3 => v].boxed()
    } else {
        v
    }
}

/// A table of 1..=10 random fields (a schema refuses a table without any) and one value per
/// field.
fn table_and_values() -> impl Strategy<Value = (Vec<(FieldType, bool)>, Vec<Owned>)> {
    proptest::collection::vec((field_type(), any::<bool>()), 1..=NAMES.len()).prop_flat_map(
        |fields| {
            let values: Vec<_> = fields.iter().map(|&(t, o)| value_of(t, o)).collect();
            (Just(fields), values)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `body::encode` then `body::decode` gives back every value, in order, against a random
    /// table; `body::validate` accepts the body and `body::field` finds each value; and the body
    /// travels unchanged inside a `Change` frame.
    #[test]
    fn body_round_trips((shape, owned) in table_and_values()) {
        let fields: Vec<FieldDef<'static>> = shape
            .iter()
            .zip(NAMES)
            .map(|(&(ty, optional), name)| FieldDef { name, ty, optional })
            .collect();
        let tables = [TableDef {
            name: "t",
            parent: None,
            parent_field: None,
            scope_field: None,
            fields: &fields,
        }];
        let schema = Schema::try_new(&tables).unwrap();
        let table = &schema.tables[0];
        let values: Vec<Value<'_>> = owned.iter().map(Owned::value).collect();

        let mut buf = [0u8; 1024];
        let encoded = body::encode(table, &values, &mut buf).unwrap().to_vec();

        let mut got = Vec::new();
        body::decode(table, &encoded, |i, f, v| {
            assert_eq!(i, got.len());
            assert_eq!(f, &fields[i]);
            got.push(v);
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        prop_assert_eq!(got.len(), values.len());
        for (g, v) in got.iter().zip(&values) {
            prop_assert!(same(g, v), "{:?} != {:?}", g, v);
        }
        prop_assert_eq!(body::validate(table, &encoded), Ok(()));
        for (i, v) in values.iter().enumerate() {
            let f = body::field(table, &encoded, i).unwrap();
            prop_assert!(same(&f, v));
        }

        // Inside a frame, the body comes back byte for byte.
        let change = Request::Change(ferrysync_core::wire::Change {
            table: ferrysync_core::TableId(0),
            op: ferrysync_core::wire::Op::Add,
            key: ferrysync_core::RecordRef::Local(ferrysync_core::LocalId(1)),
            parent: None,
            modified_at: ferrysync_core::Hlc::new(1, 0, 1),
            body: &encoded,
        });
        let mut f = frame_of(&change);
        match frame::decode::<Request<'_>>(&mut f).unwrap() {
            Request::Change(c) => prop_assert_eq!(c.body, &encoded[..]),
            other => prop_assert!(false, "decoded {:?}", other),
        }
    }
}

/// COBS splits zero-free runs into 254-byte blocks; walk every body length so the payload ends
/// on, just before and just after a block boundary, and check both framers and both decoders.
#[test]
fn cobs_block_boundaries() {
    let body = vec![0xAAu8; MAX_BODY];
    let mut zero_free_boundary_hits = 0;
    for len in 0..=MAX_BODY {
        // A header with no zero byte, so the whole payload can be one zero-free run.
        let msg = Request::Change(ferrysync_core::wire::Change {
            table: ferrysync_core::TableId(1),
            op: ferrysync_core::wire::Op::Update,
            key: ferrysync_core::RecordRef::Server(ferrysync_core::ServerId(5)),
            parent: Some(ferrysync_core::RecordRef::Server(ferrysync_core::ServerId(
                7,
            ))),
            modified_at: ferrysync_core::Hlc::new(5, 1, 1),
            body: &body[..len],
        });
        let pc = postcard_of(&msg);
        let mut payload = pc.clone();
        payload.extend(ref_crc32(&pc).to_le_bytes());
        if !payload.contains(&0) && payload.len() % 254 == 0 {
            zero_free_boundary_hits += 1;
        }
        check_frame(&msg, Side::Request);
    }
    assert!(
        zero_free_boundary_hits > 0,
        "no length hit a block boundary"
    );
}
