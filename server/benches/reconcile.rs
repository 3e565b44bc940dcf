//! Server reconcile of a first push without HTTP, beside a bare rusqlite bulk insert of the
//! same rows in one transaction (same pragmas as the server's writer: WAL, `synchronous =
//! FULL`, foreign keys, 64 MiB page cache), in the same run. The workload is issue 7's (see `workload/mod.rs`): `n` companies and `m`
//! contacts, contact `j` under company `j % n`.
//!
//! Three things are timed, each on a fresh database (opening it and adding the device are not
//! timed, and each run starts after a `sync` so it does not pay for the writeback of the run
//! before it):
//! - `reconcile`: [`ServerStore::sync`] of the already decoded changes: id mapping, foreign
//!   keys rewritten through the map, last-write-wins, scope checks, commit. This is the figure
//!   the target (≤ 2.5× the bulk insert) is about.
//! - `direct`: [`direct::sync`]: the request bytes in (batch frames decoded and checked), the
//!   reconcile, and the reply bytes out (the mappings; a first reply is full, but the records
//!   the push wrote are not sent back).
//! - `bulk`: the same rows inserted with rusqlite, prepared statements, one transaction.
//!
//! `cargo bench -p ferrysync-server --bench reconcile` runs criterion on the default size
//! (1,000 + 10,000), then prints a summary: for each of the three sizes the medians of runs
//! taken in turns (each side first in its turn) and the ratios to the bulk insert. With
//! `FERRYSYNC_TEST_POSTGRES` set (an admin URL, as for the tests), the summary also times
//! `direct` on a [`PostgresStore`] in a database of its own (emptied between runs, untimed),
//! in the same turns, and gives its ratio to `direct` on SQLite.
//! `FERRYSYNC_BENCH_PROFILE=reconcile` (or `direct`, `bulk`, `delta`: a 1 % update push) runs only that, in a loop of
//! `FERRYSYNC_BENCH_LOOPS` (default 20), on size `FERRYSYNC_BENCH_SIZE` (0, 1 or 2; default
//! 1), for a profiler: in `delta`, the push's reconcile and commit run inside `measured_push`
//! and another device's pull inside `measured_pull`, for callgrind's `--toggle-collect`.

#[path = "workload/mod.rs"]
mod workload;

use criterion::{criterion_group, Criterion, Throughput};
use ferrysync_core::frame::FrameDecoder;
use ferrysync_core::wire::{End, Hello, Mode, Op, Reply, Request, PROTOCOL_VERSION};
use ferrysync_core::{Hlc, RecordRef, ServerId, TableId};
use ferrysync_server::direct;
use ferrysync_server::store::{Device, Incoming, OwnedChange, ReplyPlan, SyncParams};
use ferrysync_server::{LoadedSchema, PostgresStore, ServerStore, SqliteStore, MAX_FRAME};
use std::time::{Duration, Instant};
use workload::*;

/// A fresh store in its own directory, with one device of scope `bench`.
fn fresh_store() -> (tempfile::TempDir, SqliteStore, Device) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("server.db"), LoadedSchema::example()).unwrap();
    let device = store.add_device("bench", &[7; 32], 0).unwrap();
    (dir, store, device)
}

fn params() -> SyncParams {
    SyncParams {
        now_ms: ferrysync_server::now_ms(),
        max_skew_ms: 60_000,
        tombstone_retention_ms: 30 * 24 * 3_600_000,
    }
}

/// The workload's changes for the first device of a fresh store (whose id is always 1).
struct Push {
    n: u32,
    m: u32,
    changes: Vec<OwnedChange>,
    request: Vec<u8>,
    bare: BareRows,
}

impl Push {
    fn new(n: u32, m: u32) -> Self {
        let (_dir, _store, device) = fresh_store();
        let changes = changes(n, m, device.id, ferrysync_server::now_ms());
        let request = request(&changes);
        Push {
            n,
            m,
            changes,
            request,
            bare: BareRows::new(n, m),
        }
    }

    fn records(&self) -> u64 {
        u64::from(self.n + self.m)
    }

