//! Flash cost, RAM and host time of the flash store on a scanner-sized configuration, for the
//! workload of issue 7 at two sizes (so linearity shows: the second is 10x the first).
//!
//! `cargo run --release -p ferrysync-flash --example measure [--part MIB] [--lean] [N M ...]`
//! (default: `--part 8 100 1000 1000 10000`: N companies, M contacts, contact j under company
//! j % N).
//!
//! Runs on sequential-storage's mock flash (`--part` 4, 6, 8 or 16 MiB of 4 KiB sectors,
//! 4-byte words), which counts reads, writes and erases. The store: sub-maps of 16 pages (32 on
//! 16 MiB, which has more than `MAX_MAPS` of 16) with key caches holding every key of 11,000
//! records and a third more, four item buffers of 1,280 B (records with a payload up to 146 B
//! stay in their bucket, which the workload's contacts of about 100 B need). 8 MiB is the part the README's capacity rule gives 11,000 records of this workload.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use ferrysync_core::body::{encode, Value};
use ferrysync_core::id::LocalId;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::{Filter, LocalStore};
use ferrysync_core::track;
use ferrysync_core::wire::Mode;
use ferrysync_core::workload;
use ferrysync_flash::{CacheSpec, FlashStore, LeanCache, StoreCache};
use pollster::block_on;
use sequential_storage::mock_flash::{FlashStatsResult, MockFlashBase, WriteCountCheck};
use std::time::Instant;

/// `P` sectors of 4 KiB of NOR flash.
type Part<const P: usize> = MockFlashBase<P, 4, 1024>;
/// A scanner on `P` sectors: `M` sub-maps, each with a cache of `CP` pages and `K` keys.
type Scanner<const P: usize, C, const M: usize> = FlashStore<Part<P>, C, 1280, M>;

fn scanner<const P: usize, C: CacheSpec + Default, const M: usize>() -> Box<Scanner<P, C, M>> {
    let flash = Part::<P>::new(WriteCountCheck::Twice, None, false);
    Box::new(FlashStore::try_new(flash, Part::<P>::FULL_FLASH_RANGE, C::default()).unwrap())
}

