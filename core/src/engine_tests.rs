//! Engine tests on the in-memory store with a scripted transport.

use super::*;
use crate::body::{encode, Value};
use crate::frame::{FrameDecoder, FrameEncoder};
use crate::id::ServerId;
use crate::mem::{LinkDown, MemError, MemStore, ScriptLink};
use crate::schema::EXAMPLE;
use crate::track;
use crate::wire::{Accepted, Mapping, Remove};
use pollster::block_on;
use std::string::String;
use std::vec::Vec;

const N: usize = 1024;
const CO: TableId = TableId(0);
const CT: TableId = TableId(1);

/// An owned copy of a decoded request frame.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Hello(Hello),
    Change {
        table: TableId,
        op: Op,
        key: RecordRef,
        parent: Option<RecordRef>,
        body: Vec<u8>,
    },
    End(u32),
}

fn decode_request(bytes: &[u8]) -> Vec<Req> {
    let mut dec = FrameDecoder::<N>::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let fed = dec.feed::<Request<'_>>(&bytes[pos..]);
        pos += fed.consumed;
        let Some(msg) = fed.result.unwrap() else {
            continue;
        };
        for item in msg.items() {
            match item.unwrap() {
                Request::Hello(h) => out.push(Req::Hello(h)),
                Request::Change(c) => out.push(Req::Change {
                    table: c.table,
                    op: c.op,
                    key: c.key,
                    parent: c.parent,
                    body: c.body.to_vec(),
                }),
                Request::End(e) => out.push(Req::End(e.count)),
                Request::Changes(_) => unreachable!("items() expands batches"),
            }
        }
    }
    out
}