    /// One timed reconcile of the decoded changes.
    fn reconcile(&self) -> Duration {
        let (_dir, store, device) = fresh_store();
        let mut source = self
            .changes
            .clone()
            .into_iter()
            .map(Incoming::Change)
            .chain(std::iter::once(Incoming::Commit));
        settle();
        let started = Instant::now();
        let out = store.sync(&device, params(), &mut source).unwrap();
        let took = started.elapsed();
        assert_eq!(out.mappings.len() as u64, self.records());
        assert!(out.rejected.is_empty(), "{:?}", out.rejected.first());
        took
    }

    /// One timed request-bytes-to-reply-bytes sync.
    fn direct(&self) -> Duration {
        let (_dir, store, device) = fresh_store();
        let hash = LoadedSchema::example().hash();
        settle();
        let started = Instant::now();
        let reply = direct::sync(&store, hash, &device, params(), &self.request).unwrap();
        let took = started.elapsed();
        let count = count_reply(&reply);
        assert_eq!(count.mappings, self.records());
        // The records the push wrote are not sent back.
        assert_eq!(count.upserts, 0);
        took
    }

    fn bulk(&self) -> Duration {
        bare_bulk_insert(&self.bare)
    }

    /// [`Push::direct`] on PostgreSQL, into `pg`'s emptied tables.
    fn direct_pg(&self, pg: &mut PgSide) -> Duration {
        pg.empty();
        let hash = LoadedSchema::example().hash();
        let started = Instant::now();
        let reply = direct::sync(&pg.store, hash, &pg.device, params(), &self.request).unwrap();
        let took = started.elapsed();
        let count = count_reply(&reply);
        assert_eq!(count.mappings, self.records());
        assert_eq!(count.upserts, 0);
        took
    }
}

/// A [`PostgresStore`] in a new database of `FERRYSYNC_TEST_POSTGRES`'s server, with one
/// device of scope `bench`; the database is dropped with it.
struct PgSide {
    admin: postgres::Client,
    name: String,
    /// Empties the tables between runs.
    client: postgres::Client,
    store: PostgresStore,
    device: Device,
}

impl PgSide {
    /// `None` when `FERRYSYNC_TEST_POSTGRES` is not set.
    fn new() -> Option<PgSide> {
        let url = std::env::var("FERRYSYNC_TEST_POSTGRES").ok()?;
        if url.trim().is_empty() {
            return None;
        }
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let name = format!("ferrysync_bench_{}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let mut cfg: postgres::Config = url.parse().unwrap();
        cfg.dbname(&name);
        let client = cfg.connect(postgres::NoTls).unwrap();
        let host = match &cfg.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => "localhost".into(),
        };
        let url = format!(
            "host={host} port={} user={} dbname={name}",
            cfg.get_ports().first().copied().unwrap_or(5432),
            cfg.get_user().unwrap_or("postgres"),
        );
        let store = PostgresStore::open(&url, LoadedSchema::example()).unwrap();
        let device = store.add_device("bench", &[7; 32], 0).unwrap();
        Some(PgSide {
            admin,
            name,
            client,
            store,
            device,
        })
    }

    /// Back to a fresh store's tables (the device stays), then a checkpoint so the run does
    /// not pay for the writeback of the run before it.
    fn empty(&mut self) {
        self.client
            .batch_execute(
                "TRUNCATE company, contact, _idmap, _tombstone RESTART IDENTITY;
                 UPDATE _meta SET value = 0 WHERE key IN ('seq', 'tombstone_floor');
                 CHECKPOINT;",
            )
            .unwrap();
    }
}

