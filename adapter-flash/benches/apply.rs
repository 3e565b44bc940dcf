//! Device apply on the scanner (issue 7, items 2 and 4, flash part), side by side in one run,
//! on sequential-storage's mock NOR flash (8 MiB: 2,048 sectors of 4 KiB, 4-byte words; it
//! counts bytes written and erases; the part the README's capacity rule gives 11,000 records)
//! and the scanner configuration of `examples/measure.rs` (128 sub-maps of 16 pages with key
//! caches of 40 keys, four item buffers of 1,280 B):
//!
//! - a full refresh of N companies + M contacts (contact j under company j % N) applied by the
//!   sync engine to an empty `FlashStore`, beside raw sequential-storage `store_item` calls of
//!   the same items (key: table and server id, value: the record body) into one empty map over
//!   the same flash (a cache of 2,048 keys and every page);
//! - on a scanner that holds the data set already (warm caches), a delta reply that renames
//!   1 % of the contacts (every contact with j % 100 == 0) beside a full refresh of the same
//!   data set: apply time and flash bytes written.
//!
//! `cargo bench -p ferrysync-flash --bench apply`; `FERRYSYNC_BENCH_SIZES=small,default` picks
//! the sizes (small = 100 + 1,000, default = 1,000 + 10,000; default only when unset; the
//! 10,000 + 100,000 size does not fit an 8 MiB scanner partition and is skipped). Each size
//! prints `summary:` lines with both figures and the ratio (medians of rounds that alternate
//! the sides), then criterion measures each side.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, Outgoing};
use ferrysync_core::frame::FrameEncoder;
use ferrysync_core::id::{ServerId, TableId};
use ferrysync_core::mem::ScriptLink;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::{Accepted, Done, Reply, Upsert};
use ferrysync_core::workload;
use ferrysync_core::Hlc;
use ferrysync_flash::{store_cache, CacheSpec, FlashKey, FlashStore, MapCache, StoreCache};
use sequential_storage::map::{MapConfig, MapStorage};
use sequential_storage::mock_flash::{MockFlashBase, WriteCountCheck};
use std::time::{Duration, Instant};

/// Frame size of the sync.
const N: usize = 1024;

/// 8 MiB of NOR flash in 4 KiB sectors.
type Part = MockFlashBase<2048, 4, 1024>;
/// The scanner's store: 128 sub-maps of 16 pages, 40 keys cached in each.
type Scanner = FlashStore<Part, StoreCache<16, 40>, 1280, 128>;
/// The raw map's cache (2,048 pages, 2,048 keys).
type RawCache = MapCache<2048, 2048>;

fn part() -> Part {
    Part::new(WriteCountCheck::Twice, None, false)
}

fn scanner() -> Box<Scanner> {
    Box::new(
        FlashStore::try_new(part(), Part::FULL_FLASH_RANGE, store_cache())
            .expect("a valid flash range"),
    )
}

/// One workload size.
struct Size {
    name: &'static str,
    companies: usize,
    contacts: usize,
    /// Rounds of the side-by-side summary.
    rounds: usize,
}

const SIZES: [Size; 2] = [
    Size {
        name: "small",
        companies: 100,
        contacts: 1_000,
        rounds: 9,
    },
    Size {
        name: "default",
        companies: 1_000,
        contacts: 10_000,
        rounds: 5,
    },
];

fn sizes() -> Vec<&'static Size> {
    let wanted = std::env::var("FERRYSYNC_BENCH_SIZES").unwrap_or_else(|_| "default".into());
    if wanted.split(',').any(|w| w.trim() == "large") {
        println!(
            "summary: flash apply large (10000 + 100000): skipped, 110,000 records do not fit \
             the 8 MiB scanner partition (about 13,000 do without constant migrations)"
        );
    }
    SIZES
        .iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.name))
        .collect()
}

struct Rows {
    companies: Vec<[String; 3]>,
    contacts: Vec<(usize, [String; 3])>,
}

/// The records of the workspace's workload generator (`ferrysync_core::workload`).
fn rows(size: &Size) -> Rows {
    let w = workload::Workload::generate(workload::Size {
        name: size.name,
        companies: size.companies,
        contacts: size.contacts,
    });
    Rows {
        companies: w
            .companies
            .into_iter()
            .map(|c| [c.name, c.city, c.phone])
            .collect(),
        contacts: w
            .contacts
            .into_iter()
            .map(|c| (c.company, [c.name, c.email, c.phone]))
            .collect(),
    }
}

