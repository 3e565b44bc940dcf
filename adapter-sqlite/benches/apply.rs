//! Device apply on the phone (issue 7, items 2 and 4), side by side in one run:
//!
//! The data is the repo's workload (`ferrysync_core::workload`, as the other benches use).
//!
//! - a full refresh of N companies + M contacts (contact j under company j % N) applied by the
//!   sync engine to an empty `SqliteStore` on a file, beside a bare rusqlite bulk insert of the
//!   same rows in one transaction with the same pragmas (WAL, `synchronous = NORMAL` as the
//!   phone commits a reply (`LocalStore::begin_reply`), foreign keys;
//!   the contact table has its parent index, as in the repo harness), and beside
//!   the same bulk insert into the store's own tables (sync columns and indexes: what the
//!   tables themselves cost, a row per statement as the bare insert does);
//! - on a phone that holds the data set already, a delta reply that renames 1 % of the
//!   contacts (every contact with j % 100 == 0) beside a full refresh of the same data set:
//!   apply time and reply bytes;
//! - the same delta on such a phone closed and opened again (an app that starts);
//! - on such a phone, the phone's side of a 1 % delta push: the engine sends the renamed
//!   contacts and applies the server's reply confirming them (no server in the timing).
//!
//! `cargo bench -p ferrysync-sqlite --bench apply`; `FERRYSYNC_BENCH_SIZES=small,default,large`
//! picks the sizes (small = 100 + 1,000, default = 1,000 + 10,000, large = 10,000 + 100,000;
//! default only when unset). Each size prints `summary:` lines with both times and the ratio
//! (medians of rounds in which each side goes first in turn; every timed run starts after a
//! `sync`, so it does not pay for the writes of the run before it), then criterion measures
//! each side.
//!
//! To profile one side (e.g. under `valgrind --tool=callgrind`, which counts instructions
//! reliably on a busy machine),
//! `FERRYSYNC_BENCH_ONLY=engine|bare|floor|delta|delta_reopened|delta_warm|full|push` runs
//! just that side once per size, prints its time, and skips the rest. `delta_warm` (profiles
//! only) is a second delta on the same connection, as a phone that keeps syncing applies it:
//! its statements prepared, the renamed contacts named back (rows that shrink: no page splits).
//! `push` (profiles only) is a second 1 % push on the same connection, after a first one.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, Outgoing};
use ferrysync_core::frame::FrameEncoder;
use ferrysync_core::id::{LocalId, ServerId, TableId};
use ferrysync_core::mem::ScriptLink;
use ferrysync_core::pack::Packer;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::LocalStore;
use ferrysync_core::track;
use ferrysync_core::wire::{Accepted, Done, Mode, Reply, Upsert};
use ferrysync_core::workload;
use ferrysync_core::Hlc;
use ferrysync_sqlite::{rusqlite, SqliteStore};
use std::path::Path;
use std::time::{Duration, Instant};

/// Frame size the phone uses (`ferrysync_sqlite::MAX_FRAME`).
const N: usize = ferrysync_sqlite::MAX_FRAME;

/// One workload size.
struct Size {
    name: &'static str,
    companies: usize,
    contacts: usize,
    /// Rounds of the side-by-side summary.
    rounds: usize,
}

const SIZES: [Size; 3] = [
    Size {
        name: "small",
        companies: 100,
        contacts: 1_000,
        rounds: 15,
    },
    Size {
        name: "default",
        companies: 1_000,
        contacts: 10_000,
        rounds: 9,
    },
    Size {
        name: "large",
        companies: 10_000,
        contacts: 100_000,
        rounds: 3,
    },
];

fn sizes() -> Vec<&'static Size> {
    let wanted = std::env::var("FERRYSYNC_BENCH_SIZES").unwrap_or_else(|_| "default".into());
    let picked: Vec<&Size> = SIZES
        .iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.name))
        .collect();
    assert!(
        !picked.is_empty(),
        "FERRYSYNC_BENCH_SIZES={wanted}: expected a comma-separated list of small, default, large"
    );
    picked
}

