//! Committed test vectors of protocol v3: the exact bytes of a few frames. A failure here means
//! the wire format changed; that must be a deliberate change with a new `PROTOCOL_VERSION`
//! (see `docs/wire-format.md`, "How versions evolve").
//!
//! Each vector pins the postcard message bytes (annotated field by field) and the whole frame
//! (`cobs(message ‖ crc32_le(message)) ‖ 00`), and is checked both ways: encode(msg) == bytes
//! and decode(bytes) == msg. The bytes were computed once with the code and checked by hand
//! against the layout in the doc (and the CRCs against zlib's `crc32`).

mod common;

use common::*;
use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::{self, FrameDecoder, CRC32};
use ferrysync_core::schema::{FieldDef, FieldType, TableDef, EXAMPLE};
use ferrysync_core::wire::{
    Accepted, Change, Done, End, Hello, Mapping, Mode, Op, Reply, Request, Upsert, PROTOCOL_VERSION,
};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};

/// Bytes from a hex string with optional whitespace.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex length");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// `schema::EXAMPLE.hash()`, carried by the Hello vector.
const EXAMPLE_HASH: u64 = 0x258f_90dc_a644_b210;

/// Body of company `("ACME", "Lyon", "+33 1")`: three texts, each varint length + UTF-8.
const COMPANY_BODY: &str = "04 41434d45  04 4c796f6e  05 2b33332031";
/// Body of contact `("Jeanne", "j@a.fr", "+33 6")`.
const CONTACT_BODY: &str = "06 4a65616e6e65  06 6a40612e6672  05 2b33332036";

fn company_body() -> Vec<u8> {
    hex(COMPANY_BODY)
}

fn contact_body() -> Vec<u8> {
    hex(CONTACT_BODY)
}

/// Checks a vector: the message bytes, the CRC, the frame, and decoding back, both with
/// `frame::decode` and the streaming decoder.
fn check<M>(msg: &M, side: Side, message_hex: &str, crc: u32, frame_hex: &str)
where
    M: serde::Serialize,
{
    let message = hex(message_hex);
    let frame_bytes = hex(frame_hex);
    assert_eq!(postcard_of(msg), message, "message bytes");
    assert_eq!(CRC32.checksum(&message), crc, "crc (crc crate)");
    assert_eq!(ref_crc32(&message), crc, "crc (reference)");
    assert_eq!(frame_of(msg), frame_bytes, "encode(msg) == frame");
    assert_eq!(raw_frame(&message), frame_bytes, "reference framer");
    assert_eq!(
        decode_one(side, &mut frame_bytes.clone()),
        Ok(message.clone())
    );
    let mut dec = FrameDecoder::<64>::new();
    let mut events = Vec::new();
    feed_all(&mut dec, side, &frame_bytes, &mut events);
    assert_eq!(events, vec![Ok(message)]);
}

#[test]
fn reference_checks() {
    // The CRC-32/ISO-HDLC check value.
    assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    assert_eq!(ref_crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(EXAMPLE.hash(), EXAMPLE_HASH);
    assert_eq!(PROTOCOL_VERSION, 3);
    let mut buf = [0u8; 64];
    let company = [
        Value::Text("ACME"),
        Value::Text("Lyon"),
        Value::Text("+33 1"),
    ];
    assert_eq!(
        body::encode(&EXAMPLE.tables[0], &company, &mut buf).unwrap(),
        &company_body()[..]
    );
    let contact = [
        Value::Text("Jeanne"),
        Value::Text("j@a.fr"),
        Value::Text("+33 6"),
    ];
    assert_eq!(
        body::encode(&EXAMPLE.tables[1], &contact, &mut buf).unwrap(),
        &contact_body()[..]
    );
}

#[test]
fn hello() {
    let msg = Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash: EXAMPLE_HASH,
        batch_id: 7,
        cursor: Some(300),
        mode: Mode::Delta,
    });
    check(
        &msg,
        Side::Request,
        // Request::Hello | protocol 3 | schema_hash 0x258f90dca644b210 | batch_id 7 |
        // cursor Some(300) | mode Delta
        "00 03 90 e4 92 b2 ca 9b e4 c7 25 07 01 ac 02 00",
        0x67f0_9ddf,
        "01 0f 03 90 e4 92 b2 ca 9b e4 c7 25 07 01 ac 02 05 df 9d f0 67 00",
    );
}