/// The 1 % update: every contact with j % 100 == 0 renamed.
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

fn encode_body(table: u8, fields: &[String; 3]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let values = fields.each_ref().map(|f| Value::Text(f));
    body::encode(&EXAMPLE.tables[table as usize], &values, &mut buf)
        .expect("a bench body fits 256 bytes")
        .to_vec()
}

/// Encodes a reply: `Accepted`, then `Reset` for a full refresh, the upserts, `Done`.
struct ReplyWriter {
    enc: FrameEncoder<N>,
    out: Vec<u8>,
    between: u32,
    at: Hlc,
}

impl ReplyWriter {
    fn new(batch_id: u64, full: bool, at: Hlc) -> Self {
        let mut w = ReplyWriter {
            enc: FrameEncoder::new(),
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
        let frame = self.enc.encode(m).expect("a bench record fits one frame");
        self.out.extend_from_slice(frame);
    }

    fn upsert(&mut self, table: u8, id: usize, parent: Option<usize>, fields: &[String; 3]) {
        let body = encode_body(table, fields);
        let at = self.at;
        self.put(&Reply::Upsert(Upsert {
            table: TableId(table),
            id: ServerId(id as u64 + 1),
            parent: parent.map(|p| ServerId(p as u64 + 1)),
            modified_at: at,
            body: &body,
        }));
        self.between += 1;
    }

    fn finish(mut self, cursor: u64) -> Vec<u8> {
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

/// What one side cost.
#[derive(Clone, Copy)]
struct Cost {
    time: Duration,
    written: u64,
    erases: u64,
}

/// Applies `bytes` as the reply to batch `batch_id` on `store`.
fn apply(store: &mut Scanner, bytes: &[u8], batch_id: u64, full: bool) -> Cost {
    let out = Outgoing {
        batch_id,
        sent: 0,
        changes: 0,
        full,
    };
    let mut link = ScriptLink::replying(bytes.to_vec());
    let before = store.flash_mut().stats_snapshot();
    let start = Instant::now();
    let report = pollster::block_on(engine::receive_reply::<_, _, N>(
        &EXAMPLE, store, &mut link, &out,
    ))
    .expect("the bench reply applies");
    let time = start.elapsed();
    let s = before.compare_to(store.flash_mut().stats_snapshot());
    assert!(report.upserts > 0, "the reply stored records");
    Cost {
        time,
        written: s.bytes_written,
        erases: s.erases,
    }
}

/// Full refresh on an empty scanner (mounted before: a running device; the mount pass is
/// measured by `examples/measure.rs`).
fn adapter_full(bytes: &[u8]) -> Cost {
    let mut s = scanner();
    pollster::block_on(s.mount()).expect("an empty flash mounts");
    apply(&mut s, bytes, 1, true)
}

/// The same items stored by raw `store_item` calls into an empty map.
fn raw_store(items: &[(FlashKey, Vec<u8>)]) -> Cost {
    let mut map: Box<MapStorage<FlashKey, Part, RawCache>> = Box::new(MapStorage::new(
        part(),
        MapConfig::try_new(Part::FULL_FLASH_RANGE).expect("a valid flash range"),
        StoreCache::<2048, 2048>::make(),
    ));
    let mut buf = [0u8; 512];
    let before = map.flash().stats_snapshot();
    let start = Instant::now();
    for (k, v) in items {
        pollster::block_on(map.store_item(&mut buf, k, &v.as_slice())).expect("raw store");
    }
    let time = start.elapsed();
    let s = before.compare_to(map.flash().stats_snapshot());
    Cost {
        time,
        written: s.bytes_written,
        erases: s.erases,
    }
}

/// A scanner that applied the full refresh `first` (batch 1).
fn synced(first: &[u8]) -> Box<Scanner> {
    let mut s = scanner();
    apply(&mut s, first, 1, true);
    s
}

fn median_by<T: Copy>(mut v: Vec<T>, key: impl Fn(&T) -> Duration) -> T {
    v.sort_by_key(|x| key(x));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Workload {
    size: &'static Size,
    records: usize,
    /// Full refresh of the original data (batch 1).
    first: Vec<u8>,
    /// The same records as raw items.
    items: Vec<(FlashKey, Vec<u8>)>,
    /// Delta after the 1 % update (batch 2).
    delta: Vec<u8>,
    /// Full refresh of the updated data (batch 2).
    full_again: Vec<u8>,
}

fn key(table: u8, id: usize) -> FlashKey {
    let b = (id as u32 + 1).to_be_bytes();
    [table, b[0], b[1], b[2], b[3]]
}

fn workload(size: &'static Size) -> Workload {
    let rows = rows(size);
    let first = full_reply(&rows, 1, Hlc::new(1_000, 0, 0));
    let mut items = Vec::new();
    for (i, f) in rows.companies.iter().enumerate() {
        items.push((key(0, i), encode_body(0, f)));
    }
    for (j, (_, f)) in rows.contacts.iter().enumerate() {
        items.push((key(1, j), encode_body(1, f)));
    }
    let updated = renamed(&rows);
    let delta = delta_reply(&updated, 2, Hlc::new(2_000, 0, 0));
    let full_again = full_reply(&updated, 2, Hlc::new(2_000, 0, 0));
    Workload {
        size,
        records: rows.companies.len() + rows.contacts.len(),
        first,
        items,
        delta,
        full_again,
    }
}

/// The side-by-side summary of one size: rounds alternate the sides, medians are compared.
fn summary(w: &Workload) {
    let label = format!("{} ({} records)", w.size.name, w.records);
    let (mut adapter, mut raw, mut delta, mut full) = (vec![], vec![], vec![], vec![]);
    for _ in 0..w.size.rounds {
        adapter.push(adapter_full(&w.first));
        raw.push(raw_store(&w.items));
        let mut s = synced(&w.first);
        delta.push(apply(&mut s, &w.delta, 2, false));
        drop(s);
        let mut s = synced(&w.first);
        full.push(apply(&mut s, &w.full_again, 2, true));
    }
    let t = |c: &Cost| c.time;
    let (adapter, raw) = (median_by(adapter, t), median_by(raw, t));
    let (delta, full) = (median_by(delta, t), median_by(full, t));
    let n = w.records as f64;
    println!(
        "summary: flash apply full refresh {label}: FlashStore {:.1} ms, raw sequential-storage \
         store_item {:.1} ms, ratio {:.2}x; flash bytes written {:.0} vs {:.0} per record \
         ({:.2}x), erases {} vs {}",
        ms(adapter.time),
        ms(raw.time),
        ms(adapter.time) / ms(raw.time),
        adapter.written as f64 / n,
        raw.written as f64 / n,
        adapter.written as f64 / raw.written.max(1) as f64,
        adapter.erases,
        raw.erases,
    );
    println!(
        "summary: flash delta 1 % vs full refresh on a synced scanner {label}: delta {:.2} ms and \
         {} flash bytes written ({} erases), full refresh {:.1} ms and {} bytes ({} erases); \
         delta {:.1}x cheaper in time, {:.1}x in flash bytes written",
        ms(delta.time),
        delta.written,
        delta.erases,
        ms(full.time),
        full.written,
        full.erases,
        ms(full.time) / ms(delta.time),
        full.written as f64 / delta.written.max(1) as f64,
    );
}

/// Criterion over `iters` runs of `run` (each one times itself, setup excluded).
fn timed(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn bench(c: &mut Criterion) {
    for size in sizes() {
        let w = workload(size);
        summary(&w);
        let mut g = c.benchmark_group(format!("flash_apply_{}", size.name));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.bench_function("full_refresh_flash_store", |b| {
            b.iter_custom(|n| timed(n, || adapter_full(&w.first).time))
        });
        g.bench_function("full_refresh_raw_store_item", |b| {
            b.iter_custom(|n| timed(n, || raw_store(&w.items).time))
        });
        g.bench_function("delta_1pct_synced_scanner", |b| {
            b.iter_custom(|n| {
                timed(n, || {
                    let mut s = synced(&w.first);
                    apply(&mut s, &w.delta, 2, false).time
                })
            })
        });
        g.bench_function("full_refresh_synced_scanner", |b| {
            b.iter_custom(|n| {
                timed(n, || {
                    let mut s = synced(&w.first);
                    apply(&mut s, &w.full_again, 2, true).time
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