struct Rows {
    companies: Vec<[String; 3]>,
    contacts: Vec<(usize, [String; 3])>,
}

/// The repo's workload (`ferrysync_core::workload`, as every bench uses): realistic names,
/// cities, phones and emails; contact j under company j % N.
fn rows(size: &Size) -> Rows {
    let n = size.companies;
    Rows {
        companies: (0..n)
            .map(|i| {
                let c = workload::company(i);
                [c.name, c.city, c.phone]
            })
            .collect(),
        contacts: (0..size.contacts)
            .map(|j| {
                let c = workload::contact(j, n);
                (c.company, [c.name, c.email, c.phone])
            })
            .collect(),
    }
}

/// The 1 % update: every contact with j % 100 == 0 renamed (`workload::renamed`).
fn renamed(rows: &Rows) -> Rows {
    Rows {
        companies: rows.companies.clone(),
        contacts: rows
            .contacts
            .iter()
            .enumerate()
            .map(|(j, (p, f))| {
                let mut f = f.clone();
                if workload::is_renamed(j) {
                    f[0] = workload::renamed(j);
                }
                (*p, f)
            })
            .collect(),
    }
}

/// Encodes a reply as the server does: `Accepted`, then `Reset` for a full refresh, the
/// upserts packed several per frame (protocol v2 batches), `Done`.
struct ReplyWriter {
    enc: FrameEncoder<N>,
    packer: Packer<N>,
    out: Vec<u8>,
    between: u32,
    at: Hlc,
}

impl ReplyWriter {
    fn new(batch_id: u64, full: bool, at: Hlc) -> Self {
        let mut w = ReplyWriter {
            enc: FrameEncoder::new(),
            packer: Packer::new(),
            out: Vec::new(),
            between: 0,
            at,
        };
        w.put(&Reply::Accepted(Accepted {
            batch_id,
            server_time: at.wall_ms,
        }));
        if full {
            w.put(&Reply::Reset);
            w.between += 1;
        }
        w
    }

    fn put(&mut self, m: &Reply<'_>) {
        let frame = self.enc.encode(m).expect("a bench message fits one frame");
        self.out.extend_from_slice(frame);
    }

    fn upsert(&mut self, table: u8, id: usize, parent: Option<usize>, fields: &[String; 3]) {
        let mut buf = [0u8; workload::BODY_BUF];
        let values = fields.each_ref().map(|f| Value::Text(f));
        let body = body::encode(&EXAMPLE.tables[table as usize], &values, &mut buf)
            .expect("a workload body fits BODY_BUF");
        let u = Upsert {
            table: TableId(table),
            id: ServerId(id as u64 + 1),
            parent: parent.map(|p| ServerId(p as u64 + 1)),
            modified_at: self.at,
            body,
        };
        // A full batch goes out first; then the record joins the next one.
        while let Some(frame) = self.packer.upsert(&u).expect("a bench record fits a frame") {
            self.out.extend_from_slice(frame);
        }
        self.between += 1;
    }

    fn finish(mut self, cursor: u64) -> Vec<u8> {
        if let Some(frame) = self.packer.flush().expect("a batch fits its frame") {
            self.out.extend_from_slice(frame);
        }
        let count = self.between;
        self.put(&Reply::Done(Done { cursor, count }));
        self.out
    }
}

/// A full-refresh reply of `rows` for batch `batch_id`, stamped `at`.
fn full_reply(rows: &Rows, batch_id: u64, at: Hlc) -> Vec<u8> {
    let mut w = ReplyWriter::new(batch_id, true, at);
    for (i, f) in rows.companies.iter().enumerate() {
        w.upsert(0, i, None, f);
    }
    for (j, (p, f)) in rows.contacts.iter().enumerate() {
        w.upsert(1, j, Some(*p), f);
    }
    w.finish(rows.companies.len() as u64 + rows.contacts.len() as u64)
}