fn reply(batch: u64, msgs: &[Reply<'_>]) -> Vec<u8> {
    let mut enc = FrameEncoder::<N>::new();
    let mut out = Vec::new();
    out.extend_from_slice(
        enc.encode(&Reply::Accepted(Accepted {
            batch_id: batch,
            server_time: 50_000,
        }))
        .unwrap(),
    );
    for m in msgs {
        out.extend_from_slice(enc.encode(m).unwrap());
    }
    out.extend_from_slice(
        enc.encode(&Reply::Done(Done {
            cursor: 77,
            count: msgs.len() as u32,
        }))
        .unwrap(),
    );
    out
}

fn company(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    encode(
        &EXAMPLE.tables[0],
        &[Value::Text(name), Value::Text("Lyon"), Value::Text("1")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

fn contact(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    encode(
        &EXAMPLE.tables[1],
        &[Value::Text(name), Value::Text("a@b"), Value::Text("2")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

fn name_of(store: &mut MemStore, table: TableId, local: LocalId) -> String {
    let mut buf = [0u8; N];
    let n = block_on(store.get_body(table, local, &mut buf))
        .unwrap()
        .unwrap();
    match body::field(&EXAMPLE.tables[table.0 as usize], &buf[..n], 0).unwrap() {
        Value::Text(t) => t.into(),
        other => panic!("{other:?}"),
    }
}

fn get(store: &mut MemStore, table: TableId, local: LocalId) -> Option<Record> {
    block_on(store.get(table, local)).unwrap()
}

/// A store with one company and two contacts created offline.
fn offline() -> (MemStore, LocalId, LocalId, LocalId) {
    let mut s = MemStore::new();
    let c = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CO,
        None,
        &company("ACME"),
        1000,
    ))
    .unwrap();
    let a = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Ann"),
        1001,
    ))
    .unwrap();
    let b = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Bob"),
        1002,
    ))
    .unwrap();
    (s, c, a, b)
}

fn send(s: &mut MemStore, t: &mut ScriptLink<'_>, mode: Mode) -> Outgoing {
    block_on(send_request::<_, _, N>(&EXAMPLE, s, t, mode)).unwrap()
}

fn receive(
    s: &mut MemStore,
    t: &mut ScriptLink<'_>,
    out: &Outgoing,
) -> Result<SyncReport, SyncError<MemError, LinkDown>> {
    block_on(receive_reply::<_, _, N>(&EXAMPLE, s, t, out))
}

/// The mappings of the first push of `offline()`: ids 135 (company), 500, 501.
fn first_mappings(c: LocalId, a: LocalId, b: LocalId) -> [Reply<'static>; 3] {
    let m = |table, local, server| {
        Reply::Mapping(Mapping {
            table,
            local,
            server: ServerId(server),
        })
    };
    [m(CO, c, 135), m(CT, a, 500), m(CT, b, 501)]
}

/// The server's answer to the first push of `offline()`: ids 135 (company), 500, 501.
fn first_reply(batch: u64, c: LocalId, a: LocalId, b: LocalId) -> Vec<u8> {
    let (cb, ab, bb) = (company("ACME"), contact("Ann"), contact("Bob"));
    let at = Hlc::new(1000, 0, 9);
    let [mc, ma, mb] = first_mappings(c, a, b);
    reply(
        batch,
        &[
            mc,
            ma,
            mb,
            Reply::Upsert(Upsert {
                table: CO,
                id: ServerId(135),
                parent: None,
                modified_at: at,
                body: &cb,
            }),
            Reply::Upsert(Upsert {
                table: CT,
                id: ServerId(500),
                parent: Some(ServerId(135)),
                modified_at: at,
                body: &ab,
            }),
            Reply::Upsert(Upsert {
                table: CT,
                id: ServerId(501),
                parent: Some(ServerId(135)),
                modified_at: at,
                body: &bb,
            }),
        ],
    )
}

/// `offline()` after its first sync: every record mapped and clean.
fn synced() -> (MemStore, LocalId, LocalId, LocalId) {
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    t.reply = first_reply(out.batch_id, c, a, b);
    receive(&mut s, &mut t, &out).unwrap();
    (s, c, a, b)
}

#[test]
fn request_carries_parents_first_with_local_keys() {
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    assert!(out.full, "first sync is a full refresh");
    assert_eq!(out.changes, 3);
    let req = decode_request(&t.sent);
    assert!(matches!(
        req[0],
        Req::Hello(Hello {
            mode: Mode::Full,
            cursor: None,
            ..
        })
    ));
    assert_eq!(
        req[1],
        Req::Change {
            table: CO,
            op: Op::Add,
            key: RecordRef::Local(c),
            parent: None,
            body: company("ACME")
        }
    );
    for (i, (l, n)) in [(a, "Ann"), (b, "Bob")].into_iter().enumerate() {
        assert_eq!(
            req[2 + i],
            Req::Change {
                table: CT,
                op: Op::Add,
                key: RecordRef::Local(l),
                parent: Some(RecordRef::Local(c)),
                body: contact(n)
            }
        );
    }
    assert_eq!(req[4], Req::End(3));
    // Sending wrote nothing.
    assert_eq!(block_on(track::pending_count(&EXAMPLE, &mut s)).unwrap(), 3);
}

#[test]
fn reply_maps_ids_and_confirms() {
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    t.reply = first_reply(out.batch_id, c, a, b);
    t.chunk = 1; // worst case: one byte at a time
    let r = receive(&mut s, &mut t, &out).unwrap();
    assert_eq!((r.mapped, r.upserts, r.cursor, r.full), (3, 3, 77, false));
    let co = get(&mut s, CO, c).unwrap();
    assert_eq!(co.server, Some(ServerId(135)));
    assert!(co.meta.is_from_server && !co.meta.is_modified && co.meta.is_active);
    let ct = get(&mut s, CT, a).unwrap();
    assert_eq!((ct.server, ct.parent), (Some(ServerId(500)), Some(c)));
    assert_eq!(block_on(track::pending_count(&EXAMPLE, &mut s)).unwrap(), 0);
    let st = block_on(s.load_state()).unwrap();
    assert_eq!(st.cursor, Some(77));
    assert!(st.clock.wall_ms >= 50_000, "clock advanced to server time");
    // The next request is a delta with the cursor, and names the parent by server id.
    block_on(track::update(
        &EXAMPLE,
        &mut s,
        CT,
        a,
        &contact("Ann2"),
        2000,
    ))
    .unwrap();
    let mut t2 = ScriptLink::default();
    let out2 = send(&mut s, &mut t2, Mode::Delta);
    let req = decode_request(&t2.sent);
    assert!(matches!(
        req[0],
        Req::Hello(Hello {
            mode: Mode::Delta,
            cursor: Some(77),
            ..
        })
    ));
    assert_eq!(
        req[1],
        Req::Change {
            table: CT,
            op: Op::Update,
            key: RecordRef::Server(ServerId(500)),
            parent: Some(RecordRef::Server(ServerId(135))),
            body: contact("Ann2")
        }
    );
    assert_eq!(out2.batch_id, out.batch_id + 1);
}

#[test]
fn edit_during_flight_stays_pending_and_wins_locally() {
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    // The user edits Ann while the request is on its way.
    block_on(track::update(
        &EXAMPLE,
        &mut s,
        CT,
        a,
        &contact("Ann (new)"),
        1500,
    ))
    .unwrap();
    t.reply = first_reply(out.batch_id, c, a, b);
    receive(&mut s, &mut t, &out).unwrap();
    let ann = get(&mut s, CT, a).unwrap();
    assert!(
        ann.meta.is_modified,
        "edit made during the sync is still pending"
    );
    assert_eq!(ann.server, Some(ServerId(500)));
    assert_eq!(name_of(&mut s, CT, a), "Ann (new)");
    let bob = get(&mut s, CT, b).unwrap();
    assert!(!bob.meta.is_modified);
    assert_eq!(block_on(track::pending_count(&EXAMPLE, &mut s)).unwrap(), 1);
}

fn snapshot(s: &MemStore) -> Vec<(Record, Vec<u8>)> {
    s.records()
}

#[test]
fn cut_or_damaged_reply_changes_nothing() {
    let (mut s, c, a, b) = offline();
    let before = snapshot(&s);
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    let full = first_reply(out.batch_id, c, a, b);
    // Cut the reply at every byte: never a partial apply.
    for cut in 0..full.len() {
        let mut t = ScriptLink::replying(full[..cut].to_vec());
        let err = receive(&mut s, &mut t, &out).unwrap_err();
        assert!(
            matches!(err, SyncError::Stream(StreamError::Truncated)),
            "cut at {cut}: {err:?}"
        );
        assert_eq!(snapshot(&s), before, "cut at {cut}");
        assert_eq!(block_on(s.load_state()).unwrap().cursor, None);
    }
    // A flipped bit is refused with the frame it hit.
    let mut bad = full.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    let mut t = ScriptLink::replying(bad);
    assert!(receive(&mut s, &mut t, &out).is_err());
    assert_eq!(snapshot(&s), before);
    // A reply for another batch is refused.
    let mut t = ScriptLink::replying(first_reply(out.batch_id + 5, c, a, b));
    assert!(matches!(
        receive(&mut s, &mut t, &out),
        Err(SyncError::Stream(StreamError::BatchMismatch { .. }))
    ));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn store_failure_or_crash_at_any_write_keeps_old_state() {
    let (mut s, c, a, b) = offline();
    let before = snapshot(&s);
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    let full = first_reply(out.batch_id, c, a, b);
    let mut n = 1;
    loop {
        let mut s2 = s.clone();
        s2.fail_after(n);
        let mut t = ScriptLink::replying(full.clone());
        match receive(&mut s2, &mut t, &out) {
            Err(SyncError::Store(MemError::Injected)) => {
                assert_eq!(snapshot(&s2), before, "failed write {n}");
                assert_eq!(
                    block_on(track::pending_count(&EXAMPLE, &mut s2)).unwrap(),
                    3
                );
            }
            Ok(_) => break,
            Err(e) => panic!("write {n}: {e:?}"),
        }
        n += 1;
    }
    assert!(n > 6, "the apply wrote {n} times");
    // The retry after all that converges.
    let mut t = ScriptLink::replying(full);
    receive(&mut s, &mut t, &out).unwrap();
    assert_eq!(block_on(track::pending_count(&EXAMPLE, &mut s)).unwrap(), 0);
}

#[test]
fn transport_failure_while_sending_changes_nothing() {
    let (mut s, ..) = offline();
    let before = snapshot(&s);
    let mut t = ScriptLink::default();
    t.fail_send = true;
    let e = block_on(sync::<_, _, N>(&EXAMPLE, &mut s, &mut t, Mode::Delta)).unwrap_err();
    assert_eq!(e, SyncError::Transport(LinkDown));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn rejected_add_goes_to_log_with_its_details() {
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    // Created during the flight under the company that will be refused.
    let late = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Late"),
        1600,
    ))
    .unwrap();
    let (cb, ab, bb) = (company("ACME"), contact("Ann"), contact("Bob"));
    t.reply = reply(
        out.batch_id,
        &[
            Reply::Rejected(Rejected {
                table: CO,
                op: Op::Add,
                key: RecordRef::Local(c),
                reason: RejectReason::OutOfScope,
                body: &cb,
            }),
            Reply::Rejected(Rejected {
                table: CT,
                op: Op::Add,
                key: RecordRef::Local(a),
                reason: RejectReason::ParentMissing,
                body: &ab,
            }),
            Reply::Rejected(Rejected {
                table: CT,
                op: Op::Add,
                key: RecordRef::Local(b),
                reason: RejectReason::ParentMissing,
                body: &bb,
            }),
        ],
    );
    let r = receive(&mut s, &mut t, &out).unwrap();
    assert_eq!(r.rejected, 3);
    assert!(s.records().is_empty(), "{:?}", s.records());
    let mut buf = [0u8; N];
    let mut log = Vec::new();
    let mut after = None;
    while let Some((e, n)) = block_on(s.next_rejected(after, &mut buf)).unwrap() {
        after = Some(e.seq);
        log.push((e.table, e.key, e.reason, buf[..n].to_vec()));
    }
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        log[0],
        (CO, RecordRef::Local(c), RejectReason::OutOfScope, cb)
    );
    assert!(log.contains(&(
        CT,
        RecordRef::Local(late),
        RejectReason::ParentMissing,
        contact("Late")
    )));
    block_on(track::clear_rejected(&mut s)).unwrap();
    assert_eq!(block_on(s.next_rejected(None, &mut buf)).unwrap(), None);
}

