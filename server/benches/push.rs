//! Push of 1,000 companies + 10,000 contacts in one sync, over real HTTP on 127.0.0.1, against
//! a bare rusqlite bulk insert of the same rows in one transaction (same pragmas: WAL,
//! `synchronous = FULL`), in the same run.
//!
//! Each sync goes to a fresh server database (setup not timed) and is timed from the first
//! request byte to the last reply byte: decoding and checking 11,000 changes, mapping every
//! local id, rewriting 10,000 foreign keys, committing, and streaming back the 11,000 mappings
//! plus the device's 11,000 records (its first sync is a full reply).
//!
//! `cargo bench -p ferrysync-server --bench push`; a summary with syncs/s, records/s and the
//! ratio to the bulk insert is printed at the end.

#[path = "../tests/http/common.rs"]
mod common;

use common::*;
use criterion::{criterion_group, Criterion, Throughput};
use ferrysync_core::wire::Mode;
use std::time::{Duration, Instant};

const COMPANIES: u32 = 1_000;
const CONTACTS_PER_COMPANY: u32 = 10;
const RECORDS: u64 = (COMPANIES * (1 + CONTACTS_PER_COMPANY)) as u64;

fn company(i: u32) -> (String, String, String) {
    (
        format!("Company {i}"),
        format!("City {}", i % 50),
        format!("+33 1 {i:06}"),
    )
}

fn contact(j: u32) -> (String, String, String) {
    (
        format!("Contact {j}"),
        format!("contact{j}@example.com"),
        format!("+33 6 {j:06}"),
    )
}

fn changes(device: u32) -> Vec<Chg> {
    let t = at(device, 0);
    let mut v = Vec::with_capacity(RECORDS as usize);
    for i in 1..=COMPANIES {
        let (a, b, c) = company(i);
        v.push(add(COMPANY, i, None, t, text3(COMPANY, &a, &b, &c)));
    }
    for j in 1..=COMPANIES * CONTACTS_PER_COMPANY {
        let (a, b, c) = contact(j);
        let parent = 1 + (j - 1) / CONTACTS_PER_COMPANY;
        v.push(add(
            CONTACT,
            j,
            Some(local(parent)),
            t,
            text3(CONTACT, &a, &b, &c),
        ));
    }
    v
}

/// One timed push to a fresh server.
async fn one_sync() -> Duration {
    let s = TestServer::start().await;
    let dev = s.device("bench");
    let body = encode_request(hello(1, None, Mode::Delta), &changes(dev.id));
    let started = Instant::now();
    let a = s.post_sync(Some(&dev.token), body).await;
    let took = started.elapsed();
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let r = decode_reply(1, &a.body).unwrap();
    assert_eq!(r.mappings.len() as u64, RECORDS);
    assert_eq!(r.upserts.len() as u64, RECORDS);
    assert!(r.rejected.is_empty());
    s.stop().await;
    took
}

/// The same rows, inserted with rusqlite in one transaction into a fresh file.
fn one_bulk_insert() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut c = rusqlite::Connection::open(dir.path().join("bulk.db")).unwrap();
    let _: String = c
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    c.execute_batch(
        "CREATE TABLE company (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
                               phone TEXT NOT NULL);
         CREATE TABLE contact (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
                               phone TEXT NOT NULL,
                               company_id INTEGER NOT NULL REFERENCES company(id));
         CREATE INDEX contact_company ON contact (company_id);",
    )
    .unwrap();
    let started = Instant::now();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare("INSERT INTO company (id, name, city, phone) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in 1..=COMPANIES {
            let (a, b, d) = company(i);
            ins.execute(rusqlite::params![i, a, b, d]).unwrap();
        }
        let mut ins = tx
            .prepare("INSERT INTO contact (name, email, phone, company_id) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for j in 1..=COMPANIES * CONTACTS_PER_COMPANY {
            let (a, b, d) = contact(j);
            ins.execute(rusqlite::params![
                a,
                b,
                d,
                1 + (j - 1) / CONTACTS_PER_COMPANY
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    started.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("push_1000_companies_10000_contacts");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("sync_over_http", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(one_sync()))
                .sum::<Duration>()
        })
    });
    g.bench_function("bare_rusqlite_bulk_insert", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_bulk_insert()).sum::<Duration>())
    });
    g.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Medians of a few more runs, printed as the figures the issue asks for.
fn summary() {
    let rt = runtime();
    let runs = 7;
    let sync = median((0..runs).map(|_| rt.block_on(one_sync())).collect());
    let bulk = median((0..runs).map(|_| one_bulk_insert()).collect());
    let secs = sync.as_secs_f64();
    println!(
        "\nsummary (median of {runs}): push of {COMPANIES} companies + {} contacts = {RECORDS} records\n\
         \x20 sync over HTTP:      {:8.1} ms  -> {:6.2} syncs/s, {:9.0} records/s\n\
         \x20 bare bulk insert:    {:8.1} ms  -> {:9.0} records/s\n\
         \x20 sync / bulk insert:  {:8.2} x",
        COMPANIES * CONTACTS_PER_COMPANY,
        secs * 1e3,
        1.0 / secs,
        RECORDS as f64 / secs,
        bulk.as_secs_f64() * 1e3,
        RECORDS as f64 / bulk.as_secs_f64(),
        secs / bulk.as_secs_f64(),
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        summary();
    }
}