impl Drop for PgSide {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// What a reply stream holds: its mappings, its upserts, and its `Done` cursor.
struct ReplyCount {
    mappings: u64,
    upserts: u64,
    cursor: Option<u64>,
}

/// Walks a reply stream (every frame and item must decode) and counts it.
fn count_reply(mut bytes: &[u8]) -> ReplyCount {
    let mut dec = Box::new(FrameDecoder::<MAX_FRAME>::new());
    let mut count = ReplyCount {
        mappings: 0,
        upserts: 0,
        cursor: None,
    };
    while !bytes.is_empty() {
        let fed = dec.feed::<Reply<'_>>(bytes);
        bytes = &bytes[fed.consumed..];
        if let Some(msg) = fed.result.expect("a good frame") {
            for item in msg.items() {
                match item.expect("a good item") {
                    Reply::Mapping(_) => count.mappings += 1,
                    Reply::Upsert(_) => count.upserts += 1,
                    Reply::Done(d) => count.cursor = Some(d.cursor),
                    _ => {}
                }
            }
        }
    }
    count
}

fn bench(c: &mut Criterion) {
    let (n, m) = SIZES[1];
    let push = Push::new(n, m);
    let mut g = c.benchmark_group(format!("first_push_{n}_companies_{m}_contacts"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(push.records()));
    g.bench_function("reconcile", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| push.reconcile()).sum::<Duration>())
    });
    g.bench_function("direct_sync_bytes_to_reply", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| push.direct()).sum::<Duration>())
    });
    g.bench_function("bare_rusqlite_bulk_insert", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| push.bulk()).sum::<Duration>())
    });
    g.finish();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Medians of runs taken in turns, per size, and their ratios to the bulk insert; with
/// PostgreSQL, its `direct` and that one's ratio to SQLite's.
fn summary() {
    let mut pg = PgSide::new();
    println!(
        "\nsummary: first push, medians of runs taken in turns (each side first in its turn)\n\
         {:>16} {:>6} {:>14} {:>12} {:>12} {:>13} {:>10} {:>10}{}",
        "companies+contacts",
        "runs",
        "reconcile ms",
        "direct ms",
        "bulk ms",
        "reconcile µs/rec",
        "rec/bulk",
        "dir/bulk",
        if pg.is_some() {
            format!(" {:>14} {:>12}", "pg direct ms", "pg/sqlite")
        } else {
            String::new()
        }
    );
    let sides = if pg.is_some() { 4 } else { 3 };
    for (n, m) in SIZES {
        let push = Push::new(n, m);
        let runs = if n + m > 50_000 { 6 } else { 15 };
        let (mut r, mut d, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..runs {
            // Each side goes first, second, third (and fourth) in turn.
            for k in 0..sides {
                match (round + k) % sides {
                    0 => r.push(push.reconcile()),
                    1 => d.push(push.direct()),
                    2 => b.push(push.bulk()),
                    _ => p.extend(pg.as_mut().map(|pg| push.direct_pg(pg))),
                }
            }
        }
        let (r, d, b) = (median(r), median(d), median(b));
        let pg_cols = if p.is_empty() {
            String::new()
        } else {
            let p = median(p);
            format!(
                " {:>14.2} {:>11.2}x",
                ms(p),
                p.as_secs_f64() / d.as_secs_f64()
            )
        };
        println!(
            "{:>18} {:>6} {:>14.2} {:>12.2} {:>12.2} {:>16.3} {:>9.2}x {:>9.2}x{pg_cols}",
            format!("{n}+{m}"),
            runs,
            ms(r),
            ms(d),
            ms(b),
            r.as_secs_f64() * 1e6 / push.records() as f64,
            r.as_secs_f64() / b.as_secs_f64(),
            d.as_secs_f64() / b.as_secs_f64(),
        );
    }
}

/// A 1 % delta push on a store that holds the first push: every contact `j` with
/// `j % 100 == 0` renamed by the device that added it, as updates keyed by server id. Times
/// the reconcile (with its commit) and the reply read apart, per run. With
/// `FERRYSYNC_TEST_POSTGRES` set, the same rounds run on a [`PostgresStore`] too, in turns
/// with SQLite's (each side first in its turn), and its medians and ratio are printed below.
fn delta(n: u32, m: u32, loops: usize) {
    let (_dir, store, device) = fresh_store();
    let mut sqlite = DeltaSide::new(&store, &device, n, m);
    let pg = PgSide::new();
    let mut pg_side = pg
        .as_ref()
        .map(|pg| DeltaSide::new(&pg.store, &pg.device, n, m));
    for round in 0..loops {
        if round % 2 == 0 || pg_side.is_none() {
            sqlite.round(round);
            pg_side.iter_mut().for_each(|s| s.round(round));
        } else {
            pg_side.iter_mut().for_each(|s| s.round(round));
            sqlite.round(round);
        }
    }
    let lite = sqlite.report("delta", loops);
    if let Some(side) = pg_side {
        let p = side.report("postgres delta", loops);
        println!(
            "postgres/sqlite, reconcile + commit medians: {:.2}x",
            p.as_secs_f64() / lite.as_secs_f64()
        );
    }
}

/// One store's side of [`delta`]: its renamed contacts, the pushing device's cursor, and a
/// second device that pulls each round's changes.
struct DeltaSide<'s> {
    store: &'s dyn ServerStore,
    device: &'s Device,
    n: u32,
    m: u32,
    wall: u64,
    renamed: Vec<(ServerId, ServerId, u32)>,
    cursor: u64,
    puller: Device,
    pull_cursor: u64,
    applied: Vec<Duration>,
    replied: Vec<Duration>,
    pulled: Vec<Duration>,
}