#[test]
fn rejected_update_is_cleaned_and_next_sync_is_full() {
    let (mut s, _, a, _) = synced();
    block_on(track::update(
        &EXAMPLE,
        &mut s,
        CT,
        a,
        &contact("Bad"),
        3000,
    ))
    .unwrap();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    assert!(!out.full);
    let body = contact("Bad");
    t.reply = reply(
        out.batch_id,
        &[Reply::Rejected(Rejected {
            table: CT,
            op: Op::Update,
            key: RecordRef::Server(ServerId(500)),
            reason: RejectReason::InvalidBody,
            body: &body,
        })],
    );
    receive(&mut s, &mut t, &out).unwrap();
    let ann = get(&mut s, CT, a).unwrap();
    assert!(!ann.meta.is_modified);
    let mut t = ScriptLink::default();
    assert!(
        send(&mut s, &mut t, Mode::Delta).full,
        "a full refresh heals the refused update"
    );
}

#[test]
fn server_remove_cascades_and_logs_orphaned_local_work() {
    let (mut s, c, _, _) = synced();
    // Offline: a new contact under the company, which another device deletes meanwhile.
    let n = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("New"),
        4000,
    ))
    .unwrap();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    // The contact was in the batch: the server refused it, then sent the removes.
    let nb = contact("New");
    t.reply = reply(
        out.batch_id,
        &[
            Reply::Rejected(Rejected {
                table: CT,
                op: Op::Add,
                key: RecordRef::Local(n),
                reason: RejectReason::ParentMissing,
                body: &nb,
            }),
            Reply::Remove(Remove {
                table: CO,
                id: ServerId(135),
            }),
            Reply::Remove(Remove {
                table: CT,
                id: ServerId(500),
            }),
        ],
    );
    let r = receive(&mut s, &mut t, &out).unwrap();
    // The contact's own Remove finds it gone already, with its company.
    assert_eq!(r.removes, 1);
    assert!(
        s.records().is_empty(),
        "company and its contacts are gone: {:?}",
        s.records()
    );
    let mut buf = [0u8; N];
    let (e, _) = block_on(s.next_rejected(None, &mut buf)).unwrap().unwrap();
    assert_eq!(
        (e.key, e.reason),
        (RecordRef::Local(n), RejectReason::ParentMissing)
    );
}

