//! Size of a typical change frame against the same record as JSON (serde_json, compact).
//!
//! Run `cargo test -p ferrysync-core --test sizes -- --nocapture` to see the numbers.
//!
//! The JSON side is kept favourable to JSON: compact (no whitespace), `modified_at` as integer
//! milliseconds (the frame carries a whole HLC: ms, counter and device), and no op or table
//! name, which a JSON API would usually add.

use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::{self, DEFAULT_MAX_FRAME};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::{Change, Op, Request};
use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};
use serde::Serialize;

const NOW_MS: u64 = 1_764_139_200_000; // 2025-11-26T06:40:00Z
const DEVICE: u32 = 17;

#[derive(Serialize)]
struct CompanyJson<'a> {
    id: u64,
    parent_id: Option<u64>,
    modified_at: u64,
    is_active: bool,
    name: &'a str,
    city: &'a str,
    phone: &'a str,
}

#[derive(Serialize)]
struct ContactJson<'a> {
    id: u64,
    parent_id: Option<u64>,
    modified_at: u64,
    is_active: bool,
    name: &'a str,
    email: &'a str,
    phone: &'a str,
}

/// Frame of an add of `values` in `table`, and its body length.
fn change_frame(table: u8, key: u32, parent: Option<u32>, values: &[Value<'_>]) -> (usize, usize) {
    let mut body_buf = [0u8; 256];
    let body = body::encode(&EXAMPLE.tables[table as usize], values, &mut body_buf).unwrap();
    let msg = Request::Change(Change {
        table: TableId(table),
        op: Op::Add,
        key: RecordRef::Local(LocalId(key)),
        parent: parent.map(|p| RecordRef::Local(LocalId(p))),
        modified_at: Hlc::new(NOW_MS, 0, DEVICE),
        body,
    });
    let mut buf = [0u8; DEFAULT_MAX_FRAME];
    let f = frame::encode(&msg, &mut buf).unwrap();
    // The frame decodes back, so the size is of a real frame.
    let len = f.len();
    assert_eq!(frame::decode::<Request<'_>>(f).unwrap(), msg);
    (len, body.len())
}

#[test]
fn change_frames_are_smaller_than_json() {
    let (company_frame, company_body) = change_frame(
        0,
        5,
        None,
        &[
            Value::Text("ACME Logistics"),
            Value::Text("Lyon"),
            Value::Text("+33 4 72 00 00 00"),
        ],
    );
    let company_json = serde_json::to_vec(&CompanyJson {
        id: 5,
        parent_id: None,
        modified_at: NOW_MS,
        is_active: true,
        name: "ACME Logistics",
        city: "Lyon",
        phone: "+33 4 72 00 00 00",
    })
    .unwrap();

    let (contact_frame, contact_body) = change_frame(
        1,
        6,
        Some(5),
        &[
            Value::Text("Jeanne Martin"),
            Value::Text("jeanne.martin@acme.example"),
            Value::Text("+33 6 12 34 56 78"),
        ],
    );
    let contact_json = serde_json::to_vec(&ContactJson {
        id: 6,
        parent_id: Some(5),
        modified_at: NOW_MS,
        is_active: true,
        name: "Jeanne Martin",
        email: "jeanne.martin@acme.example",
        phone: "+33 6 12 34 56 78",
    })
    .unwrap();

    println!(
        "company change: frame {company_frame} bytes (body {company_body}), JSON {} bytes: {}",
        company_json.len(),
        String::from_utf8_lossy(&company_json)
    );
    println!(
        "contact change: frame {contact_frame} bytes (body {contact_body}), JSON {} bytes: {}",
        contact_json.len(),
        String::from_utf8_lossy(&contact_json)
    );
    assert!(company_frame < company_json.len());
    assert!(contact_frame < contact_json.len());
    // Each frame is a small fraction of the default maximum frame size.
    assert!(company_frame < DEFAULT_MAX_FRAME / 8 && contact_frame < DEFAULT_MAX_FRAME / 8);
}

/// The largest `Change` header (every id, clock part and the body length at its longest) leaves
/// room for a 960-byte body in a default frame, whatever the body bytes (docs/wire-format.md).
#[test]
fn worst_case_change_with_960_byte_body_fits() {
    use ferrysync_core::frame::FrameEncoder;
    use ferrysync_core::ServerId;
    for fill in [0x00u8, 0x01, 0xFF] {
        let body = [fill; 960];
        let msg = Request::Change(Change {
            table: TableId(u8::MAX),
            op: Op::Delete,
            key: RecordRef::Server(ServerId(u64::MAX)),
            parent: Some(RecordRef::Server(ServerId(u64::MAX))),
            modified_at: Hlc::new(u64::MAX, u32::MAX, u32::MAX),
            body: &body,
        });
        let mut enc = FrameEncoder::<DEFAULT_MAX_FRAME>::new();
        let len = enc.encode(&msg).unwrap().len();
        assert!(len <= DEFAULT_MAX_FRAME);
        let mut pc = [0u8; 2 * DEFAULT_MAX_FRAME];
        assert_eq!(postcard::to_slice(&msg, &mut pc).unwrap().len(), 48 + 960);
    }
}

/// A first push of 1,000 companies and 10,000 contacts (contact j in company j % 1,000, edits
/// spread over a working day) packed in batches: ids, clocks and framing cost at most 25 % on
/// top of the bare postcard bodies.
#[test]
fn batched_push_costs_at_most_a_quarter_over_the_bodies() {
    use ferrysync_core::pack::Packer;
    let (n, m) = (1_000u32, 10_000u32);
    let mut pack = Box::new(Packer::<DEFAULT_MAX_FRAME>::new());
    let (mut wire, mut bodies, mut frames) = (0usize, 0usize, 0usize);
    let mut body_buf = [0u8; 256];
    let mut send = |table: u8, key: u32, parent: Option<u32>, at: u64, values: &[Value<'_>]| {
        let body = body::encode(&EXAMPLE.tables[table as usize], values, &mut body_buf).unwrap();
        bodies += body.len();
        let c = Change {
            table: TableId(table),
            op: Op::Add,
            key: RecordRef::Local(LocalId(key)),
            parent: parent.map(|p| RecordRef::Local(LocalId(p))),
            modified_at: Hlc::new(at, 0, 0),
            body,
        };
        while let Some(f) = pack.change(&c).unwrap() {
            wire += f.len();
            frames += 1;
        }
    };
    // Edit times: one record every ~2.9 s over eight hours, in id order.
    let at = |i: u32| NOW_MS + u64::from(i) * 2_903;
    for i in 0..n {
        let (name, phone) = (format!("Company {i}"), format!("+33 1 {i:08}"));
        let city = ["Lyon", "Paris", "Marseille", "Lille"][i as usize % 4];
        send(
            0,
            i + 1,
            None,
            at(i),
            &[Value::Text(&name), Value::Text(city), Value::Text(&phone)],
        );
    }
    for j in 0..m {
        let name = format!("Contact {j}");
        let email = format!("contact{j}@company{}.example", j % n);
        let phone = format!("+33 6 {j:08}");
        send(
            1,
            n + j + 1,
            Some(j % n + 1),
            at(n + j),
            &[Value::Text(&name), Value::Text(&email), Value::Text(&phone)],
        );
    }
    if let Some(f) = pack.flush().unwrap() {
        wire += f.len();
        frames += 1;
    }
    let records = (n + m) as f64;
    let ratio = wire as f64 / bodies as f64;
    println!(
        "batched push of {} records: {wire} B on the wire in {frames} frames ({:.1} B/record), \
         bodies {bodies} B ({:.1} B/record): {ratio:.3}x",
        n + m,
        wire as f64 / records,
        bodies as f64 / records
    );
    assert!(ratio <= 1.25, "batched overhead {ratio:.3}x > 1.25x");
}