#[test]
fn change_company_add() {
    let body = company_body();
    let msg = Request::Change(Change {
        table: TableId(0),
        op: Op::Add,
        key: RecordRef::Local(LocalId(5)),
        parent: None,
        modified_at: Hlc::new(1_764_139_200_000, 0, 17),
        body: &body,
    });
    check(
        &msg,
        Side::Request,
        // Request::Change | table 0 | Add | Local | 5 | parent None |
        // wall_ms 1764139200000 | counter 0 | device 17 | body: 16 bytes
        "01 00 00 00 05 00 80 dc 8f f7 ab 33 00 11 10 \
         04 41 43 4d 45 04 4c 79 6f 6e 05 2b 33 33 20 31",
        0x3a8e_8041,
        "02 01 01 01 02 05 07 80 dc 8f f7 ab 33 17 11 10 04 41 43 4d 45 04 4c 79 6f 6e \
         05 2b 33 33 20 31 41 80 8e 3a 00",
    );
}

#[test]
fn change_contact_add_with_local_parent() {
    let body = contact_body();
    let msg = Request::Change(Change {
        table: TableId(1),
        op: Op::Add,
        key: RecordRef::Local(LocalId(1)),
        parent: Some(RecordRef::Local(LocalId(5))),
        modified_at: Hlc::new(1_764_139_200_001, 0, 17),
        body: &body,
    });
    check(
        &msg,
        Side::Request,
        // Request::Change | table 1 | Add | Local | 1 | parent Some | Local | 5 |
        // wall_ms 1764139200001 | counter 0 | device 17 | body: 20 bytes
        "01 01 00 00 01 01 00 05 81 dc 8f f7 ab 33 00 11 14 \
         06 4a 65 61 6e 6e 65 06 6a 40 61 2e 66 72 05 2b 33 33 20 36",
        0xe5a0_e58b,
        "03 01 01 01 03 01 01 08 05 81 dc 8f f7 ab 33 1b 11 14 06 4a 65 61 6e 6e 65 06 \
         6a 40 61 2e 66 72 05 2b 33 33 20 36 8b e5 a0 e5 00",
    );
}

#[test]
fn end() {
    check(
        &Request::End(End { count: 2 }),
        Side::Request,
        "02 02", // Request::End | count 2
        0x9de1_1151,
        "07 02 02 51 11 e1 9d 00",
    );
}

#[test]
fn accepted() {
    check(
        &Reply::Accepted(Accepted {
            batch_id: 7,
            server_time: 1_764_139_260_000,
        }),
        Side::Reply,
        "00 07 e0 b0 93 f7 ab 33", // Reply::Accepted | batch_id 7 | server_time
        0x4b5b_dd5a,
        "01 0c 07 e0 b0 93 f7 ab 33 5a dd 5b 4b 00",
    );
}

#[test]
fn mapping() {
    check(
        &Reply::Mapping(Mapping {
            table: TableId(0),
            local: LocalId(5),
            server: ServerId(135),
        }),
        Side::Reply,
        "01 00 05 87 01", // Reply::Mapping | table 0 | local 5 | server 135
        0xfe4c_225c,
        "02 01 08 05 87 01 5c 22 4c fe 00",
    );
}

#[test]
fn mappings_batch() {
    // Two mappings packed by the packer: items are zigzag deltas from 0, then from the first.
    let mut p = ferrysync_core::pack::Packer::<64>::new();
    for (l, sv) in [(5, 135), (6, 136)] {
        let m = Mapping {
            table: TableId(0),
            local: LocalId(l),
            server: ServerId(sv),
        };
        assert!(p.mapping(&m).unwrap().is_none());
    }
    let packed = p.flush().unwrap().unwrap().to_vec();
    let items = hex("0a 8e 02  02 02");
    let msg = Reply::Mappings(ferrysync_core::wire::MappingBatch {
        table: TableId(0),
        items: &items,
    });
    check(
        &msg,
        Side::Reply,
        // Reply::Mappings | table 0 | items: 5 bytes | local +5 (zigzag 10), server +135
        // (zigzag 270) | local +1, server +1
        "07 00 05 0a 8e 02 02 02",
        0xa7a0_49aa,
        "02 07 0b 05 0a 8e 02 02 02 aa 49 a0 a7 00",
    );
    assert_eq!(packed, hex("02 07 0b 05 0a 8e 02 02 02 aa 49 a0 a7 00"));
    let expanded: Vec<_> = msg.items().map(Result::unwrap).collect();
    assert_eq!(
        expanded,
        vec![
            Reply::Mapping(Mapping {
                table: TableId(0),
                local: LocalId(5),
                server: ServerId(135)
            }),
            Reply::Mapping(Mapping {
                table: TableId(0),
                local: LocalId(6),
                server: ServerId(136)
            }),
        ]
    );
}

