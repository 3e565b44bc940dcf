//! The flash store behaves as the in-memory model on the change-tracking API and the engine.

mod common;

use common::*;
use ferrysync_core::mem::MemStore;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::LocalStore;
use ferrysync_core::track;
use pollster::block_on;

/// Runs the same story on a store: offline work, syncs, server-side changes.
fn story<S: LocalStore>(s: &mut S) -> Vec<Snapshot>
where
    S::Error: std::fmt::Debug,
{
    let mut server = FakeServer::new();
    let other = server.add(CO, None, company("Other"));
    server.add(CT, Some(other), contact("Olga"));
    let mut shots = Vec::new();
    let c = block_on(track::insert(&EXAMPLE, s, CO, None, &company("ACME"), 1000)).unwrap();
    let a = block_on(track::insert(
        &EXAMPLE,
        s,
        CT,
        Some(c),
        &contact("Ann"),
        1001,
    ))
    .unwrap();
    let b = block_on(track::insert(
        &EXAMPLE,
        s,
        CT,
        Some(c),
        &contact("Bob"),
        1002,
    ))
    .unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    sync_with(s, &mut server).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    assert!(block_on(pending(s)).unwrap().is_empty());
    block_on(track::update(&EXAMPLE, s, CT, a, &contact("Ann 2"), 2000)).unwrap();
    block_on(track::delete(&EXAMPLE, s, CT, b, 2001)).unwrap();
    let d = block_on(track::insert(
        &EXAMPLE,
        s,
        CT,
        Some(c),
        &contact("Dan"),
        2002,
    ))
    .unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    server.delete(CO, other);
    let new = server.add(CO, None, company("New Co"));
    server.add(CT, Some(new), contact("Nina"));
    sync_with(s, &mut server).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    // A refused update lands in the rejected log; the next sync is a full refresh.
    block_on(track::update(&EXAMPLE, s, CT, d, &contact("Dan 2"), 3000)).unwrap();
    let dan = block_on(s.get(CT, d)).unwrap().unwrap();
    server.refuse.push(dan.server.unwrap().0);
    sync_with(s, &mut server).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    sync_with(s, &mut server).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    block_on(track::clear_rejected(s)).unwrap();
    block_on(track::delete(&EXAMPLE, s, CO, c, 4000)).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    sync_with(s, &mut server).unwrap();
    shots.push(block_on(snapshot(s)).unwrap());
    shots
}

#[test]
fn same_story_same_data_as_the_model() {
    let mut mem = MemStore::new();
    let want = story(&mut mem);
    let mut flash = small_store(small_flash());
    let got = story(&mut flash);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "step {i}");
    }
    assert!(!want[4].rejected.is_empty());
    // And a fresh mount of the same flash reads the same.
    let mut again = small_store(flash.into_flash());
    assert_eq!(
        &block_on(snapshot(&mut again)).unwrap(),
        want.last().unwrap()
    );
}

/// The same story on a store with `LeanCache` (no page pointers): the same data as the model,
/// also after a fresh mount.
#[test]
fn lean_cache_same_story_same_data() {
    let mut mem = MemStore::new();
    let want = story(&mut mem);
    type Lean = ferrysync_flash::FlashStore<Small, ferrysync_flash::LeanCache<16, 512>, 1024, 1>;
    let open = |f: Small| -> Lean {
        ferrysync_flash::FlashStore::try_new(f, Small::FULL_FLASH_RANGE, Default::default())
            .unwrap()
    };
    let mut flash = open(small_flash());
    let got = story(&mut flash);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "step {i}");
    }
    let mut again = open(flash.into_flash());
    assert_eq!(
        &block_on(snapshot(&mut again)).unwrap(),
        want.last().unwrap()
    );
}

#[test]
fn fresh_store_is_empty_and_default() {
    let mut s = small_store(small_flash());
    let snap = block_on(snapshot(&mut s)).unwrap();
    assert_eq!(snap.state, Default::default());
    assert!(snap.records.is_empty() && snap.rejected.is_empty());
}