/// The body of company `i` of the workspace's workload (`ferrysync_core::workload`).
fn company_body(i: usize) -> Vec<u8> {
    let c = workload::company(i);
    let mut buf = [0u8; workload::BODY_BUF];
    encode(
        &EXAMPLE.tables[0],
        &[
            Value::Text(&c.name),
            Value::Text(&c.city),
            Value::Text(&c.phone),
        ],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// The body of contact `j` of a workload of `n` companies, named `name`.
fn contact_body(j: usize, n: usize, name: &str) -> Vec<u8> {
    let c = workload::contact(j, n);
    let mut buf = [0u8; workload::BODY_BUF];
    encode(
        &EXAMPLE.tables[1],
        &[
            Value::Text(name),
            Value::Text(&c.email),
            Value::Text(&c.phone),
        ],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// One measured operation.
struct Row {
    what: String,
    records: usize,
    ms: f64,
    s: FlashStatsResult,
}

impl Row {
    fn print(&self) {
        println!(
            "  {:<34} {:>9.1} ms {:>8.1} B written/rec {:>6} erases {:>9} reads {:>10.1} KiB read",
            self.what,
            self.ms,
            self.s.bytes_written as f64 / self.records.max(1) as f64,
            self.s.erases,
            self.s.reads,
            self.s.bytes_read as f64 / 1024.0
        );
    }
}

fn measure<T, const P: usize, C: CacheSpec + Default, const M: usize>(
    s: &mut Scanner<P, C, M>,
    what: &str,
    records: usize,
    rows: &mut Vec<Row>,
    f: impl FnOnce(&mut Scanner<P, C, M>) -> T,
) -> T {
    let before = s.flash_mut().stats_snapshot();
    let t = Instant::now();
    let out = f(s);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let row = Row {
        what: what.into(),
        records,
        ms,
        s: before.compare_to(s.flash_mut().stats_snapshot()),
    };
    row.print();
    rows.push(row);
    out
}

/// Remounts the store from its flash (a scanner reboot): cold caches.
// The store is tens of KiB: it stays boxed (clippy cannot size the generic type).
#[allow(clippy::boxed_local)]
fn reboot<const P: usize, C: CacheSpec + Default, const M: usize>(
    s: Box<Scanner<P, C, M>>,
) -> Box<Scanner<P, C, M>> {
    let flash = s.into_flash();
    Box::new(FlashStore::try_new(flash, Part::<P>::FULL_FLASH_RANGE, C::default()).unwrap())
}

fn run<const P: usize, C: CacheSpec + Default, const M: usize>(n: usize, m: usize) -> Vec<Row> {
    let total = n + m;
    println!("{n} companies + {m} contacts ({total} records):");
    let mut rows = Vec::new();
    let mut s = scanner::<P, C, M>();

    // Local inserts, one transaction each: the companies, then the contacts.
    let cos = measure(&mut s, "local insert (1 txn each)", total, &mut rows, |s| {
        let mut cos = Vec::with_capacity(n);
        for i in 0..n {
            cos.push(
                block_on(track::insert(
                    &EXAMPLE,
                    s,
                    CO,
                    None,
                    &company_body(i),
                    i as u64,
                ))
                .unwrap(),
            );
        }
        for j in 0..m {
            block_on(track::insert(
                &EXAMPLE,
                s,
                CT,
                Some(cos[j % n]),
                &contact_body(j, n, &workload::contact(j, n).name),
                (n + j) as u64,
            ))
            .unwrap();
        }
        cos
    });
    measure(&mut s, "get (scattered)", total, &mut rows, |s| {
        let mut found = 0;
        for k in 0..total {
            let l = (k * 7919) % total + 1;
            let table = if l <= n { CO } else { CT };
            found += block_on(s.get(table, LocalId(l as u32))).unwrap().is_some() as usize;
        }
        assert_eq!(found, total);
    });
    measure(
        &mut s,
        "walk children of one company",
        m / n,
        &mut rows,
        |s| {
            let mut after = None;
            let mut kids = 0;
            while let Some(r) = block_on(s.next(CT, after, Filter::Children(cos[0]))).unwrap() {
                after = Some(r.local);
                kids += 1;
            }
            assert_eq!(kids, m.div_ceil(n));
        },
    );

    // First sync: every record pushed, mapped and sent back (a full refresh).
    let mut server = FakeServer::new();
    measure(
        &mut s,
        "first sync (push all, full reply)",
        total,
        &mut rows,
        |s| {
            let r = sync_with(s, &mut server).unwrap();
            assert_eq!(r.mapped as usize, total);
        },
    );

    // Delta sync: the server renames every contact with j % 100 == 0 (1 %).
    let ids = server.ids(CT);
    let rename = |server: &mut FakeServer, round: usize| {
        let mut k = 0;
        for (j, id) in ids.iter().enumerate() {
            if j % 100 == 0 {
                let name = format!("{} {round}", workload::renamed(j));
                server.touch(CT, *id, contact_body(j, n, &name));
                k += 1;
            }
        }
        k
    };
    let changed = rename(&mut server, 1);
    measure(
        &mut s,
        "delta sync (1 % renamed)",
        changed,
        &mut rows,
        |s| {
            let r = sync_with(s, &mut server).unwrap();
            assert_eq!(r.upserts as usize, changed);
        },
    );

    // Full refresh of the same data into the same device.
    measure(
        &mut s,
        "full refresh (same device)",
        total,
        &mut rows,
        |s| {
            let r = sync_mode(s, &mut server, Mode::Full).unwrap();
            assert_eq!(r.upserts as usize, total);
        },
    );

    // A reboot, then a delta sync: sequential-storage's key cache starts cold.
    let mut s = reboot(s);
    measure(&mut s, "mount after reboot", total, &mut rows, |s| {
        block_on(s.mount()).unwrap();
    });
    let changed = rename(&mut server, 2);
    measure(
        &mut s,
        "delta sync after reboot (1 %)",
        changed,
        &mut rows,
        |s| {
            let r = sync_with(s, &mut server).unwrap();
            assert_eq!(r.upserts as usize, changed);
        },
    );

    // A new device: the full refresh into an empty store.
    let mut d = scanner::<P, C, M>();
    let fresh = measure(&mut d, "new device full refresh", total, &mut rows, |d| {
        let before = d.flash_mut().stats_snapshot();
        let r = sync_with(d, &mut server).unwrap();
        assert_eq!(r.upserts as usize, total);
        before
            .compare_to(d.flash_mut().stats_snapshot())
            .bytes_written
    });
    println!(
        "  capacity: a fresh full refresh wrote {:.0} KiB ({:.0} B/rec); the part is {:.1}x that",
        fresh as f64 / 1024.0,
        fresh as f64 / total as f64,
        (P * 4096) as f64 / fresh as f64
    );
    rows
}

/// RAM the scanner configuration needs: the store, and the future of a whole sync.
fn ram<const P: usize, C: CacheSpec + Default, const M: usize>(cache_name: &str) {
    let mut s = scanner::<P, C, M>();
    let mut t = ferrysync_core::mem::ScriptLink::default();
    let fut = ferrysync_core::engine::sync::<_, _, 1024>(&EXAMPLE, &mut *s, &mut t, Mode::Delta);
    let fut_size = core::mem::size_of_val(&fut);
    drop(fut);
    let cache = M * core::mem::size_of::<Option<C::Cache>>();
    let store = core::mem::size_of::<Scanner<P, C, M>>();
    println!(
        "part {} MiB ({P} sectors of 4 KiB), {} sub-maps of {} pages",
        P / 256,
        s.sub_maps(),
        P / s.sub_maps()
    );
    println!(
        "RAM to sync: store {store} B (of which sequential-storage caches {cache} B: {M} x \
         {cache_name}; item buffers 4 x 1,280 B), sync future with 1 KiB frames {fut_size} B: \
         total {} B",
        store + fut_size
    );
    println!(
        "records kept inside a bucket up to a payload of {} B (larger ones get an item of their own)",
        s.inline_max()
    );
}

fn main_for<const P: usize, C: CacheSpec + Default, const M: usize>(
    cache_name: &str,
    sizes: &[(usize, usize)],
) {
    ram::<P, C, M>(cache_name);
    let runs: Vec<(usize, Vec<Row>)> = sizes
        .iter()
        .map(|&(n, m)| (n + m, run::<P, C, M>(n, m)))
        .collect();
    if runs.len() >= 2 {
        let (small, large) = (&runs[0], &runs[runs.len() - 1]);
        println!(
            "growth from {} to {} records ({:.1}x the records): time, flash reads (ops), bytes read, bytes written",
            small.0,
            large.0,
            large.0 as f64 / small.0 as f64
        );
        for (a, b) in small.1.iter().zip(&large.1) {
            let r = |x: u64, y: u64| y as f64 / (x.max(1)) as f64;
            println!(
                "  {:<34} {:>6.1}x {:>6.1}x {:>6.1}x {:>6.1}x",
                a.what,
                b.ms / a.ms.max(1e-6),
                r(a.s.reads, b.s.reads),
                r(a.s.bytes_read, b.s.bytes_read),
                r(a.s.bytes_written, b.s.bytes_written)
            );
        }
    }
}

fn main() {
    let mut mib = 8;
    let mut lean = false;
    let mut nums = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--lean" {
            lean = true;
        } else if a == "--part" {
            mib = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--part 4|6|8|16 (MiB)");
        } else {
            nums.push(a.parse::<usize>().expect("numbers: N M [N M ...]"));
        }
    }
    let sizes: Vec<(usize, usize)> = if nums.len() >= 2 {
        nums.chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0], c[1]))
            .collect()
    } else {
        vec![(100, 1_000), (1_000, 10_000)]
    };
    // Key caches: every key of the sub-map (`(records / 4 + pages / 2) / sub-maps`) with a
    // third more, for 11,000 records.
    // `--lean`: `LeanCache` (no page pointers) instead of `StoreCache`.
    macro_rules! part {
        ($p:literal, $cp:literal, $k:literal, $m:literal) => {
            if lean {
                let name = concat!("LeanCache<", $cp, ", ", $k, ">");
                main_for::<$p, LeanCache<$cp, $k>, $m>(name, &sizes)
            } else {
                let name = concat!("StoreCache<", $cp, ", ", $k, ">");
                main_for::<$p, StoreCache<$cp, $k>, $m>(name, &sizes)
            }
        };
    }
    match mib {
        4 => part!(1024, 16, 68, 64),
        6 => part!(1536, 16, 48, 96),
        8 => part!(2048, 16, 40, 128),
        16 => part!(4096, 32, 50, 128),
        _ => panic!("--part 4, 6, 8 or 16 (MiB)"),
    }
}
