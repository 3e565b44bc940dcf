//! The workload of issue 7 as the server benches use it: the records of
//! `ferrysync_core::workload` (`n` companies `{name, city, phone}`, `m` contacts
//! `{name, email, phone}`, contact `j` under company `j % n`), all added by one device in one
//! first push (local ids from 1, parents before children).

#![allow(dead_code)]

use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::FrameEncoder;
use ferrysync_core::pack::Packer;
use ferrysync_core::wire::{Change, End, Hello, Mode, Op, Request, PROTOCOL_VERSION};
use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};
use ferrysync_server::store::OwnedChange;
use ferrysync_server::{LoadedSchema, MAX_FRAME};
use std::time::Duration;

/// The sizes the issue asks for: (companies, contacts); the middle one is the default.
pub const SIZES: [(u32, u32); 3] = [(100, 1_000), (1_000, 10_000), (10_000, 100_000)];

/// The company table of the example schema.
pub const COMPANY: TableId = TableId(0);
/// The contact table of the example schema.
pub const CONTACT: TableId = TableId(1);

/// Fields of company `i` (0-based), from the workspace's generator.
pub fn company(i: u32) -> [String; 3] {
    let c = ferrysync_core::workload::company(i as usize);
    [c.name, c.city, c.phone]
}

/// Fields of contact `j` (0-based) of a workload of `n` companies, from the workspace's
/// generator.
pub fn contact(j: u32, n: u32) -> [String; 3] {
    let c = ferrysync_core::workload::contact(j as usize, n as usize);
    [c.name, c.email, c.phone]
}

/// The company (0-based) of contact `j`.
pub fn company_of(j: u32, n: u32) -> u32 {
    j % n
}

pub fn body(t: TableId, f: &[String; 3]) -> Vec<u8> {
    let schema = LoadedSchema::example().schema();
    let mut buf = [0u8; 1024];
    let values = [Value::Text(&f[0]), Value::Text(&f[1]), Value::Text(&f[2])];
    // Three short texts always fit 1 KiB and match the example schema's tables.
    body::encode(&schema.tables[t.0 as usize], &values, &mut buf)
        .expect("example bodies fit")
        .to_vec()
}

/// The push of `n` companies and `m` contacts by `device`, stamped at `wall_ms`: company `i`
/// has local id `i + 1`, contact `j` local id `j + 1` under local company `j % n + 1`.
pub fn changes(n: u32, m: u32, device: u32, wall_ms: u64) -> Vec<OwnedChange> {
    let at = Hlc::new(wall_ms, 0, device);
    let mut v = Vec::with_capacity((n + m) as usize);
    for i in 0..n {
        v.push(OwnedChange {
            table: COMPANY,
            op: Op::Add,
            key: RecordRef::Local(LocalId(i + 1)),
            parent: None,
            modified_at: at,
            body: body(COMPANY, &company(i)),
        });
    }
    for j in 0..m {
        v.push(OwnedChange {
            table: CONTACT,
            op: Op::Add,
            key: RecordRef::Local(LocalId(j + 1)),
            parent: Some(RecordRef::Local(LocalId(company_of(j, n) + 1))),
            modified_at: at,
            body: body(CONTACT, &contact(j, n)),
        });
    }
    v
}

/// The request stream of `changes` as a device sends it (Hello of a first sync, the changes
/// packed in batch frames, End).
pub fn request(changes: &[OwnedChange]) -> Vec<u8> {
    let mut enc = FrameEncoder::<MAX_FRAME>::new();
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash: LoadedSchema::example().hash(),
        batch_id: 1,
        cursor: None,
        mode: Mode::Delta,
    };
    let mut out = enc
        .encode(&Request::Hello(hello))
        .expect("hello fits")
        .to_vec();
    let mut packer = Packer::<MAX_FRAME>::new();
    for c in changes {
        let change = Change {
            table: c.table,
            op: c.op,
            key: c.key,
            parent: c.parent,
            modified_at: c.modified_at,
            body: &c.body,
        };
        // A full batch goes out first, then the change goes into the next one.
        while let Some(frame) = packer.change(&change).expect("change fits") {
            out.extend_from_slice(frame);
        }
    }
    if let Some(frame) = packer.flush().expect("batch fits") {
        out.extend_from_slice(frame);
    }
    let end = Request::End(End {
        count: changes.len() as u32,
    });
    out.extend_from_slice(enc.encode(&end).expect("end fits"));
    out
}

/// The bare rows of the workload: companies, then contacts with their company's 1-based id.
pub struct BareRows {
    pub companies: Vec<[String; 3]>,
    pub contacts: Vec<([String; 3], i64)>,
}

impl BareRows {
    pub fn new(n: u32, m: u32) -> Self {
        BareRows {
            companies: (0..n).map(company).collect(),
            contacts: (0..m)
                .map(|j| (contact(j, n), i64::from(company_of(j, n)) + 1))
                .collect(),
        }
    }
}

/// Opens a file with the server writer's pragmas (WAL, `synchronous = FULL`, foreign keys,
/// 64 MiB page cache).
pub fn bare_connection(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    let _: String = c
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    // The server's writer connection has this page cache too (store::sqlite).
    c.pragma_update(None, "cache_size", -65536).unwrap();
    c
}

/// Inserts `rows` with rusqlite in one transaction into a fresh file (same pragmas as the
/// server's store; prepared statements, one row per execute); times the transaction only.
pub fn bare_bulk_insert(rows: &BareRows) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut c = bare_connection(&dir.path().join("bulk.db"));
    c.execute_batch(
        "CREATE TABLE company (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
                               phone TEXT NOT NULL);
         CREATE TABLE contact (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
                               phone TEXT NOT NULL,
                               company_id INTEGER NOT NULL REFERENCES company(id));
         CREATE INDEX contact_company ON contact (company_id);",
    )
    .unwrap();
    settle();
    let started = std::time::Instant::now();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare("INSERT INTO company (name, city, phone) VALUES (?1, ?2, ?3)")
            .unwrap();
        for [a, b, d] in &rows.companies {
            ins.execute(rusqlite::params![a, b, d]).unwrap();
        }
        let mut ins = tx
            .prepare("INSERT INTO contact (name, email, phone, company_id) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for ([a, b, d], company) in &rows.contacts {
            ins.execute(rusqlite::params![a, b, d, company]).unwrap();
        }
    }
    tx.commit().unwrap();
    started.elapsed()
}

/// Lets the kernel write back what earlier runs left dirty (`sync`, best effort), so a timed
/// run does not pay for the writes of the one before it in its own `fsync`.
pub fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Median of some durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