/// A delta pull request (no changes) from `cursor`.
fn pull_request(cursor: Option<u64>) -> Vec<u8> {
    let mut enc = ferrysync_core::frame::FrameEncoder::<MAX_FRAME>::new();
    let hello = Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash: LoadedSchema::example().hash(),
        batch_id: 1,
        cursor,
        mode: Mode::Delta,
    });
    let mut out = enc.encode(&hello).unwrap().to_vec();
    out.extend_from_slice(enc.encode(&Request::End(End { count: 0 })).unwrap());
    out
}

impl<'s> DeltaSide<'s> {
    /// Pushes the workload into `store` (untimed) and pulls it once on a second device.
    fn new(store: &'s dyn ServerStore, device: &'s Device, n: u32, m: u32) -> Self {
        let wall = ferrysync_server::now_ms();
        let first = changes(n, m, device.id, wall);
        let mut source = first
            .into_iter()
            .map(Incoming::Change)
            .chain(std::iter::once(Incoming::Commit));
        let out = store.sync(device, params(), &mut source).unwrap();
        let server_of = |t: TableId, local: u32| {
            out.mappings
                .iter()
                .find(|x| x.table == t && x.local.0 == local)
                .map(|x| x.server)
                .unwrap()
        };
        let renamed: Vec<(ServerId, ServerId, u32)> = (0..m)
            .step_by(100)
            .map(|j| {
                let c = server_of(CONTACT, j + 1);
                let p = server_of(COMPANY, company_of(j, n) + 1);
                (c, p, j)
            })
            .collect();
        // A second device pulls each round's changes through `direct::sync` (decode, an empty
        // sync, the reply read and encoded): the server's part of a 1 % delta pull.
        let puller = ferrysync_server::auth::add_device(store, "bench")
            .unwrap()
            .0;
        let first_pull = direct::sync(
            store,
            LoadedSchema::example().hash(),
            &puller,
            params(),
            &pull_request(None),
        )
        .unwrap();
        let pull_cursor = count_reply(&first_pull)
            .cursor
            .expect("the reply ends with Done");
        DeltaSide {
            store,
            device,
            n,
            m,
            wall,
            renamed,
            cursor: out.written.upto,
            puller,
            pull_cursor,
            applied: Vec::new(),
            replied: Vec::new(),
            pulled: Vec::new(),
        }
    }

