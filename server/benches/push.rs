//! Push of 1,000 companies + 10,000 contacts (issue 7's workload, `workload/mod.rs`) in one
//! sync, over real HTTP on 127.0.0.1, against a bare rusqlite bulk insert of the same rows in
//! one transaction (same pragmas as the server's writer), in the same run. The reconcile
//! alone, without HTTP, is the `reconcile` bench.
//!
//! Each sync goes to a fresh server database (setup not timed) and is timed from the first
//! request byte to the last reply byte: decoding and checking 11,000 changes, mapping every
//! local id, rewriting 10,000 foreign keys, committing, and streaming back the 11,000 mappings
//! (a first reply is full, but the records the push wrote are not sent back).
//!
//! `cargo bench -p ferrysync-server --bench push`; a summary with syncs/s, records/s and the
//! ratio to the bulk insert is printed at the end.

#[path = "../tests/http/common.rs"]
mod common;
#[path = "workload/mod.rs"]
mod workload;

use common::*;
use criterion::{criterion_group, Criterion, Throughput};
use std::time::{Duration, Instant};
use workload::{bare_bulk_insert, median, BareRows, SIZES};

const COMPANIES: u32 = SIZES[1].0;
const CONTACTS: u32 = SIZES[1].1;
const RECORDS: u64 = (COMPANIES + CONTACTS) as u64;

/// One timed push to a fresh server.
async fn one_sync() -> Duration {
    let s = TestServer::start().await;
    let dev = s.device("bench");
    let body = workload::request(&workload::changes(COMPANIES, CONTACTS, dev.id, now()));
    workload::settle();
    let started = Instant::now();
    let a = s.post_sync(Some(&dev.token), body).await;
    let took = started.elapsed();
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let r = decode_reply(1, &a.body).unwrap();
    assert_eq!(r.mappings.len() as u64, RECORDS);
    assert!(r.upserts.is_empty(), "the pushed records are not echoed");
    assert!(r.rejected.is_empty());
    s.stop().await;
    took
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
    let rows = BareRows::new(COMPANIES, CONTACTS);
    g.bench_function("bare_rusqlite_bulk_insert", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| bare_bulk_insert(&rows))
                .sum::<Duration>()
        })
    });
    g.finish();
}

/// Medians of a few more runs, printed as the figures the issue asks for.
fn summary() {
    let rt = runtime();
    let runs = 7;
    let sync = median((0..runs).map(|_| rt.block_on(one_sync())).collect());
    let rows = BareRows::new(COMPANIES, CONTACTS);
    let bulk = median((0..runs).map(|_| bare_bulk_insert(&rows)).collect());
    let secs = sync.as_secs_f64();
    println!(
        "\nsummary (median of {runs}): push of {COMPANIES} companies + {} contacts = {RECORDS} records\n\
         \x20 sync over HTTP:      {:8.1} ms  -> {:6.2} syncs/s, {:9.0} records/s\n\
         \x20 bare bulk insert:    {:8.1} ms  -> {:9.0} records/s\n\
         \x20 sync / bulk insert:  {:8.2} x",
        CONTACTS,
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
