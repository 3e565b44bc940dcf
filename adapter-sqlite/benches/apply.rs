//! Device apply of a full refresh on the phone: 1,000 companies + 10,000 contacts (contact j
//! under company j % 1,000) applied by the sync engine to a `SqliteStore` on a file, beside a
//! bare rusqlite bulk insert of the same rows into the same kind of tables, in one run.
//!
//! `cargo bench -p ferrysync-sqlite --bench apply` (`FERRYSYNC_BENCH_SCALE=10` for 10,000 +
//! 100,000).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, Outgoing};
use ferrysync_core::frame::FrameEncoder;
use ferrysync_core::id::{ServerId, TableId};
use ferrysync_core::mem::ScriptLink;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::{Accepted, Done, Reply, Upsert};
use ferrysync_core::Hlc;
use ferrysync_sqlite::{rusqlite, SqliteStore};
use std::time::{Duration, Instant};

const N: usize = 1024;

fn scale() -> usize {
    std::env::var("FERRYSYNC_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

struct Rows {
    companies: Vec<(String, String, String)>,
    contacts: Vec<(usize, String, String, String)>,
}

fn rows() -> Rows {
    let n = 1_000 * scale();
    let m = 10_000 * scale();
    Rows {
        companies: (0..n)
            .map(|i| {
                (
                    format!("Company {i}"),
                    format!("City {}", i % 97),
                    format!("+33 4 72 {i:06}"),
                )
            })
            .collect(),
        contacts: (0..m)
            .map(|j| {
                (
                    j % n,
                    format!("Contact {j}"),
                    format!("contact{j}@example.com"),
                    format!("+33 6 {j:08}"),
                )
            })
            .collect(),
    }
}

/// The server's full-refresh reply for `rows`, as bytes.
fn reply(rows: &Rows) -> Vec<u8> {
    let mut enc = FrameEncoder::<N>::new();
    let mut out = Vec::new();
    let mut put = |m: &Reply<'_>| out.extend_from_slice(enc.encode(m).unwrap());
    put(&Reply::Accepted(Accepted {
        batch_id: 1,
        server_time: 1,
    }));
    put(&Reply::Reset);
    let at = Hlc::new(1, 0, 0);
    let mut buf = [0u8; 256];
    for (i, (a, b, c)) in rows.companies.iter().enumerate() {
        let body = body::encode(
            &EXAMPLE.tables[0],
            &[Value::Text(a), Value::Text(b), Value::Text(c)],
            &mut buf,
        )
        .unwrap();
        put(&Reply::Upsert(Upsert {
            table: TableId(0),
            id: ServerId(i as u64 + 1),
            parent: None,
            modified_at: at,
            body,
        }));
    }
    for (j, (p, a, b, c)) in rows.contacts.iter().enumerate() {
        let body = body::encode(
            &EXAMPLE.tables[1],
            &[Value::Text(a), Value::Text(b), Value::Text(c)],
            &mut buf,
        )
        .unwrap();
        put(&Reply::Upsert(Upsert {
            table: TableId(1),
            id: ServerId(j as u64 + 1),
            parent: Some(ServerId(*p as u64 + 1)),
            modified_at: at,
            body,
        }));
    }
    let count = (1 + rows.companies.len() + rows.contacts.len()) as u32;
    put(&Reply::Done(Done {
        cursor: count as u64,
        count,
    }));
    out
}

fn apply_engine(dir: &std::path::Path, bytes: &[u8]) -> Duration {
    let mut store = SqliteStore::open(dir.join("phone.db"), EXAMPLE).unwrap();
    let out = Outgoing {
        batch_id: 1,
        sent: 0,
        changes: 0,
        full: true,
    };
    let mut t = ScriptLink::replying(bytes.to_vec());
    let start = Instant::now();
    pollster::block_on(engine::receive_reply::<_, _, N>(
        &EXAMPLE, &mut store, &mut t, &out,
    ))
    .unwrap();
    start.elapsed()
}

fn bulk_insert(dir: &std::path::Path, rows: &Rows) -> Duration {
    let mut conn = rusqlite::Connection::open(dir.join("bare.db")).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE company (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, phone TEXT NOT NULL);
         CREATE TABLE contact (id INTEGER PRIMARY KEY, company_id INTEGER, name TEXT NOT NULL, email TEXT NOT NULL, phone TEXT NOT NULL);",
    )
    .unwrap();
    let start = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut ins = tx
            .prepare("INSERT INTO company (id, name, city, phone) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for (i, (a, b, c)) in rows.companies.iter().enumerate() {
            ins.execute(rusqlite::params![i as i64 + 1, a, b, c])
                .unwrap();
        }
        let mut ins = tx
            .prepare("INSERT INTO contact (id, company_id, name, email, phone) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for (j, (p, a, b, c)) in rows.contacts.iter().enumerate() {
            ins.execute(rusqlite::params![j as i64 + 1, *p as i64 + 1, a, b, c])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rows = rows();
    let bytes = reply(&rows);
    let records = rows.companies.len() + rows.contacts.len();
    let mut g = c.benchmark_group(format!("phone_full_refresh_{records}"));
    g.sample_size(10);
    g.bench_function("engine_apply_sqlite_store", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| apply_engine(dir.path(), &bytes),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("bare_rusqlite_bulk_insert", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| bulk_insert(dir.path(), &rows),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    // Side by side, alternating, median of 7: the ratio this machine gives now.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let dir = tempfile::tempdir().unwrap();
        a.push(apply_engine(dir.path(), &bytes));
        b.push(bulk_insert(dir.path(), &rows));
    }
    a.sort();
    b.sort();
    let (a, b) = (a[3], b[3]);
    println!(
        "\nphone full refresh of {records} records: engine apply {:.1} ms, bare bulk insert {:.1} ms, ratio {:.2}x ({} reply bytes, {:.1} bytes/record)",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64(),
        bytes.len(),
        bytes.len() as f64 / records as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