#[test]
fn local_delete_cascades_soft_then_confirmed_for_good() {
    let (mut s, c, a, b) = synced();
    block_on(track::delete(&EXAMPLE, &mut s, CO, c, 5000)).unwrap();
    for l in [a, b] {
        let r = get(&mut s, CT, l).unwrap();
        assert!(!r.meta.is_active && r.meta.is_modified);
    }
    assert!(block_on(track::update(&EXAMPLE, &mut s, CT, a, &contact("x"), 5001)).is_err());
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    let req = decode_request(&t.sent);
    assert_eq!(out.changes, 3);
    assert!(matches!(
        req[1],
        Req::Change {
            op: Op::Delete,
            key: RecordRef::Server(ServerId(135)),
            ..
        }
    ));
    t.reply = reply(
        out.batch_id,
        &[Reply::Remove(Remove {
            table: CO,
            id: ServerId(135),
        })],
    );
    receive(&mut s, &mut t, &out).unwrap();
    assert!(s.records().is_empty());
}

#[test]
fn full_refresh_drops_what_the_server_no_longer_has_but_keeps_local_work() {
    let (mut s, c, a, b) = synced();
    // Local work made after this full request was built.
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Full);
    assert!(out.full);
    let late = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Late"),
        6000,
    ))
    .unwrap();
    block_on(track::update(
        &EXAMPLE,
        &mut s,
        CT,
        b,
        &contact("Bob2"),
        6001,
    ))
    .unwrap();
    let cb = company("ACME v2");
    t.reply = reply(
        out.batch_id,
        &[
            Reply::Reset,
            Reply::Upsert(Upsert {
                table: CO,
                id: ServerId(135),
                parent: None,
                modified_at: Hlc::new(7000, 0, 3),
                body: &cb,
            }),
        ],
    );
    let r = receive(&mut s, &mut t, &out).unwrap();
    assert!(r.full);
    assert_eq!(name_of(&mut s, CO, c), "ACME v2");
    assert!(
        get(&mut s, CT, a).is_none(),
        "Ann is gone from the server's data"
    );
    assert!(
        get(&mut s, CT, b).unwrap().meta.is_modified,
        "Bob's local edit is kept"
    );
    assert!(get(&mut s, CT, late).unwrap().meta.is_pending());
}