#[test]
fn rollback_drops_writes_and_keeps_numbering_safe() {
    let mut s = small_store(small_flash());
    let c = block_on(track::insert(&EXAMPLE, &mut s, CO, None, &company("A"), 1)).unwrap();
    let mut seen: Vec<usize> = Vec::new();
    for i in 0..20 {
        let before = block_on(snapshot(&mut s)).unwrap();
        block_on(s.begin()).unwrap();
        let mut rec = block_on(s.get(CO, c)).unwrap().unwrap();
        rec.mark = 100 + i;
        block_on(s.put(&rec, Some(&company("B")))).unwrap();
        block_on(s.remove(CO, c)).unwrap();
        assert_eq!(block_on(s.get(CO, c)).unwrap(), None, "own remove visible");
        // A record in another bucket: the first bucket's staged item reaches flash.
        let far = ferrysync_core::id::LocalId(c.0 + 3 * ferrysync_flash::BUCKET);
        let far_rec = ferrysync_core::store::Record { local: far, ..rec };
        block_on(s.put(&far_rec, Some(&company("C")))).unwrap();
        assert_eq!(block_on(s.get(CO, far)).unwrap(), Some(far_rec));
        block_on(s.rollback()).unwrap();
        assert_eq!(block_on(s.get(CO, far)).unwrap(), None);
        assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
        // Commit something after each rollback: each leaves a hole to remember or heal.
        block_on(track::update(
            &EXAMPLE,
            &mut s,
            CO,
            c,
            &company("A"),
            10 + i as u64,
        ))
        .unwrap();
        seen.push(s.aborted_ranges());
    }
    // The aborted ranges fill up, get healed, fill up again.
    assert_eq!(
        seen.iter().max(),
        Some(&ferrysync_flash::MAX_HOLES),
        "{seen:?}"
    );
    assert!(seen.windows(2).any(|w| w[1] < w[0]), "{seen:?}");
    let after = block_on(snapshot(&mut s)).unwrap();
    let mut again = small_store(s.into_flash());
    assert_eq!(block_on(snapshot(&mut again)).unwrap(), after);
}

/// More buckets with pending records than the state item lists: walks of pending records
/// still find every one, and after a sync confirms them the list works again.
#[test]
fn many_pending_buckets() {
    type Mid = sequential_storage::mock_flash::MockFlashBase<128, 4, 1024>;
    let flash = Mid::new(
        sequential_storage::mock_flash::WriteCountCheck::Twice,
        None,
        false,
    );
    let mut s: Box<
        ferrysync_flash::FlashStore<Mid, ferrysync_flash::StoreCache<16, 512>, 1536, 8>,
    > = Box::new(
        ferrysync_flash::FlashStore::try_new(
            flash,
            Mid::FULL_FLASH_RANGE,
            ferrysync_flash::store_cache(),
        )
        .unwrap(),
    );
    let n = 8 * 200;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            block_on(track::insert(
                &EXAMPLE,
                &mut *s,
                CO,
                None,
                &company(&format!("C{i}")),
                i as u64,
            ))
            .unwrap(),
        );
    }
    let pend = block_on(pending(&mut *s)).unwrap();
    assert_eq!(pend.len(), n);
    let mut server = FakeServer::new();
    let r = sync_with(&mut *s, &mut server).unwrap();
    assert_eq!(r.mapped as usize, n);
    assert!(block_on(pending(&mut *s)).unwrap().is_empty());
    // One edit here and there: exactly those are pending, also after a reboot.
    for k in [3usize, 700, 1500] {
        block_on(track::update(
            &EXAMPLE,
            &mut *s,
            CO,
            ids[k],
            &company("edited"),
            10_000 + k as u64,
        ))
        .unwrap();
    }
    let want: Vec<_> = [3usize, 700, 1500].iter().map(|&k| (CO, ids[k])).collect();
    let before = s.flash_mut().stats_snapshot();
    assert_eq!(block_on(pending(&mut *s)).unwrap(), want);
    // The sync that confirmed them listed the buckets again: the walk (one per table) reads
    // the three edited buckets, not all 400.
    let reads = before.compare_to(s.flash_mut().stats_snapshot()).reads;
    assert!(
        reads <= 2 * 3 * 4,
        "{reads} flash reads to walk 3 pending records"
    );
    let flash = s.into_flash();
    let mut s: Box<
        ferrysync_flash::FlashStore<Mid, ferrysync_flash::StoreCache<16, 512>, 1536, 8>,
    > = Box::new(
        ferrysync_flash::FlashStore::try_new(
            flash,
            Mid::FULL_FLASH_RANGE,
            ferrysync_flash::store_cache(),
        )
        .unwrap(),
    );
    assert_eq!(block_on(pending(&mut *s)).unwrap(), want);
    let snap = block_on(snapshot(&mut *s)).unwrap();
    assert_eq!(snap.records.len(), n);
}