/// The delta reply after the 1 % update: the renamed contacts only.
fn delta_reply(rows: &Rows, batch_id: u64, at: Hlc) -> Vec<u8> {
    let mut w = ReplyWriter::new(batch_id, false, at);
    for (j, (p, f)) in rows.contacts.iter().enumerate() {
        if j % 100 == 0 {
            w.upsert(1, j, Some(*p), f);
        }
    }
    w.finish(u64::MAX / 2)
}

/// Lets the kernel write back what earlier runs left dirty (`sync`, best effort), so a timed
/// run does not pay for the writes of the one before it in its own `fsync`.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Applies `bytes` as the reply to batch `batch_id` on `store`; returns the apply time.
fn apply(store: &mut SqliteStore, bytes: &[u8], batch_id: u64, full: bool) -> Duration {
    let out = Outgoing {
        batch_id,
        sent: 0,
        changes: 0,
        full,
    };
    let mut link = ScriptLink::replying(bytes.to_vec());
    settle();
    let start = Instant::now();
    let report = pollster::block_on(engine::receive_reply::<_, _, N>(
        &EXAMPLE, store, &mut link, &out,
    ))
    .expect("the bench reply applies");
    let took = start.elapsed();
    assert!(report.upserts > 0, "the reply stored records");
    took
}

/// Full refresh on an empty phone.
fn engine_full(dir: &Path, bytes: &[u8]) -> Duration {
    let mut store = SqliteStore::open(dir.join("phone.db"), EXAMPLE).expect("open phone");
    apply(&mut store, bytes, 1, true)
}