#[test]
fn a_mapping_onto_a_taken_server_id_is_refused() {
    let (mut s, c, _, _) = synced();
    // A new contact, and a broken reply mapping it onto Ann's server id.
    let d = block_on(track::insert(
        &EXAMPLE,
        &mut s,
        CT,
        Some(c),
        &contact("Dan"),
        9000,
    ))
    .unwrap();
    let before = snapshot(&s);
    let out = send(&mut s, &mut ScriptLink::default(), Mode::Delta);
    let mut t = ScriptLink::replying(reply(
        out.batch_id,
        &[Reply::Mapping(Mapping {
            table: CT,
            local: d,
            server: ServerId(500),
        })],
    ));
    assert!(matches!(
        receive(&mut s, &mut t, &out),
        Err(SyncError::BadRecord { frame: 1 })
    ));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn full_reply_without_echo_keeps_the_records_it_created() {
    // The server does not send back the records this sync created: a first (full) reply to a
    // push is the mappings, the reset, and other devices' records only.
    let (mut s, c, a, b) = offline();
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Delta);
    assert!(out.full);
    let other = company("Other");
    let [mc, ma, mb] = first_mappings(c, a, b);
    t.reply = reply(
        out.batch_id,
        &[
            mc,
            ma,
            mb,
            Reply::Reset,
            Reply::Upsert(Upsert {
                table: CO,
                id: ServerId(7),
                parent: None,
                modified_at: Hlc::new(900, 0, 3),
                body: &other,
            }),
        ],
    );
    let r = receive(&mut s, &mut t, &out).unwrap();
    assert!(r.full);
    assert_eq!((r.mapped, r.upserts), (3, 1));
    for (table, local, server) in [(CO, c, 135), (CT, a, 500), (CT, b, 501)] {
        let rec = get(&mut s, table, local).expect("a confirmed record survives the sweep");
        assert_eq!(rec.server, Some(ServerId(server)));
        assert!(!rec.meta.is_pending());
    }
    assert_eq!(name_of(&mut s, CO, c), "ACME");
    assert_eq!(name_of(&mut s, CT, b), "Bob");
    let o = block_on(s.by_server(CO, ServerId(7))).unwrap().unwrap();
    assert_eq!(name_of(&mut s, CO, o.local), "Other");
    // A second full refresh that no longer lists them does sweep them.
    let mut t = ScriptLink::default();
    let out = send(&mut s, &mut t, Mode::Full);
    t.reply = reply(out.batch_id, &[Reply::Reset]);
    receive(&mut s, &mut t, &out).unwrap();
    assert!(get(&mut s, CO, c).is_none());
    assert!(get(&mut s, CT, a).is_none());
}
