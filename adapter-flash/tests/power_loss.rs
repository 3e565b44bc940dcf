//! Power cut at every byte (or every few bytes) an operation writes: after each cut the store,
//! mounted again from the same flash, holds exactly the state before the operation or after it,
//! everything unconfirmed is still pending, and the next operation works.

mod common;

use common::*;
use ferrysync_core::mem::MemStore;
use ferrysync_flash::{store_cache, FlashStore, StoreCache};
use pollster::block_on;
use sequential_storage::mock_flash::{MockFlashBase, WriteCountCheck};

/// A flash of 64 pages of 1 KiB: the store cuts it into four sub-maps.
type Two = MockFlashBase<64, 4, 256>;

/// A mock flash and the store the sweep runs on it.
trait Rig: Clone {
    type Store: ferrysync_core::store::LocalStore<Error: std::fmt::Debug>;
    fn fresh() -> Self;
    fn store(self) -> Self::Store;
    fn back(s: Self::Store) -> Self;
    fn cut_after(&mut self, n: Option<u32>);
    fn left(&self) -> Option<u32>;
    fn erases_since(&self, before: &Self) -> u64;
}

macro_rules! rig {
    ($flash:ty, $store:ty, $fresh:expr) => {
        impl Rig for $flash {
            type Store = $store;
            fn fresh() -> Self {
                $fresh
            }
            fn store(self) -> $store {
                FlashStore::try_new(self, <$flash>::FULL_FLASH_RANGE, store_cache()).unwrap()
            }
            fn back(s: $store) -> Self {
                s.into_flash()
            }
            fn cut_after(&mut self, n: Option<u32>) {
                self.bytes_until_shutoff = n;
            }
            fn left(&self) -> Option<u32> {
                self.bytes_until_shutoff
            }
            fn erases_since(&self, before: &Self) -> u64 {
                before
                    .stats_snapshot()
                    .compare_to(self.stats_snapshot())
                    .erases
            }
        }
    };
}

rig!(Small, SmallStore, small_flash());
rig!(
    Two,
    FlashStore<Two, StoreCache<16, 128>, 1024, 4>,
    MockFlashBase::new(WriteCountCheck::Twice, None, true)
);

struct Case {
    setup: Vec<Step>,
    op: Vec<Step>,
    stride: u32,
}

/// Bytes the operation writes and erases (the mock flash's power-cut counter counts both).
fn cost<R: Rig>(flash: &R, server: &FakeServer, op: &[Step]) -> u32 {
    let mut f = flash.clone();
    f.cut_after(Some(u32::MAX));
    let mut s = f.store();
    let mut server = server.clone();
    for (i, st) in op.iter().enumerate() {
        st.apply(&mut s, &mut server, 50_000 + i as u64).unwrap();
    }
    let f = R::back(s);
    ERASES.with(|e| e.set(f.erases_since(flash)));
    u32::MAX - f.left().unwrap()
}