#[test]
fn upsert() {
    let body = contact_body();
    let msg = Reply::Upsert(Upsert {
        table: TableId(1),
        id: ServerId(136),
        parent: Some(ServerId(135)),
        modified_at: Hlc::new(1_764_139_200_001, 0, 17),
        body: &body,
    });
    check(
        &msg,
        Side::Reply,
        // Reply::Upsert | table 1 | id 136 | parent Some(135) |
        // wall_ms 1764139200001 | counter 0 | device 17 | body: 20 bytes
        "04 01 88 01 01 87 01 81 dc 8f f7 ab 33 00 11 14 \
         06 4a 65 61 6e 6e 65 06 6a 40 61 2e 66 72 05 2b 33 33 20 36",
        0x872f_87d4,
        "0e 04 01 88 01 01 87 01 81 dc 8f f7 ab 33 1b 11 14 06 4a 65 61 6e 6e 65 06 6a \
         40 61 2e 66 72 05 2b 33 33 20 36 d4 87 2f 87 00",
    );
}

#[test]
fn upserts_batch() {
    // Two company upserts packed by the packer: the id, wall and counter are zigzag deltas
    // from 0, then from the first item (protocol 3: the counter too).
    let body = company_body();
    let upserts = [(135, 5), (136, 6)].map(|(id, counter)| Upsert {
        table: TableId(0),
        id: ServerId(id),
        parent: None,
        modified_at: Hlc::new(1_764_139_200_000, counter, 17),
        body: &body,
    });
    let mut p = ferrysync_core::pack::Packer::<64>::new();
    for u in &upserts {
        assert!(p.upsert(u).unwrap().is_none());
    }
    let packed = p.flush().unwrap().unwrap().to_vec();
    let items = hex(
        "8e 02 00 80 b8 9f ee d7 66 0a 11 10 04 41 43 4d 45 04 4c 79 6f 6e 05 2b 33 33 20 31 \
         02 00 00 02 11 10 04 41 43 4d 45 04 4c 79 6f 6e 05 2b 33 33 20 31",
    );
    let msg = Reply::Upserts(ferrysync_core::wire::UpsertBatch {
        table: TableId(0),
        items: &items,
    });
    // Reply::Upserts | table 0 | items: 50 bytes |
    //   id +135 | parent None | wall +1764139200000 | counter +5 | device 17 | body: 16 bytes |
    //   id +1   | parent None | wall +0             | counter +1 | device 17 | body: 16 bytes
    let frame = "02 08 04 32 8e 02 1b 80 b8 9f ee d7 66 0a 11 10 04 41 43 4d 45 04 4c 79 6f 6e \
                 05 2b 33 33 20 31 02 01 18 02 11 10 04 41 43 4d 45 04 4c 79 6f 6e 05 2b 33 33 \
                 20 31 a2 da 1e 2e 00";
    check(
        &msg,
        Side::Reply,
        &format!(
            "08 00 32 {}",
            items
                .iter()
                .map(|b| format!("{b:02x} "))
                .collect::<String>()
        ),
        0x2e1e_daa2,
        frame,
    );
    assert_eq!(packed, hex(frame));
    let expanded: Vec<_> = msg.items().map(Result::unwrap).collect();
    assert_eq!(expanded, upserts.map(Reply::Upsert).to_vec());
}

/// A counter delta that takes the counter past 32 bits makes the item malformed.
#[test]
fn upsert_counter_past_32_bits() {
    use ferrysync_core::frame::MessageError;
    fn batch(items: &[u8]) -> Vec<Result<Reply<'_>, MessageError>> {
        let msg = Reply::Upserts(ferrysync_core::wire::UpsertBatch {
            table: TableId(0),
            items,
        });
        msg.items().collect()
    }
    // id +1 | parent None | wall +0 | counter +(2^32 - 1) | device 0 | empty body: the largest.
    let max_items = hex("02 00 00 fe ff ff ff 1f 00 00");
    let max = batch(&max_items);
    assert!(
        matches!(&max[..], [Ok(Reply::Upsert(u))] if u.modified_at.counter == u32::MAX),
        "{max:?}"
    );
    // counter +2^32
    let over_items = hex("02 00 00 80 80 80 80 20 00 00");
    let over = batch(&over_items);
    assert_eq!(over, vec![Err(MessageError::BadVarint)]);
}

#[test]
fn reset() {
    check(
        &Reply::Reset,
        Side::Reply,
        "03",
        0x4b0b_be37,
        "06 03 37 be 0b 4b 00",
    );
}

#[test]
fn done() {
    check(
        &Reply::Done(Done {
            cursor: 1000,
            count: 3,
        }),
        Side::Reply,
        "06 e8 07 03", // Reply::Done | cursor 1000 | count 3
        0x7596_c6a5,
        "09 06 e8 07 03 a5 c6 96 75 00",
    );
}