    /// One timed push of the renames, its reply read, and another device's pull of them.
    fn round(&mut self, round: usize) {
        let (store, device, n) = (self.store, self.device, self.n);
        let at = Hlc::new(self.wall + 1 + round as u64, 0, device.id);
        // The changes are made before the clock starts: the push times the store, not the
        // formatting of the renamed bodies.
        let changes: Vec<Incoming> = (self.renamed.iter())
            .map(|&(c, p, j)| {
                let [mut name, email, phone] = contact(j, n);
                name.push_str(&format!(" v{round}"));
                Incoming::Change(OwnedChange {
                    table: CONTACT,
                    op: Op::Update,
                    key: RecordRef::Server(c),
                    parent: Some(RecordRef::Server(p)),
                    modified_at: at,
                    body: body(CONTACT, &[name, email, phone]),
                })
            })
            .chain(std::iter::once(Incoming::Commit))
            .collect();
        let mut source = changes.into_iter();
        settle();
        let (synced, out) = measured_push(|| store.sync(device, params(), &mut source).unwrap());
        assert_eq!(out.applied as usize, self.renamed.len());
        let plan = ReplyPlan {
            scope: &device.scope,
            mode: Mode::Delta,
            cursor: Some(self.cursor),
            extra: &out.losers,
        };
        let mut items = 0;
        let started = Instant::now();
        self.cursor = store
            .read_sync_reply(&plan, out.written, &mut |_| {
                items += 1;
                Ok(())
            })
            .unwrap();
        self.replied.push(started.elapsed());
        self.applied.push(synced);
        assert_eq!(items, 0, "the sync's own rows are not sent back");

        let request = pull_request(Some(self.pull_cursor));
        settle();
        let reply = measured_pull(|| {
            direct::sync(
                store,
                LoadedSchema::example().hash(),
                &self.puller,
                params(),
                &request,
            )
            .unwrap()
        });
        self.pulled.push(reply.0);
        let count = count_reply(&reply.1);
        assert_eq!(
            count.upserts,
            self.renamed.len() as u64,
            "the pull has every rename"
        );
        self.pull_cursor = count.cursor.expect("the reply ends with Done");
    }

    /// Prints the medians under `label`; returns the reconcile + commit median.
    fn report(self, label: &str, loops: usize) -> Duration {
        let mut sorted = self.applied.clone();
        sorted.sort();
        let worst = sorted.last().copied().unwrap_or_default();
        let p90 = sorted
            .get(sorted.len() * 9 / 10)
            .copied()
            .unwrap_or_default();
        let applied = median(self.applied);
        println!(
            "{label} {}+{}: {} updates, {loops} runs; medians: reconcile + commit {:.3} ms \
             (p90 {:.3} ms, worst {:.3} ms), reply read {:.3} ms; another device's pull of them \
             through direct::sync {:.3} ms",
            self.n,
            self.m,
            self.renamed.len(),
            ms(applied),
            ms(p90),
            ms(worst),
            ms(median(self.replied)),
            ms(median(self.pulled)),
        );
        applied
    }
}

/// Times `run`: the reconcile and commit of a 1 % push of [`delta`], apart so a profiler can
/// collect inside it only (`valgrind --tool=callgrind --toggle-collect='*measured_push*'`).
#[inline(never)]
fn measured_push<T>(run: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let out = run();
    (started.elapsed(), out)
}

/// Times `run`: a pull of [`delta`], apart so a profiler can collect inside it only
/// (`valgrind --tool=callgrind --toggle-collect='*measured_pull*'`).
#[inline(never)]
fn measured_pull(run: impl FnOnce() -> Vec<u8>) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let reply = run();
    (started.elapsed(), reply)
}

/// A loop of one kind of run, for a profiler.
fn profile(kind: &str) {
    let loops: usize = std::env::var("FERRYSYNC_BENCH_LOOPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let size = std::env::var("FERRYSYNC_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    let (n, m) = SIZES[size.min(SIZES.len() - 1)];
    if kind == "delta" {
        delta(n, m, loops);
        return;
    }
    let push = Push::new(n, m);
    let total: Duration = (0..loops)
        .map(|_| match kind {
            "direct" => push.direct(),
            "bulk" => push.bulk(),
            _ => push.reconcile(),
        })
        .sum();
    println!(
        "{kind}: {loops} runs, {:.2} ms each",
        ms(total) / loops as f64
    );
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(kind) = std::env::var("FERRYSYNC_BENCH_PROFILE") {
        profile(&kind);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        summary();
    }
}