thread_local! {
    static ERASES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn run(case: Case) -> (u32, u32) {
    run_on::<Small>(case)
}

fn run_on<R: Rig>(case: Case) -> (u32, u32) {
    // The model and the flash store go through the same setup.
    let mut model = MemStore::new();
    let mut mserver = FakeServer::new();
    let mut s = R::fresh().store();
    let mut server = FakeServer::new();
    for (i, st) in case.setup.iter().enumerate() {
        st.apply(&mut model, &mut mserver, 1_000 + i as u64)
            .unwrap();
        st.apply(&mut s, &mut server, 1_000 + i as u64).unwrap();
    }
    let pre = block_on(snapshot(&mut s)).unwrap();
    assert_eq!(pre, block_on(snapshot(&mut model)).unwrap(), "setup");
    let base = R::back(s);
    // The operation, uninterrupted, on the model and on the flash.
    for (i, st) in case.op.iter().enumerate() {
        st.apply(&mut model, &mut mserver, 50_000 + i as u64)
            .unwrap();
    }
    let post = block_on(snapshot(&mut model)).unwrap();
    let total = cost(&base, &server, &case.op);
    let mut cuts = 0;
    let mut at_post = 0;
    let mut n = 0;
    while n < total {
        let mut f = base.clone();
        f.cut_after(Some(n));
        let mut s = f.store();
        let mut srv = server.clone();
        let mut failed = false;
        for (i, st) in case.op.iter().enumerate() {
            if st.apply(&mut s, &mut srv, 50_000 + i as u64).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "cut at byte {n} of {total} went unnoticed");
        cuts += 1;
        // Power back: mount the same bytes.
        let mut f = R::back(s);
        f.cut_after(None);
        let mut s = f.store();
        let snap = block_on(snapshot(&mut s)).unwrap_or_else(|e| panic!("cut at {n}: {e:?}"));
        if snap == pre {
            // Nothing happened: every pending change is still pending (same snapshot), and the
            // operation, run again, converges.
            let mut srv = server.clone();
            for (i, st) in case.op.iter().enumerate() {
                st.apply(&mut s, &mut srv, 50_000 + i as u64)
                    .unwrap_or_else(|e| panic!("retry after cut at {n}: {e}"));
            }
            let again = block_on(snapshot(&mut s)).unwrap();
            assert_eq!(again, post, "retry after cut at {n}");
        } else {
            assert_eq!(
                snap, post,
                "cut at byte {n} of {total}: neither before nor after"
            );
            at_post += 1;
            // The next operation works and survives a remount.
            Step::Insert {
                parent: None,
                name: "Probe".into(),
            }
            .apply(&mut s, &mut FakeServer::new(), 90_000)
            .unwrap_or_else(|e| panic!("next op after cut at {n}: {e}"));
        }
        let mut s = R::back(s).store();
        block_on(snapshot(&mut s)).unwrap();
        n += case.stride;
    }
    println!("{cuts} cuts over {total} bytes, {at_post} after the commit");
    (cuts, total)
}

fn offline_three() -> Vec<Step> {
    vec![
        Step::ServerAdd { kids: 1 },
        Step::Insert {
            parent: None,
            name: "ACME".into(),
        },
        Step::Insert {
            parent: Some(0),
            name: "Ann".into(),
        },
        Step::Insert {
            parent: Some(0),
            name: "Bob".into(),
        },
    ]
}

#[test]
fn local_insert_every_byte() {
    let mut setup = offline_three();
    setup.push(Step::Sync);
    run(Case {
        setup,
        op: vec![Step::Insert {
            parent: Some(0),
            name: "Cyd".into(),
        }],
        stride: 1,
    });
}

#[test]
fn local_update_and_cascading_delete_every_byte() {
    let mut setup = offline_three();
    setup.push(Step::Sync);
    run(Case {
        setup: setup.clone(),
        op: vec![Step::Update {
            idx: 1,
            name: "Ann the second".into(),
        }],
        stride: 1,
    });
    run(Case {
        setup,
        op: vec![Step::Delete { idx: 0 }],
        stride: 1,
    });
}

#[test]
fn first_sync_every_byte() {
    let (cuts, total) = run(Case {
        setup: offline_three(),
        op: vec![Step::Sync],
        stride: 1,
    });
    assert_eq!(cuts, total);
}

#[test]
fn delta_sync_with_removes_and_rejects_every_byte() {
    let mut setup = offline_three();
    setup.extend([
        Step::Sync,
        Step::ServerAdd { kids: 2 },
        Step::Update {
            idx: 1,
            name: "Ann 2".into(),
        },
        Step::Delete { idx: 2 },
        Step::Insert {
            parent: Some(1),
            name: "Dan".into(),
        },
        Step::ServerDelete { idx: 0 },
        Step::Refuse { idx: 0 },
    ]);
    run(Case {
        setup,
        op: vec![Step::Sync],
        stride: 1,
    });
}

#[test]
fn sync_across_page_migrations_strided() {
    // Enough writes before that the sync's own writes wrap the small flash: pages are
    // migrated and erased while it runs.
    let mut setup = offline_three();
    setup.push(Step::Sync);
    setup.push(Step::ServerAdd { kids: 3 });
    let op = vec![Step::Sync];
    let mut s = small_store(small_flash());
    let mut server = FakeServer::new();
    for (i, st) in setup.iter().enumerate() {
        st.apply(&mut s, &mut server, 1_000 + i as u64).unwrap();
    }
    let mut i = 0;
    loop {
        cost(&s.flash_mut().clone(), &server, &op);
        if ERASES.with(|e| e.get()) > 0 {
            break;
        }
        let st = Step::Update {
            idx: i % 2,
            name: format!("edited {i}"),
        };
        st.apply(&mut s, &mut server, 1_000 + setup.len() as u64)
            .unwrap();
        setup.push(st);
        i += 1;
        assert!(i < 400, "never wrapped");
    }
    println!("{i} updates before the sync");
    run(Case {
        setup,
        op,
        stride: 9,
    });
    assert!(ERASES.with(|e| e.get()) > 0, "the sync erased pages");
}

#[test]
fn healing_aborted_transactions_every_byte() {
    // Rolled-back transactions leave items behind; once the state item's list of aborted
    // ranges is full, the next `begin` rewrites them. A cut anywhere in there is harmless.
    let mut setup = offline_three();
    setup.push(Step::Sync);
    for i in 0..ferrysync_flash::MAX_HOLES {
        setup.push(Step::Abort);
        setup.push(Step::Update {
            idx: i,
            name: format!("v{i}"),
        });
    }
    setup.push(Step::Abort);
    run(Case {
        setup,
        op: vec![Step::Update {
            idx: 0,
            name: "after heal".into(),
        }],
        stride: 1,
    });
}

#[test]
fn larger_first_sync_sampled() {
    let mut setup = offline_three();
    for i in 0..12 {
        setup.push(Step::Insert {
            parent: Some(i % 3),
            name: format!("Local {i}"),
        });
    }
    setup.push(Step::ServerAdd { kids: 15 });
    run(Case {
        setup,
        op: vec![Step::Sync],
        stride: 23,
    });
}

/// The larger first sync on a store cut into four sub-maps (the state item, the marker and the
/// buckets land in different maps).
#[test]
fn first_sync_on_four_sub_maps_sampled() {
    let mut setup = offline_three();
    for i in 0..12 {
        setup.push(Step::Insert {
            parent: Some(i % 3),
            name: format!("Local {i}"),
        });
    }
    setup.push(Step::ServerAdd { kids: 15 });
    let mut s = Two::fresh().store();
    assert_eq!(s.sub_maps(), 4);
    block_on(ferrysync_core::store::LocalStore::load_state(&mut s)).unwrap();
    run_on::<Two>(Case {
        setup,
        op: vec![Step::Sync],
        stride: 13,
    });
}