/// The decoded vectors equal the typed messages, field for field (not only byte for byte).
#[test]
fn vectors_decode_to_typed_messages() {
    let mut f = hex("01 0f 01 90 e4 92 b2 ca 9b e4 c7 25 07 01 ac 02 05 4e 2c 76 cf 00");
    assert_eq!(
        frame::decode::<Request<'_>>(&mut f),
        Ok(Request::Hello(Hello {
            protocol: 1,
            schema_hash: EXAMPLE_HASH,
            batch_id: 7,
            cursor: Some(300),
            mode: Mode::Delta,
        }))
    );
    let mut f = hex(
        "03 01 01 01 03 01 01 08 05 81 dc 8f f7 ab 33 1b 11 14 06 4a 65 61 6e 6e 65 06 \
         6a 40 61 2e 66 72 05 2b 33 33 20 36 8b e5 a0 e5 00",
    );
    let body = contact_body();
    assert_eq!(
        frame::decode::<Request<'_>>(&mut f),
        Ok(Request::Change(Change {
            table: TableId(1),
            op: Op::Add,
            key: RecordRef::Local(LocalId(1)),
            parent: Some(RecordRef::Local(LocalId(5))),
            modified_at: Hlc::new(1_764_139_200_001, 0, 17),
            body: &body,
        }))
    );
    let mut f = hex("09 06 e8 07 03 a5 c6 96 75 00");
    assert_eq!(
        frame::decode::<Reply<'_>>(&mut f),
        Ok(Reply::Done(Done {
            cursor: 1000,
            count: 3
        }))
    );
}

/// Reference CRC-64/XZ, bit by bit (reflected poly 0xC96C5795D7870F42, init and xorout all ones).
fn ref_crc64_xz(data: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xC96C_5795_D787_0F42
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The schema hash input exactly as `docs/wire-format.md` defines it, built by hand.
fn ref_schema_hash(schema: &ferrysync_core::Schema<'_>) -> u64 {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                out.push(1);
                text(out, s);
            }
            None => out.push(0),
        }
    }
    let mut d = b"ferrysync-schema-v1".to_vec();
    d.extend((schema.tables.len() as u32).to_le_bytes());
    for t in schema.tables {
        text(&mut d, t.name);
        match t.parent {
            Some(p) => d.extend([1, p.0]),
            None => d.push(0),
        }
        opt_text(&mut d, t.parent_field);
        opt_text(&mut d, t.scope_field);
        d.extend((t.fields.len() as u32).to_le_bytes());
        for f in t.fields {
            text(&mut d, f.name);
            let code = match f.ty {
                FieldType::Bool => 1,
                FieldType::I64 => 2,
                FieldType::U64 => 3,
                FieldType::F64 => 4,
                FieldType::Text => 5,
                FieldType::Bytes => 6,
            };
            d.extend([code, u8::from(f.optional)]);
        }
    }
    ref_crc64_xz(&d)
}

/// `Schema::hash` is the documented CRC-64/XZ over the documented input, for the example
/// schema and for a three-level schema using every field type, optional fields and a scope.
#[test]
fn schema_hash_definition() {
    assert_eq!(ref_crc64_xz(b"123456789"), 0x995D_C9BB_DF19_39FA);
    assert_eq!(ref_schema_hash(&EXAMPLE), EXAMPLE_HASH);

    let f = |name, ty, optional| FieldDef { name, ty, optional };
    let site = [
        f("region", FieldType::Text, false),
        f("open", FieldType::Bool, false),
        f("lat", FieldType::F64, true),
    ];
    let shelf = [
        f("rows", FieldType::U64, false),
        f("photo", FieldType::Bytes, true),
    ];
    let item = [
        f("qty", FieldType::I64, false),
        f("note", FieldType::Text, true),
    ];
    let tables = [
        TableDef {
            name: "site",
            parent: None,
            parent_field: None,
            scope_field: Some("region"),
            fields: &site,
        },
        TableDef {
            name: "shelf",
            parent: Some(TableId(0)),
            parent_field: Some("site_id"),
            scope_field: None,
            fields: &shelf,
        },
        TableDef {
            name: "item",
            parent: Some(TableId(1)),
            parent_field: Some("shelf_id"),
            scope_field: None,
            fields: &item,
        },
    ];
    let schema = ferrysync_core::Schema::try_new(&tables).unwrap();
    assert_eq!(schema.hash(), ref_schema_hash(&schema));
    assert_ne!(schema.hash(), EXAMPLE_HASH);
}
