//! Checks every [`ServerStore`] must pass, run by each store's unit tests.

use super::{Incoming, OwnedChange, ReplyItem, ReplyPlan, ServerStore, StoreError, SyncParams};
use ferrysync_core::body::{encode, Value};
use ferrysync_core::wire::{Mode, Op, Upsert};
use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};

/// Body of an example-schema company.
pub(crate) fn company(name: &str) -> Vec<u8> {
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
pub(crate) fn params() -> SyncParams {
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

/// Body of an example-schema contact.
fn contact(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let t = &ferrysync_core::schema::EXAMPLE.tables[1];
    encode(
        t,
        &[Value::Text(name), Value::Text("e"), Value::Text("p")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// Live records of scope `north` read back in full: `(table, server id) → what` of each.
fn read_live<T>(
    store: &dyn ServerStore,
    what: impl Fn(&Upsert<'_>) -> T,
) -> std::collections::BTreeMap<(u8, u64), T> {
    let plan = ReplyPlan {
        scope: "north",
        mode: Mode::Full,
        cursor: None,
        extra: &[],
    };
    let mut rows = std::collections::BTreeMap::new();
    store
        .read_reply(&plan, &mut |i| {
            if let ReplyItem::Upsert(u) = i {
                rows.insert((u.table.0, u.id.0), what(&u));
            }
            Ok(())
        })
        .unwrap();
    rows
}

/// Live records of scope `north` read back in full: `(table, server id) → body`.
fn read_all(store: &dyn ServerStore) -> std::collections::BTreeMap<(u8, u64), Vec<u8>> {
    read_live(store, |u| u.body.to_vec())
}

/// A batch larger than any write batch of a store, adds of both tables interleaved with
/// changes of records added earlier in the same batch (an update and a delete through their
/// local ids, a detail whose master comes later, one whose master came after other details);
/// then the same adds retried, and a new record after the largest id was deleted.
pub(crate) fn large_mixed_batches(store: &dyn ServerStore) {
    let dev = store.add_device("north", &[9; 32], 1).unwrap();
    let at = |ms: u64| Hlc::new(ms, 0, dev.id);
    let add = |t: u8, l: u32, parent: Option<u32>, body: Vec<u8>| OwnedChange {
        table: TableId(t),
        op: Op::Add,
        key: RecordRef::Local(LocalId(l)),
        parent: parent.map(|p| RecordRef::Local(LocalId(p))),
        modified_at: at(999_000),
        body,
    };
    let companies: Vec<OwnedChange> = (1..=150)
        .map(|l| add(0, l, None, company(&format!("co{l}"))))
        .collect();
    let mut batch = companies.clone();
    for j in 1..=300u32 {
        batch.push(add(1, j, Some(j % 150 + 1), contact(&format!("ct{j}"))));
        if j == 100 {
            batch.push(OwnedChange {
                table: TableId(0),
                op: Op::Update,
                key: RecordRef::Local(LocalId(3)),
                parent: None,
                modified_at: at(999_001),
                body: company("Renamed"),
            });
            batch.push(OwnedChange {
                table: TableId(1),
                op: Op::Delete,
                key: RecordRef::Local(LocalId(5)),
                parent: None,
                modified_at: at(999_001),
                body: Vec::new(),
            });
            // Its master is added further down: refused.
            batch.push(add(1, 301, Some(151), contact("early")));
        }
    }
    batch.push(add(0, 151, None, company("late")));
    batch.push(add(1, 302, Some(151), contact("after")));
    let mut source = batch
        .into_iter()
        .map(Incoming::Change)
        .chain([Incoming::Commit]);
    let out = store.sync(&dev, params(), &mut source).unwrap();
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert_eq!(out.rejected[0].key, RecordRef::Local(LocalId(301)));
    assert_eq!(out.mappings.len(), 150 + 300 + 2);
    let server = |t: u8, l: u32| {
        out.mappings
            .iter()
            .find(|m| m.table.0 == t && m.local.0 == l)
            .map(|m| m.server.0)
            .unwrap()
    };
    let rows = read_all(store);
    // 151 companies, 301 contacts less the deleted one.
    assert_eq!(rows.len(), 151 + 300, "{rows:?}");
    assert_eq!(rows[&(0, server(0, 3))], company("Renamed"));
    assert_eq!(rows[&(0, server(0, 4))], company("co4"));
    assert!(!rows.contains_key(&(1, server(1, 5))));
    assert_eq!(rows[&(1, server(1, 302))], contact("after"));
    // The adds again (a lost reply): the same ids, nothing new.
    let mut retry = companies
        .into_iter()
        .map(Incoming::Change)
        .chain([Incoming::Commit]);
    let again = store.sync(&dev, params(), &mut retry).unwrap();
    assert_eq!(again.mappings.len(), 150);
    for m in &again.mappings {
        assert_eq!(m.server.0, server(0, m.local.0));
    }
    assert_eq!(read_all(store).len(), rows.len());
    // The largest company id deleted, then a new company: its id is still new.
    let last = server(0, 151);
    assert_eq!(
        Some(&last),
        rows.keys().filter(|k| k.0 == 0).map(|k| &k.1).max()
    );
    let mut delete = [
        Incoming::Change(OwnedChange {
            table: TableId(0),
            op: Op::Delete,
            key: RecordRef::Local(LocalId(151)),
            parent: None,
            modified_at: at(999_002),
            body: Vec::new(),
        }),
        Incoming::Change(add(0, 152, None, company("new"))),
        Incoming::Commit,
    ]
    .into_iter();
    let out = store.sync(&dev, params(), &mut delete).unwrap();
    assert_eq!(out.mappings.len(), 1);
    assert!(
        out.mappings[0].server.0 > last,
        "{:?} reuses {last}",
        out.mappings
    );
}

/// What a reply read yields, in short: `Reset`, `U(table, id)`, `R(table, id)`.
fn reply_items(
    store: &dyn ServerStore,
    mode: Mode,
    cursor: Option<u64>,
    extra: &[(TableId, ferrysync_core::ServerId)],
    written: super::Written,
) -> Vec<String> {
    let plan = ReplyPlan {
        scope: "north",
        mode,
        cursor,
        extra,
    };
    let mut items = Vec::new();
    store
        .read_sync_reply(&plan, written, &mut |i| {
            items.push(match i {
                ReplyItem::Reset => "Reset".to_string(),
                ReplyItem::Upsert(u) => format!("U{}:{}", u.table.0, u.id.0),
                ReplyItem::Remove(r) => format!("R{}:{}", r.table.0, r.id.0),
            });
            Ok(())
        })
        .unwrap();
    items
}

/// The reply to a sync leaves out the rows that sync wrote, in full and delta replies, but
/// sends those stored with another clock than sent, removes what its cascades deleted (full
/// replies too), and removes a retried add deleted since.
pub(crate) fn sync_reply_leaves_out_what_the_sync_wrote(store: &dyn ServerStore) {
    let a = store.add_device("north", &[5; 32], 1).unwrap();
    let b = store.add_device("north", &[6; 32], 1).unwrap();
    let add = |dev: u32, t: u8, l: u32, parent: Option<u32>, ms: u64| OwnedChange {
        table: TableId(t),
        op: Op::Add,
        key: RecordRef::Local(LocalId(l)),
        parent: parent.map(|p| RecordRef::Local(LocalId(p))),
        modified_at: Hlc::new(ms, 0, dev),
        body: if t == 0 { company("c") } else { contact("k") },
    };
    let sync = |dev: &super::Device, changes: Vec<OwnedChange>| {
        let mut source = changes
            .into_iter()
            .map(Incoming::Change)
            .chain([Incoming::Commit]);
        store.sync(dev, params(), &mut source).unwrap()
    };
    // B first: one company (seq 1), its stamp without a device id (batched changes carry none):
    // stored as sent but for the device id, which the server sets, so not sent back.
    let from_b = sync(&b, vec![add(0, 0, 1, None, 999_000)]);
    let b1 = from_b.mappings[0].server.0;
    assert!(from_b.losers.is_empty(), "{:?}", from_b.losers);
    assert_eq!((from_b.written.after, from_b.written.upto), (0, 1));
    // A: a company with a contact, and a company stamped past the allowed skew (seq 2..=4).
    let far = params().now_ms + 60_000;
    let out = sync(
        &a,
        vec![
            add(a.id, 0, 1, None, 999_000),
            add(a.id, 1, 1, Some(1), 999_000),
            add(a.id, 0, 2, None, far),
        ],
    );
    assert_eq!((out.written.after, out.written.upto), (1, 4));
    let id = |t: u8, l: u32| {
        out.mappings
            .iter()
            .find(|m| m.table.0 == t && m.local.0 == l)
            .unwrap()
            .server
            .0
    };
    let (a1, a1k, a2) = (id(0, 1), id(1, 1), id(0, 2));
    assert_eq!(out.losers, vec![(TableId(0), ferrysync_core::ServerId(a2))]);
    // Full reply: B's company, and the clamped one; not what A sent as it is stored.
    let full = reply_items(store, Mode::Full, None, &out.losers, out.written);
    assert_eq!(
        full,
        ["Reset".to_string(), format!("U0:{b1}"), format!("U0:{a2}")]
    );
    // Everything without the sync's range (what `read_reply` reads).
    let all = reply_items(store, Mode::Full, None, &[], super::Written::default());
    assert_eq!(all.len(), 1 + 4, "{all:?}");
    // Delta from cursor 1: nothing of B (before the cursor), A's clamped company only.
    let delta = reply_items(store, Mode::Delta, Some(1), &out.losers, out.written);
    assert_eq!(delta, [format!("U0:{a2}")]);
    // Delta from cursor 0 (B's company after it, not written by A's sync).
    let delta0 = reply_items(store, Mode::Delta, Some(0), &[], out.written);
    assert_eq!(delta0, [format!("U0:{b1}")]);
    // A deletes its company: the cascade takes the contact; even a full reply removes both.
    let del = sync(
        &a,
        vec![OwnedChange {
            table: TableId(0),
            op: Op::Delete,
            key: RecordRef::Local(LocalId(1)),
            parent: None,
            modified_at: Hlc::new(999_001, 0, a.id),
            body: Vec::new(),
        }],
    );
    let full = reply_items(store, Mode::Full, None, &del.losers, del.written);
    assert_eq!(
        full,
        [
            "Reset".to_string(),
            format!("U0:{b1}"),
            format!("U0:{a2}"),
            format!("R1:{a1k}"),
            format!("R0:{a1}"),
        ]
    );
    // A's first batch again (its reply was lost): the deleted company is removed, in a full
    // reply too, and nothing is written.
    let retry = sync(&a, vec![add(a.id, 0, 1, None, 999_000)]);
    assert_eq!(retry.mappings[0].server.0, a1);
    assert_eq!(retry.written.after, retry.written.upto);
    let full = reply_items(store, Mode::Full, None, &retry.losers, retry.written);
    assert_eq!(
        full,
        [
            "Reset".to_string(),
            format!("U0:{b1}"),
            format!("U0:{a2}"),
            format!("R0:{a1}"),
        ]
    );
}

/// Builds changes of device `device`: `(table, op, key, parent, wall ms, body)`, stamped on the
/// device's clock at that wall time.
fn changes_of(
    device: u32,
) -> impl Fn(u8, Op, RecordRef, Option<RecordRef>, u64, Vec<u8>) -> OwnedChange {
    move |t, op, key, parent, ms, body| OwnedChange {
        table: TableId(t),
        op,
        key,
        parent,
        modified_at: Hlc::new(ms, 0, device),
        body,
    }
}

/// Updates of a detail that name its parent again, name none, or name another one: the
/// foreign key stays, stays, then moves, and the fields change every time.
pub(crate) fn updates_keep_or_move_the_parent(store: &dyn ServerStore) {
    let dev = store.add_device("north", &[11; 32], 1).unwrap();
    let change = changes_of(dev.id);
    let local = |l: u32| RecordRef::Local(LocalId(l));
    let changes = |list: Vec<OwnedChange>| {
        list.into_iter()
            .map(Incoming::Change)
            .chain(std::iter::once(Incoming::Commit))
            .collect::<Vec<_>>()
            .into_iter()
    };
    let out = store
        .sync(
            &dev,
            params(),
            &mut changes(vec![
                change(0, Op::Add, local(1), None, 990_000, company("A")),
                change(0, Op::Add, local(2), None, 990_000, company("B")),
                change(1, Op::Add, local(1), Some(local(1)), 990_000, contact("x")),
            ]),
        )
        .unwrap();
    let server = |t: u8, l: u32| {
        let m = out
            .mappings
            .iter()
            .find(|m| m.table.0 == t && m.local.0 == l);
        RecordRef::Server(m.unwrap().server)
    };
    let (a, b, x) = (server(0, 1), server(0, 2), server(1, 1));
    let parent_of_x = || {
        let plan = ReplyPlan {
            scope: "north",
            mode: Mode::Full,
            cursor: None,
            extra: &[],
        };
        let mut found = None;
        store
            .read_reply(&plan, &mut |i| {
                if let ReplyItem::Upsert(u) = i {
                    if RecordRef::Server(u.id) == x && u.table.0 == 1 {
                        found = Some((u.parent.map(RecordRef::Server), u.body.to_vec()));
                    }
                }
                Ok(())
            })
            .unwrap();
        found.unwrap()
    };
    let steps = [
        (Some(a), contact("x1"), a),
        (None, contact("x2"), a),
        (Some(b), contact("x3"), b),
        (None, contact("x4"), b),
    ];
    for (k, (parent, body, want)) in steps.into_iter().enumerate() {
        let ms = 991_000 + k as u64;
        let upd = change(1, Op::Update, x, parent, ms, body.clone());
        let out = store.sync(&dev, params(), &mut changes(vec![upd])).unwrap();
        assert_eq!((out.applied, out.rejected.len()), (1, 0), "step {k}");
        assert_eq!(parent_of_x(), (Some(want), body), "step {k}");
    }
}

/// Live records of scope `north` read back in full, with their parents:
/// `(table, server id) → parent`.
fn read_parents(store: &dyn ServerStore) -> std::collections::BTreeMap<(u8, u64), Option<u64>> {
    read_live(store, |u| u.parent.map(|p| p.0))
}

/// A batch of thousands of records per table (more than any store writes in one statement),
/// details under masters of the same batch, then right after them a delete of a master whose
/// only detail is the last one added, and an update of a detail right after its add: every
/// record lands once, under its master, with distinct ids, the cascade takes the detail, the
/// update wins; the whole batch retried changes nothing and gives the same mappings.
pub(crate) fn batches_past_any_statement_size(store: &dyn ServerStore) {
    const N: u32 = 2_500;
    let dev = store.add_device("north", &[12; 32], 1).unwrap();
    let at = |ms: u64| Hlc::new(ms, 0, dev.id);
    let local = |l: u32| RecordRef::Local(LocalId(l));
    let mut batch: Vec<OwnedChange> = Vec::new();
    for l in 1..=N {
        batch.push(OwnedChange {
            table: TableId(0),
            op: Op::Add,
            key: local(l),
            parent: None,
            modified_at: at(999_000),
            body: company(&format!("co{l}")),
        });
    }
    // Contact j under company j * 7 % N + 1: spread over the whole batch.
    let master = |j: u32| j * 7 % N + 1;
    for j in 1..=N {
        batch.push(OwnedChange {
            table: TableId(1),
            op: Op::Add,
            key: local(j),
            parent: Some(local(master(j))),
            modified_at: at(999_000),
            body: contact(&format!("ct{j}")),
        });
    }
    // Company 1: the master of contact N only (j * 7 % N == 0).
    let gone = master(N);
    batch.push(OwnedChange {
        table: TableId(0),
        op: Op::Delete,
        key: local(gone),
        parent: None,
        modified_at: at(999_001),
        body: Vec::new(),
    });
    batch.push(OwnedChange {
        table: TableId(1),
        op: Op::Add,
        key: local(N + 1),
        parent: Some(local(2)),
        modified_at: at(999_000),
        body: contact("added"),
    });
    batch.push(OwnedChange {
        table: TableId(1),
        op: Op::Update,
        key: local(N + 1),
        parent: None,
        modified_at: at(999_001),
        body: contact("renamed"),
    });
    let sync = |changes: &[OwnedChange]| {
        let mut source = changes
            .iter()
            .cloned()
            .map(Incoming::Change)
            .chain([Incoming::Commit]);
        store.sync(&dev, params(), &mut source).unwrap()
    };
    let out = sync(&batch);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected.first());
    assert_eq!(out.mappings.len(), 2 * N as usize + 1);
    let mut server = std::collections::HashMap::new();
    for m in &out.mappings {
        assert!(
            server.insert((m.table.0, m.local.0), m.server.0).is_none(),
            "{m:?} mapped twice"
        );
    }
    let mut ids: Vec<(u8, u64)> = server.iter().map(|(k, v)| (k.0, *v)).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2 * N as usize + 1, "a server id given twice");
    let dropped: Vec<u32> = (1..=N).filter(|&j| master(j) == gone).collect();
    assert_eq!(dropped, [N]);
    let rows = read_parents(store);
    assert_eq!(rows.len(), 2 * N as usize - 1);
    for j in 1..=N {
        let got = rows.get(&(1, server[&(1, j)]));
        if dropped.contains(&j) {
            assert_eq!(got, None, "contact {j} outlived its master");
        } else {
            assert_eq!(got, Some(&Some(server[&(0, master(j))])), "contact {j}");
        }
    }
    assert!(!rows.contains_key(&(0, server[&(0, gone)])));
    let bodies = read_all(store);
    assert_eq!(bodies[&(1, server[&(1, N + 1)])], contact("renamed"));
    assert_eq!(rows[&(1, server[&(1, N + 1)])], Some(server[&(0, 2)]));
    assert_eq!(bodies[&(1, server[&(1, 1)])], contact("ct1"));
    // The whole batch again (a lost reply): the same mappings, nothing written.
    let again = sync(&batch);
    assert_eq!(again.applied, 0);
    assert_eq!(again.written.after, again.written.upto);
    assert_eq!(again.mappings.len(), out.mappings.len());
    for m in &again.mappings {
        assert_eq!(m.server.0, server[&(m.table.0, m.local.0)], "{m:?}");
    }
    assert_eq!(read_parents(store), rows);
}

/// A batch of thousands of adds cut before its end leaves no record and no mapping: the same
/// adds sent again are all new.
pub(crate) fn a_cut_batch_leaves_nothing(store: &dyn ServerStore) {
    const N: u32 = 2_500;
    let dev = store.add_device("north", &[13; 32], 1).unwrap();
    let adds = || {
        (1..=N).flat_map(|l| {
            [
                OwnedChange {
                    table: TableId(0),
                    op: Op::Add,
                    key: RecordRef::Local(LocalId(l)),
                    parent: None,
                    modified_at: Hlc::new(999_000, 0, dev.id),
                    body: company(&format!("co{l}")),
                },
                OwnedChange {
                    table: TableId(1),
                    op: Op::Add,
                    key: RecordRef::Local(LocalId(l)),
                    parent: Some(RecordRef::Local(LocalId(l))),
                    modified_at: Hlc::new(999_000, 0, dev.id),
                    body: contact(&format!("ct{l}")),
                },
            ]
        })
    };
    let mut cut = adds().map(Incoming::Change);
    assert!(matches!(
        store.sync(&dev, params(), &mut cut),
        Err(StoreError::Aborted)
    ));
    assert!(read_all(store).is_empty());
    let mut whole = adds().map(Incoming::Change).chain([Incoming::Commit]);
    let out = store.sync(&dev, params(), &mut whole).unwrap();
    assert_eq!(
        out.applied,
        u64::from(2 * N),
        "a mapping of the cut batch was kept"
    );
    assert_eq!(read_all(store).len(), 2 * N as usize);
}

/// A batch whose changes depend on the batch's own earlier writes, across more changes than
/// a store reads ahead at once: updates of records added earlier in it (through their local
/// ids), three updates of one record (each sees the one before: the stale one loses), an
/// update losing to the stored clock, updates of a record deleted earlier in it and of a
/// detail its delete cascaded to, a second delete, an update of an id that cannot exist;
/// then, past hundreds of adds, more of the same on records the first part wrote (an add of
/// it updated, a master updated three times). Every
/// reply part (applied, mappings, rejections in order, losers in order) and every stored row
/// is what applying them one by one gives.
pub(crate) fn batch_changes_see_the_batchs_own_writes(store: &dyn ServerStore) {
    use ferrysync_core::wire::RejectReason;
    use ferrysync_core::ServerId;
    const PAD: u32 = 300;
    let dev = store.add_device("north", &[13; 32], 1).unwrap();
    let change = changes_of(dev.id);
    let local = |l: u32| RecordRef::Local(LocalId(l));
    let run = |list: Vec<OwnedChange>| {
        let mut source = list
            .into_iter()
            .map(Incoming::Change)
            .chain(std::iter::once(Incoming::Commit));
        store.sync(&dev, params(), &mut source).unwrap()
    };
    let out = run(vec![
        change(0, Op::Add, local(1), None, 990_000, company("A")),
        change(0, Op::Add, local(2), None, 990_000, company("B")),
        change(0, Op::Add, local(3), None, 990_000, company("C")),
        change(1, Op::Add, local(1), Some(local(1)), 990_000, contact("x")),
        change(1, Op::Add, local(2), Some(local(2)), 990_000, contact("y")),
        change(1, Op::Add, local(3), Some(local(3)), 990_000, contact("z")),
    ]);
    let sid = |t: u8, l: u32| {
        let m = out
            .mappings
            .iter()
            .find(|m| m.table.0 == t && m.local.0 == l);
        m.unwrap().server
    };
    let (a, b, c) = (sid(0, 1), sid(0, 2), sid(0, 3));
    let (x, y, z) = (sid(1, 1), sid(1, 2), sid(1, 3));
    let srv = RecordRef::Server;
    let never = ServerId(i64::MAX as u64);
    let upd = |t: u8, key: RecordRef, ms: u64, body| change(t, Op::Update, key, None, ms, body);
    let del = |t: u8, key: RecordRef| change(t, Op::Delete, key, None, 996_000, Vec::new());
    let mut batch = vec![
        upd(1, srv(x), 995_000, contact("x1")),
        change(0, Op::Add, local(4), None, 995_000, company("D")),
        change(1, Op::Add, local(4), Some(local(4)), 995_000, contact("w")),
        upd(0, local(4), 995_100, company("D1")),
        upd(1, local(4), 995_100, contact("w1")),
        upd(1, srv(x), 995_001, contact("x2")),
        // Older than the batch's own "x2": loses.
        upd(1, srv(x), 994_000, contact("x-stale")),
        // Older than the stored "y": loses.
        upd(1, srv(y), 980_000, contact("y-stale")),
        del(0, srv(c)),
        upd(1, srv(z), 996_500, contact("z1")),
        upd(0, srv(c), 996_500, company("C1")),
        del(0, srv(c)),
        upd(0, srv(never), 996_500, company("nobody")),
    ];
    batch.extend((100..100 + PAD).map(|l| {
        let name = format!("p{l}");
        change(0, Op::Add, local(l), None, 995_000, company(&name))
    }));
    batch.extend([
        upd(1, srv(x), 995_002, contact("x3")),
        upd(0, srv(a), 995_000, company("A1")),
        upd(1, srv(z), 996_600, contact("z2")),
        upd(0, local(150), 995_500, company("p150b")),
        // A master updated twice, then with a stale clock: loses to the batch's own.
        upd(0, srv(b), 995_000, company("B1")),
        upd(0, srv(b), 995_001, company("B2")),
        upd(0, srv(b), 995_000, company("B-stale")),
        del(0, srv(a)),
        upd(1, srv(x), 999_000, contact("x4")),
    ]);
    let out = run(batch);
    assert_eq!(out.applied, 13 + u64::from(PAD));
    let mapped: Vec<(u8, u32)> = out
        .mappings
        .iter()
        .map(|m| (m.table.0, m.local.0))
        .collect();
    let mut want_mapped = vec![(0, 4), (1, 4)];
    want_mapped.extend((100..100 + PAD).map(|l| (0, l)));
    assert_eq!(mapped, want_mapped);
    let rejected: Vec<(u8, RecordRef, RejectReason)> = out
        .rejected
        .iter()
        .map(|r| (r.table.0, r.key, r.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            (1, srv(z), RejectReason::Deleted),
            (0, srv(c), RejectReason::Deleted),
            (0, srv(never), RejectReason::UnknownRecord),
            (1, srv(z), RejectReason::Deleted),
            (1, srv(x), RejectReason::Deleted),
        ]
    );
    assert_eq!(
        out.losers,
        [(TableId(1), x), (TableId(1), y), (TableId(0), b)]
    );
    let d = out.mappings[0].server.0;
    let w = out.mappings[1].server.0;
    let mut want = std::collections::BTreeMap::new();
    want.insert((0, b.0), company("B2"));
    want.insert((0, d), company("D1"));
    want.insert((1, y.0), contact("y"));
    want.insert((1, w), contact("w1"));
    for m in &out.mappings[2..] {
        let name = match m.local.0 {
            150 => "p150b".to_string(),
            l => format!("p{l}"),
        };
        want.insert((0, m.server.0), company(&name));
    }
    assert_eq!(read_all(store), want);
    let parents = read_parents(store);
    assert_eq!(parents[&(1, w)], Some(d));
    assert_eq!(parents[&(1, y.0)], Some(b.0));
}
