//! A full flash is a clear error that loses nothing; a flash full of garbage never panics.

mod common;

use common::*;
use ferrysync_core::engine::SyncError;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::LocalStore;
use ferrysync_core::track::{self, TrackError};
use ferrysync_flash::{FlashError, FlashStore, NoCache};
use pollster::block_on;

#[test]
fn full_flash_fails_an_insert_cleanly() {
    let mut s = small_store(small_flash());
    let c = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CO,
        None,
        &company("ACME"),
        1,
    ))
    .unwrap();
    let mut n = 0u64;
    let (before, err) = loop {
        let before = block_on(snapshot(&mut s)).unwrap();
        let name = format!("contact number {n} with a long name to fill pages");
        match block_on(track::insert(
            &EXAMPLE,
            &mut s,
            CT,
            Some(c),
            &contact(&name),
            10 + n,
        )) {
            Ok(_) => n += 1,
            Err(e) => break (before, e),
        }
        assert!(n < 10_000);
    };
    assert_eq!(
        err,
        TrackError::Store(FlashError::Full),
        "after {n} inserts"
    );
    assert!(n > 20, "only {n} records fit");
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before, "nothing lost");
    // Power off and on: the same data.
    let mut s = small_store(s.into_flash());
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
    // Still full, still clean.
    let name = format!("contact number {n} with a long name to fill pages");
    let again = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact(&name),
        99_999,
    ));
    assert!(
        matches!(again, Err(TrackError::Store(FlashError::Full))),
        "{again:?}"
    );
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
    println!("{n} contacts fit in 16 KiB");
}

#[test]
fn full_flash_fails_a_sync_cleanly_and_keeps_changes_pending() {
    let mut s = small_store(small_flash());
    let mut server = FakeServer::new();
    let c = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CO,
        None,
        &company("ACME"),
        1,
    ))
    .unwrap();
    block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Ann"),
        2,
    ))
    .unwrap();
    // The server holds far more than the device can store.
    for _ in 0..8 {
        Step::ServerAdd { kids: 30 }
            .apply(&mut s, &mut server, 3)
            .unwrap();
    }
    let before = block_on(snapshot(&mut s)).unwrap();
    let pend = block_on(pending(&mut s)).unwrap();
    assert_eq!(pend.len(), 2);
    let err = sync_with(&mut s, &mut server).unwrap_err();
    assert_eq!(err, SyncError::Store(FlashError::Full));
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
    assert_eq!(block_on(pending(&mut s)).unwrap(), pend);
    let mut s = small_store(s.into_flash());
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
    // A local edit now: the failed sync's items were shrunk to tombstones to make room. On a
    // flash this small that may still not be enough; either way, nothing is lost.
    match block_on(track::update(
        &EXAMPLE,
        &mut s,
        CO,
        c,
        &company("ACME 2"),
        5,
    )) {
        Ok(()) => assert_eq!(block_on(pending(&mut s)).unwrap(), pend),
        Err(e) => {
            assert_eq!(e, TrackError::Store(FlashError::Full));
            assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
        }
    }
    let mut s = small_store(s.into_flash());
    assert_eq!(block_on(pending(&mut s)).unwrap(), pend);
}

#[test]
fn full_flash_sync_that_only_just_overflows_leaves_room_for_local_work() {
    let mut s = small_store(small_flash());
    let mut server = FakeServer::new();
    let c = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CO,
        None,
        &company("ACME"),
        1,
    ))
    .unwrap();
    // Fill most of the flash with committed data, then a sync that does not fit.
    for _ in 0..4 {
        Step::ServerAdd { kids: 30 }
            .apply(&mut s, &mut server, 3)
            .unwrap();
    }
    sync_with(&mut s, &mut server).unwrap();
    for _ in 0..3 {
        Step::ServerAdd { kids: 30 }
            .apply(&mut s, &mut server, 3)
            .unwrap();
    }
    let before = block_on(snapshot(&mut s)).unwrap();
    assert_eq!(
        sync_with(&mut s, &mut server).unwrap_err(),
        SyncError::Store(FlashError::Full)
    );
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), before);
    block_on(track::update(
        &EXAMPLE,
        &mut s,
        CO,
        c,
        &company("ACME 2"),
        5,
    ))
    .unwrap();
    let mut s = small_store(s.into_flash());
    assert_eq!(block_on(pending(&mut s)).unwrap(), vec![(CO, c)]);
}

/// A tiny xorshift, so the test needs no dependency.
fn noise(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

#[test]
fn garbage_image_never_panics() {
    for seed in 0..64u64 {
        let mut f = small_flash();
        noise(seed, f.as_bytes_mut());
        if seed % 4 == 1 {
            // Mostly erased, with garbage in places: closer to a half-written image.
            let bytes = f.as_bytes_mut();
            for (i, b) in bytes.iter_mut().enumerate() {
                if (i / 97) % 3 != 0 {
                    *b = 0xFF;
                }
            }
        }
        // Uncached: with its internal `_test` feature on (as in these tests), sequential-storage
        // asserts on key-cache misses that a release build just repairs.
        let mut s: FlashStore<Small, NoCache, 1024, 1> =
            FlashStore::try_new(f, Small::FULL_FLASH_RANGE, NoCache).unwrap();
        // Whatever it answers, it must answer.
        let _ = block_on(s.mount());
        let _ = block_on(snapshot(&mut s));
        let _ = block_on(track::insert(&EXAMPLE, &mut s, CO, None, &company("A"), 1));
        let _ = block_on(s.next(CO, None, ferrysync_core::store::Filter::All));
        let _ = block_on(s.by_server(CO, ferrysync_core::id::ServerId(3)));
        // Formatting always gives a working, empty store.
        block_on(s.format()).unwrap();
        let c = block_on(track::insert(&EXAMPLE, &mut s, CO, None, &company("A"), 1)).unwrap();
        assert!(block_on(s.get(CO, c)).unwrap().is_some());
    }
}