/// After a reboot the key caches are empty: a lookup scans at most one sub-map (16 pages), and
/// a record whose bucket never existed costs no read at all.
#[test]
fn cold_lookups_scan_one_sub_map_at_most() {
    type Mid = sequential_storage::mock_flash::MockFlashBase<128, 4, 1024>;
    type MidStore = ferrysync_flash::FlashStore<Mid, ferrysync_flash::StoreCache<16, 512>, 1536, 8>;
    let open = |f: Mid| -> Box<MidStore> {
        Box::new(
            ferrysync_flash::FlashStore::try_new(
                f,
                Mid::FULL_FLASH_RANGE,
                ferrysync_flash::store_cache(),
            )
            .unwrap(),
        )
    };
    let mut s = open(Mid::new(
        sequential_storage::mock_flash::WriteCountCheck::Twice,
        None,
        false,
    ));
    let mut server = FakeServer::new();
    for _ in 0..40 {
        Step::ServerAdd { kids: 14 }
            .apply(&mut *s, &mut server, 1)
            .unwrap();
    }
    sync_with(&mut *s, &mut server).unwrap();
    let snap = block_on(snapshot(&mut *s)).unwrap();
    assert_eq!(snap.records.len(), 600);
    assert_eq!(s.sub_maps(), 8);
    let sub_map_bytes = 16 * 4096;
    let mut s = open(s.into_flash());
    block_on(s.mount()).unwrap();
    let mut worst = 0;
    for (r, _) in snap.records.iter().step_by(37) {
        let before = s.flash_mut().stats_snapshot();
        assert_eq!(
            block_on(s.by_server(r.table, r.server.unwrap())).unwrap(),
            Some(*r)
        );
        let read = before.compare_to(s.flash_mut().stats_snapshot()).bytes_read;
        worst = worst.max(read);
        // An index bucket and a record bucket, each found within its sub-map.
        assert!(
            read <= 2 * sub_map_bytes,
            "{read} bytes read for one lookup"
        );
    }
    assert!(worst > 0);
    // A local id far above every record: its bucket is known absent, nothing is read.
    let before = s.flash_mut().stats_snapshot();
    assert_eq!(
        block_on(s.get(CO, ferrysync_core::id::LocalId(5_000))).unwrap(),
        None
    );
    assert_eq!(
        before.compare_to(s.flash_mut().stats_snapshot()).bytes_read,
        0
    );
}

/// A sweep in a transaction that began on an empty store, whose records all carry the sweep's
/// mark (a new device's first full refresh), reads nothing and removes nothing; with another
/// mark, or once the store held records before the transaction, it walks and removes as the
/// trait's default does.
#[test]
fn sweep_of_a_fresh_full_refresh_skips_its_walk() {
    use ferrysync_core::id::{LocalId, ServerId};
    use ferrysync_core::meta::SyncMeta;
    use ferrysync_core::store::{DeviceState, Record};
    use ferrysync_core::Hlc;
    let rec = |local: u32, mark: u32| Record {
        table: CO,
        local: LocalId(local),
        server: Some(ServerId(u64::from(local) + 100)),
        parent: None,
        meta: SyncMeta::from_server(Hlc::new(1_000, 0, 0)),
        mark,
    };
    let body = company("ACME");
    let mut s = small_store(small_flash());
    block_on(s.begin()).unwrap();
    for l in 0..6 {
        block_on(s.put(&rec(l, 5), Some(&body))).unwrap();
    }
    let before = s.flash_mut().stats_snapshot();
    block_on(s.sweep(CO, 5)).unwrap();
    let read = before.compare_to(s.flash_mut().stats_snapshot()).bytes_read;
    assert_eq!(
        read, 0,
        "the sweep of a fresh full refresh read {read} bytes"
    );
    assert_eq!(block_on(snapshot(&mut s)).unwrap().records.len(), 6);
    // Another mark: every record is stale, the walk removes them all.
    block_on(s.sweep(CO, 6)).unwrap();
    assert_eq!(block_on(snapshot(&mut s)).unwrap().records.len(), 0);
    block_on(s.rollback()).unwrap();

    // Records committed before the transaction: a sweep with the mark of this transaction's
    // puts removes the older ones it did not put again.
    block_on(s.begin()).unwrap();
    for l in 0..6 {
        block_on(s.put(&rec(l, 5), Some(&body))).unwrap();
    }
    let state = DeviceState {
        next_local: 6,
        ..DeviceState::default()
    };
    block_on(s.commit(&state)).unwrap();
    block_on(s.begin()).unwrap();
    block_on(s.put(&rec(2, 7), Some(&body))).unwrap();
    block_on(s.sweep(CO, 7)).unwrap();
    block_on(s.commit(&state)).unwrap();
    let left = block_on(snapshot(&mut s)).unwrap();
    assert_eq!(left.records.len(), 1, "{left:?}");
}
