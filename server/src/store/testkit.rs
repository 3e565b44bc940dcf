//! Checks every [`ServerStore`] must pass, run by each store's unit tests.

use super::{Incoming, OwnedChange, ReplyItem, ReplyPlan, ServerStore, StoreError, SyncParams};
use ferrysync_core::body::{encode, Value};
use ferrysync_core::wire::{Mode, Op};
use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};

/// Body of an example-schema company.
fn company(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let t = &ferrysync_core::schema::EXAMPLE.tables[0];
    encode(
        t,
        &[Value::Text(name), Value::Text("c"), Value::Text("p")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// Server time 1,000 s, 1 s of skew, 10 s of tombstones.
fn params() -> SyncParams {
    SyncParams {
        now_ms: 1_000_000,
        max_skew_ms: 1_000,
        tombstone_retention_ms: 10_000,
    }
}

/// A sync that ends without `Commit` leaves nothing; with it, the change is applied,
/// mapped and read back; devices are found by token hash and revoked.
pub(crate) fn commits_only_on_commit(store: &dyn ServerStore) {
    let dev = store.add_device("north", &[7; 32], 1).unwrap();
    let change = |l: u32| OwnedChange {
        table: TableId(0),
        op: Op::Add,
        key: RecordRef::Local(LocalId(l)),
        parent: None,
        modified_at: Hlc::new(999_000, 0, dev.id),
        body: company("ACME"),
    };
    // The source ends without Commit: rolled back.
    let mut cut = vec![Incoming::Change(change(1))].into_iter();
    assert!(matches!(
        store.sync(&dev, params(), &mut cut),
        Err(StoreError::Aborted)
    ));
    let mut reply = Vec::new();
    let plan = ReplyPlan {
        scope: "north",
        mode: Mode::Full,
        cursor: None,
        extra: &[],
    };
    let cursor = store
        .read_reply(&plan, &mut |i| {
            reply.push(format!("{i:?}"));
            Ok(())
        })
        .unwrap();
    assert_eq!((cursor, reply.len()), (0, 1), "only Reset: {reply:?}");
    // With Commit: applied, mapped, readable.
    let mut ok = vec![Incoming::Change(change(1)), Incoming::Commit].into_iter();
    let out = store.sync(&dev, params(), &mut ok).unwrap();
    assert_eq!(out.mappings.len(), 1);
    assert_eq!(out.applied, 1);
    let mut n = 0;
    let cursor = store
        .read_reply(&plan, &mut |i| {
            if let ReplyItem::Upsert(u) = i {
                assert_eq!(u.body, company("ACME"));
                n += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!((cursor, n), (1, 1));
    // The device lookup by token hash, and revocation.
    let found = store.authenticate(&[7; 32]).unwrap().unwrap();
    assert_eq!(found.id, dev.id);
    assert!(store.revoke_device(dev.id).unwrap());
    assert!(store.authenticate(&[7; 32]).unwrap().unwrap().revoked);
    assert!(store.authenticate(&[8; 32]).unwrap().is_none());
}
