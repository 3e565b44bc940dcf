//! Flash cost and host time of the flash store for 1,000 and 10,000 records.
//!
//! `cargo run --release -p ferrysync-flash --example measure [scanner|host] [records...]`
//!
//! Runs on sequential-storage's mock flash (2 MiB, 4 KiB sectors, 4-byte words), which counts
//! reads, writes and erases. Two configurations: a scanner-sized one (a key cache of 1,024
//! keys, 12 KiB, and a cursor of 32 records) and a host-sized one (32,768 keys, 1,024 records).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use ferrysync_core::id::{LocalId, TableId};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::{Filter, LocalStore};
use ferrysync_core::track;
use ferrysync_flash::{store_cache, FlashStore, StoreCache};
use pollster::block_on;
use sequential_storage::mock_flash::{FlashStatsResult, MockFlashBase, WriteCountCheck};
use std::time::Instant;

type Big = MockFlashBase<512, 4, 1024>;

fn line(what: &str, n: usize, t: Instant, s: FlashStatsResult) {
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "  {what:<28} {ms:>10.1} ms  {:>8.1} B written/rec  {:>6} erases  {:>10} reads  {:>12.1} KiB read",
        s.bytes_written as f64 / n as f64,
        s.erases,
        s.reads,
        s.bytes_read as f64 / 1024.0
    );
}

fn run<const KEYS: usize, const CUR: usize>(label: &str, n: usize) {
    println!("{label}: {n} records");
    let flash = Big::new(WriteCountCheck::Twice, None, false);
    let mut s: Box<FlashStore<Big, StoreCache<512, KEYS>, 640, CUR>> =
        Box::new(FlashStore::try_new(flash, Big::FULL_FLASH_RANGE, store_cache()).unwrap());

    // 1. Local inserts, one transaction each: n/10 companies with 9 contacts each.
    let t = Instant::now();
    let before = s.flash_mut().stats_snapshot();
    let mut company_id = LocalId(0);
    for i in 0..n {
        if i.is_multiple_of(10) {
            company_id = block_on(track::insert(
                &EXAMPLE,
                &mut *s,
                CO,
                None,
                &company(&format!("Company {i}")),
                i as u64,
            ))
            .unwrap();
        } else {
            block_on(track::insert(
                &EXAMPLE,
                &mut *s,
                CT,
                Some(company_id),
                &contact(&format!("Contact {i}")),
                i as u64,
            ))
            .unwrap();
        }
    }
    line(
        "local insert",
        n,
        t,
        before.compare_to(s.flash_mut().stats_snapshot()),
    );

    // 2. Gets in a scattered order.
    let t = Instant::now();
    let before = s.flash_mut().stats_snapshot();
    let mut found = 0;
    for k in 0..n {
        let l = (k * 7919) % n + 1;
        let table = if (l - 1).is_multiple_of(10) { CO } else { CT };
        found += block_on(s.get(table, LocalId(l as u32))).unwrap().is_some() as usize;
    }
    assert_eq!(found, n);
    line(
        "get (scattered)",
        n,
        t,
        before.compare_to(s.flash_mut().stats_snapshot()),
    );

    // 3. A walk over the contacts in local-id order.
    let t = Instant::now();
    let before = s.flash_mut().stats_snapshot();
    let mut after = None;
    let mut walked = 0;
    while let Some(r) = block_on(s.next(CT, after, Filter::All)).unwrap() {
        after = Some(r.local);
        walked += 1;
    }
    assert_eq!(walked, n - n / 10);
    line(
        "next walk (contacts)",
        n,
        t,
        before.compare_to(s.flash_mut().stats_snapshot()),
    );

    // 4. First sync: every record pushed, mapped and sent back (full refresh).
    let mut server = FakeServer::new();
    let t = Instant::now();
    let before = s.flash_mut().stats_snapshot();
    let r = sync_with(&mut *s, &mut server).unwrap();
    assert_eq!(r.mapped as usize, n);
    line(
        "first sync (push all)",
        n,
        t,
        before.compare_to(s.flash_mut().stats_snapshot()),
    );

    // 5. Delta sync: the server changed 10% of the records.
    let ids = server.ids(TableId(1));
    let changed = ids.len() / 10;
    for id in ids.iter().take(changed) {
        server.touch(TableId(1), *id, contact("changed on the server"));
    }
    let t = Instant::now();
    let before = s.flash_mut().stats_snapshot();
    let r = sync_with(&mut *s, &mut server).unwrap();
    assert_eq!(r.upserts as usize, changed);
    line(
        &format!("delta sync ({changed} upserts)"),
        changed,
        t,
        before.compare_to(s.flash_mut().stats_snapshot()),
    );

    // 6. A fresh device receiving everything (full refresh into an empty store).
    let flash = Big::new(WriteCountCheck::Twice, None, false);
    let mut d: Box<FlashStore<Big, StoreCache<512, KEYS>, 640, CUR>> =
        Box::new(FlashStore::try_new(flash, Big::FULL_FLASH_RANGE, store_cache()).unwrap());
    let t = Instant::now();
    let before = d.flash_mut().stats_snapshot();
    let r = sync_with(&mut *d, &mut server).unwrap();
    assert_eq!(r.upserts as usize, n);
    line(
        "new device full refresh",
        n,
        t,
        before.compare_to(d.flash_mut().stats_snapshot()),
    );
}

/// RAM the scanner configuration needs: the store, and the future of a whole sync.
fn ram() {
    type Scanner = FlashStore<Big, StoreCache<512, 1024>, 640, 32>;
    let flash = Big::new(WriteCountCheck::Twice, None, false);
    let mut s: Box<Scanner> =
        Box::new(FlashStore::try_new(flash, Big::FULL_FLASH_RANGE, store_cache()).unwrap());
    let mut t = ferrysync_core::mem::ScriptLink::default();
    let fut = ferrysync_core::engine::sync::<_, _, 1024>(
        &EXAMPLE,
        &mut *s,
        &mut t,
        ferrysync_core::wire::Mode::Delta,
    );
    let fut_size = core::mem::size_of_val(&fut);
    drop(fut);
    let cache = core::mem::size_of::<StoreCache<512, 1024>>();
    println!(
        "RAM, scanner config: store {} B (of which sequential-storage cache {} B for 512 pages and 1024 keys), sync future with 1 KiB frames {} B",
        core::mem::size_of::<Scanner>(),
        cache,
        fut_size
    );
    println!(
        "RAM, host config: store {} B",
        core::mem::size_of::<FlashStore<Big, StoreCache<512, 32768>, 640, 1024>>()
    );
}

fn main() {
    ram();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let which = match args.first().map(String::as_str) {
        Some("scanner") | Some("host") => args.remove(0),
        _ => "both".into(),
    };
    let sizes: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("a number of records"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    for n in sizes {
        if which != "host" {
            run::<1024, 32>(
                "scanner config (key cache 1024 keys = 12 KiB, cursor 32)",
                n,
            );
        }
        if which != "scanner" {
            run::<32768, 1024>("host config (key cache 32768 keys, cursor 1024)", n);
        }
    }
}