/// Bare bulk insert of the same rows into plain tables, same pragmas, one transaction: the
/// baseline of issue 7 (`bare_bulk_insert` of the repo harness: the contact's `company_id`
/// has a foreign key and an index, as a phone app's own tables would).
fn bare_insert(dir: &Path, rows: &Rows) -> Duration {
    let mut conn = rusqlite::Connection::open(dir.join("bare.db")).expect("open bare");
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("WAL");
    // Committed as the phone commits a reply: no fsync at commit.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         CREATE TABLE company (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, phone TEXT NOT NULL);
         CREATE TABLE contact (id INTEGER PRIMARY KEY,
                               company_id INTEGER NOT NULL REFERENCES company(id),
                               name TEXT NOT NULL, email TEXT NOT NULL, phone TEXT NOT NULL);
         CREATE INDEX contact_company ON contact (company_id);",
    )
    .expect("bare tables");
    settle();
    let start = Instant::now();
    let tx = conn.transaction().expect("begin");
    {
        let mut ins = tx
            .prepare("INSERT INTO company (id, name, city, phone) VALUES (?1, ?2, ?3, ?4)")
            .expect("prepare");
        for (i, [a, b, c]) in rows.companies.iter().enumerate() {
            ins.execute(rusqlite::params![i as i64 + 1, a, b, c])
                .expect("insert");
        }
        let mut ins = tx
            .prepare(
                "INSERT INTO contact (id, company_id, name, email, phone) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .expect("prepare");
        for (j, (p, [a, b, c])) in rows.contacts.iter().enumerate() {
            ins.execute(rusqlite::params![j as i64 + 1, *p as i64 + 1, a, b, c])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    start.elapsed()
}

/// The same bulk insert into the store's own tables (sync columns, server-id, parent and
/// pending indexes): what the tables themselves cost, written a row per statement like the
/// bare insert (the store writes 32 rows per statement, which saves about a fifth of this).
fn bare_insert_store_tables(dir: &Path, rows: &Rows) -> Duration {
    let store = SqliteStore::open(dir.join("floor.db"), EXAMPLE).expect("open floor");
    let conn = store.connection();
    // Committed as the phone commits a reply: no fsync at commit.
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .expect("synchronous");
    let meta = "0, 0, 1, 0, 1";
    settle();
    let start = Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    {
        let mut ins = conn
            .prepare(&format!(
                "INSERT INTO company (id, server_id, name, city, phone, sync_pending, edits, \
                 modified_wall, modified_seq, refresh_mark) VALUES (?1, ?1, ?2, ?3, ?4, {meta})"
            ))
            .expect("prepare");
        for (i, [a, b, c]) in rows.companies.iter().enumerate() {
            ins.execute(rusqlite::params![i as i64 + 1, a, b, c])
                .expect("insert");
        }
        let mut ins = conn
            .prepare(&format!(
                "INSERT INTO contact (id, server_id, company_id, name, email, phone, \
                 sync_pending, edits, modified_wall, modified_seq, refresh_mark) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, {meta})"
            ))
            .expect("prepare");
        let n = rows.companies.len() as i64;
        for (j, (p, [a, b, c])) in rows.contacts.iter().enumerate() {
            let j = j as i64;
            ins.execute(rusqlite::params![n + j + 1, j + 1, *p as i64 + 1, a, b, c])
                .expect("insert");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    start.elapsed()
}

/// A phone that applied the full refresh `first` (batch 1).
fn synced_phone(dir: &Path, first: &[u8]) -> SqliteStore {
    let mut store = SqliteStore::open(dir.join("synced.db"), EXAMPLE).expect("open phone");
    apply(&mut store, first, 1, true);
    store
}

/// [`synced_phone`] closed and opened again, as by an app that starts: its statements are not
/// prepared, and what the store kept in memory of the first sync is gone.
fn reopened_phone(dir: &Path, first: &[u8]) -> SqliteStore {
    drop(synced_phone(dir, first));
    SqliteStore::open(dir.join("synced.db"), EXAMPLE).expect("open phone")
}

/// Renames 1 % of the contacts on a phone that applied the first full refresh (one app
/// transaction each, as an app would); returns how many. Untimed: the setup of [`push`].
fn rename(phone: &mut SqliteStore, w: &Workload) -> u32 {
    let n = w.rows.companies.len();
    let mut buf = [0u8; workload::BODY_BUF];
    let mut renamed = 0;
    for (j, (_, f)) in w.updated.contacts.iter().enumerate() {
        if j % 100 != 0 {
            continue;
        }
        let values = f.each_ref().map(|f| Value::Text(f));
        let body = body::encode(&EXAMPLE.tables[1], &values, &mut buf).expect("body fits");
        // The first full refresh gave local ids in arrival order: companies, then contacts.
        let local = LocalId((n + j + 1) as u32);
        pollster::block_on(track::update(
            &EXAMPLE,
            phone,
            TableId(1),
            local,
            body,
            3_000,
        ))
        .expect("rename");
        renamed += 1;
    }
    renamed
}

/// The phone's side of a 1 % delta push of `renamed` changes ([`rename`]): the engine builds
/// and sends the request and applies the server's reply (`Accepted`, `Done`: every change
/// confirmed, as batch `batch`). No server: its time is not the phone's.
fn push(phone: &mut SqliteStore, renamed: u32, batch: u64) -> Duration {
    let reply = ReplyWriter::new(batch, false, Hlc::new(3_000, 0, 0)).finish(u64::MAX / 2);
    let mut link = ScriptLink::replying(reply);
    settle();
    let start = Instant::now();
    let report = pollster::block_on(engine::sync::<_, _, N>(
        &EXAMPLE,
        phone,
        &mut link,
        Mode::Delta,
    ))
    .expect("the push applies");
    let took = start.elapsed();
    assert_eq!(report.sent, renamed, "the push sent every rename");
    took
}

/// The floor of any sync on `phone`: a reply transaction that writes only the device state
/// (one WAL frame, committed without its fsync as every reply is), timed from `begin_reply` to
/// the end of `commit`.
fn commit_floor(phone: &mut SqliteStore) -> Duration {
    let state = pollster::block_on(phone.load_state()).expect("state");
    settle();
    let start = Instant::now();
    pollster::block_on(async {
        phone.begin_reply().await?;
        phone.commit(&state).await
    })
    .expect("an empty transaction commits");
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

struct Workload {
    size: &'static Size,
    rows: Rows,
    /// Full refresh of the original data (batch 1).
    first: Vec<u8>,
    /// The data after the 1 % update.
    updated: Rows,
    /// Delta after the 1 % update (batch 2).
    delta: Vec<u8>,
    /// Full refresh of the updated data (batch 2).
    full_again: Vec<u8>,
}

fn workload(size: &'static Size) -> Workload {
    let rows = rows(size);
    let first = full_reply(&rows, 1, Hlc::new(1_000, 0, 0));
    let updated = renamed(&rows);
    let delta = delta_reply(&updated, 2, Hlc::new(2_000, 0, 0));
    let full_again = full_reply(&updated, 2, Hlc::new(2_000, 0, 0));
    Workload {
        size,
        rows,
        first,
        updated,
        delta,
        full_again,
    }
}

/// The side-by-side summary of one size: rounds alternate the sides, medians are compared.
fn summary(w: &Workload) {
    let records = w.rows.companies.len() + w.rows.contacts.len();
    let label = format!(
        "{} ({} + {})",
        w.size.name,
        w.rows.companies.len(),
        w.rows.contacts.len()
    );
    let (mut engine, mut bare, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let (mut delta, mut full, mut pushed) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor_commit = Vec::new();
    let mut delta_reopened = Vec::new();
    for round in 0..w.size.rounds {
        // Each side goes first in turn.
        for side in (0..3).map(|i| (i + round) % 3) {
            let dir = tempdir();
            match side {
                0 => engine.push(engine_full(dir.path(), &w.first)),
                1 => bare.push(bare_insert(dir.path(), &w.rows)),
                _ => floor.push(bare_insert_store_tables(dir.path(), &w.rows)),
            }
        }
        let dir = tempdir();
        let mut phone = synced_phone(dir.path(), &w.first);
        delta.push(apply(&mut phone, &w.delta, 2, false));
        floor_commit.push(commit_floor(&mut phone));
        drop(phone);
        let dir = tempdir();
        let mut phone = reopened_phone(dir.path(), &w.first);
        delta_reopened.push(apply(&mut phone, &w.delta, 2, false));
        drop(phone);
        let dir = tempdir();
        let mut phone = synced_phone(dir.path(), &w.first);
        full.push(apply(&mut phone, &w.full_again, 2, true));
        drop(phone);
        let dir = tempdir();
        let mut phone = synced_phone(dir.path(), &w.first);
        let renamed = rename(&mut phone, w);
        pushed.push(push(&mut phone, renamed, 2));
    }
    let (engine, bare, floor) = (median(engine), median(bare), median(floor));
    let (delta, full, pushed) = (median(delta), median(full), median(pushed));
    let floor_commit = median(floor_commit);
    let delta_reopened = median(delta_reopened);
    println!(
        "summary: apply full refresh {label}: engine + SqliteStore {:.1} ms, bare rusqlite bulk \
         insert {:.1} ms, ratio {:.2}x (target <= 1.5x); bare insert into the store's tables \
         {:.1} ms ({:.2}x bare); {} reply bytes, {:.1} bytes/record",
        ms(engine),
        ms(bare),
        ms(engine) / ms(bare),
        ms(floor),
        ms(floor) / ms(bare),
        w.first.len(),
        w.first.len() as f64 / records as f64,
    );
    println!(
        "summary: delta 1 % vs full refresh on a synced phone {label}: delta {:.2} ms and {} \
         reply bytes, full refresh {:.1} ms and {} reply bytes; delta {:.1}x cheaper in time, \
         {:.1}x in bytes (target >= 20x); the first full refresh of an empty phone above is \
         {:.1}x the delta's time",
        ms(delta),
        w.delta.len(),
        ms(full),
        w.full_again.len(),
        ms(full) / ms(delta),
        w.full_again.len() as f64 / w.delta.len() as f64,
        ms(engine) / ms(delta),
    );
    println!(
        "summary: the same delta on a phone just opened again (an app that starts: no statement \
         prepared, nothing kept in memory from the first sync) {label}: {:.2} ms, {:.1}x cheaper \
         than the full refresh above",
        ms(delta_reopened),
        ms(full) / ms(delta_reopened),
    );
    println!(
        "summary: delta 1 % push on a synced phone {label} (the phone's side: request of {} \
         renames, reply confirming them; no server): {:.2} ms, {:.1}x cheaper than the full \
         refresh above (target >= 20x)",
        w.rows.contacts.len().div_ceil(100),
        ms(pushed),
        ms(full) / ms(pushed),
    );
    println!(
        "summary: commit floor on a synced phone {label}: an empty sync transaction (the state \
         row: one WAL frame, no fsync, as every reply) {:.2} ms; the delta above is {:.1}x it, the push {:.1}x",
        ms(floor_commit),
        ms(delta) / ms(floor_commit),
        ms(pushed) / ms(floor_commit),
    );
}

/// Criterion over `iters` runs of `run` (each one times itself, setup excluded).
fn timed(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

/// The measured part of a `FERRYSYNC_BENCH_ONLY` run: a profiler can collect inside it only
/// (`valgrind --tool=callgrind --toggle-collect='*measured*'`).
#[inline(never)]
fn measured(run: impl FnOnce() -> Duration) -> Duration {
    run()
}

/// Runs one side once (`FERRYSYNC_BENCH_ONLY`), for profilers.
fn only(w: &Workload, side: &str) {
    let dir = tempdir();
    let took = match side {
        "engine" => measured(|| engine_full(dir.path(), &w.first)),
        "bare" => measured(|| bare_insert(dir.path(), &w.rows)),
        "floor" => measured(|| bare_insert_store_tables(dir.path(), &w.rows)),
        "push" => {
            let mut phone = synced_phone(dir.path(), &w.first);
            let renamed = rename(&mut phone, w);
            push(&mut phone, renamed, 2);
            let renamed = rename(&mut phone, w);
            measured(|| push(&mut phone, renamed, 3))
        }
        "delta_reopened" => {
            let mut phone = reopened_phone(dir.path(), &w.first);
            measured(|| apply(&mut phone, &w.delta, 2, false))
        }
        "delta_warm" => {
            // A second delta on the same connection (its statements prepared): the renamed
            // contacts named back.
            let mut phone = synced_phone(dir.path(), &w.first);
            apply(&mut phone, &w.delta, 2, false);
            let back = delta_reply(&w.rows, 3, Hlc::new(3_000, 0, 0));
            measured(|| apply(&mut phone, &back, 3, false))
        }
        "delta" | "full" => {
            let mut phone = synced_phone(dir.path(), &w.first);
            let (reply, full) = if side == "delta" {
                (&w.delta, false)
            } else {
                (&w.full_again, true)
            };
            measured(|| apply(&mut phone, reply, 2, full))
        }
        _ => {
            panic!(
                "FERRYSYNC_BENCH_ONLY={side}: expected engine, bare, floor, delta, delta_reopened, \
                 delta_warm, full or push"
            )
        }
    };
    println!("only {side} {}: {:.2} ms", w.size.name, ms(took));
}

fn bench(c: &mut Criterion) {
    let only_side = std::env::var("FERRYSYNC_BENCH_ONLY").ok();
    for size in sizes() {
        let w = workload(size);
        if let Some(side) = &only_side {
            only(&w, side);
            continue;
        }
        summary(&w);
        let mut g = c.benchmark_group(format!("apply_{}", size.name));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.bench_function("full_refresh_engine_sqlite_store", |b| {
            b.iter_custom(|n| timed(n, || engine_full(tempdir().path(), &w.first)))
        });
        g.bench_function("full_refresh_bare_rusqlite", |b| {
            b.iter_custom(|n| timed(n, || bare_insert(tempdir().path(), &w.rows)))
        });
        g.bench_function("delta_1pct_synced_phone", |b| {
            b.iter_custom(|n| {
                timed(n, || {
                    let dir = tempdir();
                    let mut phone = synced_phone(dir.path(), &w.first);
                    apply(&mut phone, &w.delta, 2, false)
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
