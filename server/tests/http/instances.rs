//! Several server instances over one database (PostgreSQL: stateless instances behind a load
//! balancer; SQLite: two openers of one file): devices alternating between them under
//! concurrent syncs converge, last-write-wins gives the serialized result, delta cursors miss
//! nothing, and retries landing on the other instance create nothing twice.

use crate::common::*;
use ferrysync_core::wire::{Mode, Op};
use ferrysync_core::{Hlc, RecordRef, TableId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device's copy of its scope, kept up to date from delta replies only.
struct Phone {
    dev: Dev,
    cursor: Option<u64>,
    batch: u64,
    next_local: u32,
    counter: u32,
    /// `(table, server id) → (parent, body)`.
    records: BTreeMap<(u8, u64), (Option<u64>, Vec<u8>)>,
}

impl Phone {
    fn new(dev: Dev) -> Self {
        Phone {
            dev,
            cursor: None,
            batch: 0,
            next_local: 1,
            counter: 0,
            records: BTreeMap::new(),
        }
    }

    /// A fresh clock stamp (wall now, counter always growing).
    fn stamp(&mut self) -> Hlc {
        self.counter += 1;
        Hlc::new(now(), self.counter, self.dev.id)
    }

    fn local(&mut self) -> u32 {
        self.next_local += 1;
        self.next_local
    }

    /// Posts a batch to `s`; `None` if the reply is to be treated as lost.
    async fn post(&mut self, s: &TestServer, mode: Mode, changes: &[Chg]) -> OwnedReply {
        let h = hello(self.batch, self.cursor, mode);
        let a = s
            .post_sync(Some(&self.dev.token), encode_request(h, changes))
            .await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
        decode_reply(self.batch, &a.body).unwrap()
    }

    /// One sync: the batch, then the reply applied to the copy.
    async fn sync(&mut self, s: &TestServer, changes: &[Chg]) -> OwnedReply {
        self.batch += 1;
        let r = self.post(s, Mode::Delta, changes).await;
        self.apply(changes, &r);
        r
    }

    /// Applies a reply as a device does: after a reset only what follows, then its own
    /// accepted changes (the server does not send back what a sync wrote), then the records
    /// the reply carries (the winners of changes that lost last-write-wins, other devices').
    fn apply(&mut self, sent: &[Chg], r: &OwnedReply) {
        if r.reset {
            self.records.clear();
        }
        let server_of = |x: RecordRef, t: TableId| match x {
            RecordRef::Server(id) => Some(id.0),
            RecordRef::Local(l) => r
                .mappings
                .iter()
                .find(|m| m.table == t && m.local == l)
                .map(|m| m.server.0),
        };
        for c in sent {
            if r.rejected
                .iter()
                .any(|x| x.table == c.table && x.key == c.key)
            {
                continue;
            }
            let Some(id) = server_of(c.key, c.table) else {
                continue;
            };
            if c.op == Op::Delete {
                self.records.remove(&(c.table.0, id));
                continue;
            }
            let parent = c.parent.and_then(|p| server_of(p, COMPANY));
            self.records
                .insert((c.table.0, id), (parent, c.body.clone()));
        }
        for u in &r.upserts {
            self.records
                .insert((u.table.0, u.id), (u.parent, u.body.clone()));
        }
        for x in &r.removes {
            self.records.remove(&(x.table.0, x.id.0));
        }
        self.cursor = Some(r.done.cursor);
    }
}

#[derive(Default)]
struct Tally {
    companies: i64,
    contacts: i64,
    adds: i64,
    /// Every update of the shared company: (stamp, name).
    shared_updates: Vec<(Hlc, String)>,
}

const ROUNDS: u32 = 8;

store_test! {
    /// Four devices (three sharing a scope, one alone) sync concurrently, each alternating
    /// between two instances: adds (a company and two contacts), an update of one shared
    /// company per round, a delete every third round, and every fourth batch sent first to
    /// one instance with the reply lost and retried on the other. Then: every device's delta-
    /// maintained copy equals a fresh full sync of its scope, the shared company holds the
    /// update with the highest stamp, and the tables hold exactly what was created once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn devices_alternating_between_two_instances_converge() {
        let a = Arc::new(TestServer::start().await);
        let b = Arc::new(a.another().await);
        let scopes = ["north", "north", "north", "south"];
        let mut phones: Vec<Phone> = scopes.iter().map(|s| Phone::new(a.device(s))).collect();
        let tally = Arc::new(Mutex::new(Tally::default()));
        // One company every north device edits.
        let shared = {
            let p = &mut phones[0];
            let (l, t) = (p.local(), p.stamp());
            let r = p
                .sync(&a, &[add(COMPANY, l, None, t, text3(COMPANY, "shared", "x", "0"))])
                .await;
            let mut tl = tally.lock().unwrap();
            tl.companies += 1;
            tl.adds += 1;
            tl.shared_updates.push((t, "shared".into()));
            r.mapped(COMPANY, l)
        };
        let tasks: Vec<_> = phones
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                let (a, b, tally) = (a.clone(), b.clone(), tally.clone());
                tokio::spawn(async move {
                    let mut mine: Vec<u64> = Vec::new();
                    for r in 0..ROUNDS {
                        let (here, there) = if (i as u32 + r).is_multiple_of(2) { (&a, &b) } else { (&b, &a) };
                        let mut changes = Vec::new();
                        let c = p.local();
                        let t = p.stamp();
                        changes.push(add(COMPANY, c, None, t, text3(COMPANY, &format!("d{i}r{r}"), "c", "p")));
                        let mut shared_update = None;
                        if p.dev.scope == "north" {
                            let t = p.stamp();
                            let name = format!("shared by d{i} r{r}");
                            changes.push(update(COMPANY, server_id(shared), None, t, text3(COMPANY, &name, "x", "0")));
                            shared_update = Some((t, name));
                        }
                        let deleted = if r % 3 == 2 && !mine.is_empty() {
                            let gone = mine.remove(0);
                            let t = p.stamp();
                            changes.push(delete(COMPANY, server_id(gone), t));
                            true
                        } else {
                            false
                        };
                        // Tables in order: the companies' changes, then the contacts.
                        for k in 0..2 {
                            let l = p.local();
                            let t = p.stamp();
                            changes.push(add(CONTACT, l, Some(local(c)), t, text3(CONTACT, &format!("d{i}r{r}k{k}"), "e", "p")));
                        }
                        if r % 4 == 3 {
                            // The reply is lost: the same batch again, through the other one.
                            p.batch += 1;
                            let lost = p.post(there, Mode::Delta, &changes).await;
                            let again = p.post(here, Mode::Delta, &changes).await;
                            assert_eq!(lost.mappings, again.mappings, "retry on another instance");
                            assert!(again.rejected.is_empty(), "{:?}", again.rejected);
                            p.apply(&changes, &again);
                            mine.push(again.mapped(COMPANY, c));
                        } else {
                            let reply = p.sync(here, &changes).await;
                            assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
                            mine.push(reply.mapped(COMPANY, c));
                        }
                        let mut tl = tally.lock().unwrap();
                        tl.companies += 1;
                        tl.contacts += 2;
                        tl.adds += 3;
                        if deleted {
                            tl.companies -= 1;
                            tl.contacts -= 2;
                        }
                        tl.shared_updates.extend(shared_update);
                    }
                    p
                })
            })
            .collect();
        let mut phones = Vec::new();
        for t in tasks {
            phones.push(t.await.unwrap());
        }
        // Catch up (delta, no changes), then compare with a fresh full sync of the scope.
        for (i, p) in phones.iter_mut().enumerate() {
            let s = if i % 2 == 0 { &a } else { &b };
            p.sync(s, &[]).await;
            let mut fresh = Phone::new(p.dev.clone());
            fresh.batch = 1_001;
            let full = fresh.post(if i % 2 == 0 { &b } else { &a }, Mode::Full, &[]).await;
            assert!(full.reset);
            fresh.apply(&[], &full);
            let differ: Vec<_> = p
                .records
                .iter()
                .filter(|(k, v)| fresh.records.get(k) != Some(v))
                .map(|(k, _)| ("delta only or stale", *k))
                .chain(
                    fresh
                        .records
                        .keys()
                        .filter(|k| !p.records.contains_key(k))
                        .map(|k| ("missed by delta", *k)),
                )
                .collect();
            assert!(differ.is_empty(), "device {i}: delta copy vs full sync: {differ:?}");
            assert_eq!(p.cursor, fresh.cursor, "device {i}: cursors");
            let company_count = p.records.keys().filter(|(t, _)| *t == COMPANY.0).count();
            if p.dev.scope == "south" {
                assert_eq!(company_count as u32, ROUNDS - ROUNDS / 3, "south sees only its own");
            }
        }
        // Last write wins, as if serialized: the highest stamp's name.
        let tl = std::mem::take(&mut *tally.lock().unwrap());
        let winner = tl.shared_updates.iter().max_by_key(|(t, _)| *t).unwrap();
        assert_eq!(
            a.one_text("SELECT name FROM company WHERE id = ?1", &[shared as i64]),
            winner.1
        );
        let shared_copy = &phones[1].records[&(COMPANY.0, shared)].1;
        assert_eq!(texts(&a.schema, COMPANY, shared_copy)[0], winner.1);
        // Nothing created twice, nothing lost.
        assert_eq!(a.count("company"), tl.companies);
        assert_eq!(a.count("contact"), tl.contacts);
        assert_eq!(a.count("_idmap"), tl.adds);
        assert_eq!(
            a.one_i64("SELECT count(*) FROM (SELECT DISTINCT tbl, server FROM _idmap) m", &[]),
            tl.adds
        );
        for s in [b, a] {
            match Arc::try_unwrap(s) {
                Ok(s) => s.stop().await,
                Err(_) => panic!("a task still holds a server"),
            }
        }
    }
}

store_test! {
    /// The same batch posted to two instances at the same moment (a client that timed out
    /// and retried elsewhere while the first request was still running): one applies, the
    /// other finds its mappings; both replies carry the same ids and nothing is doubled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrent_double_add_through_two_instances_creates_once() {
        let a = TestServer::start().await;
        let b = a.another().await;
        let dev = a.device("north");
        for round in 0..6u32 {
            let t = at(dev.id, 0);
            let base = round * 100;
            let mut changes = vec![add(COMPANY, base + 1, None, t, text3(COMPANY, "C", "x", "0"))];
            for k in 2..12 {
                changes.push(add(CONTACT, base + k, Some(local(base + 1)), t, text3(CONTACT, "K", "y", "1")));
            }
            let body = encode_request(hello(u64::from(round), None, Mode::Delta), &changes);
            let (ra, rb) = tokio::join!(
                a.post_sync(Some(&dev.token), body.clone()),
                b.post_sync(Some(&dev.token), body)
            );
            assert_eq!(ra.status.as_u16(), 200, "{}", ra.text());
            assert_eq!(rb.status.as_u16(), 200, "{}", rb.text());
            let ra = decode_reply(u64::from(round), &ra.body).unwrap();
            let rb = decode_reply(u64::from(round), &rb.body).unwrap();
            assert_eq!(ra.mappings, rb.mappings);
            assert_eq!(ra.mappings.len(), 11);
            assert_eq!(a.count("company"), i64::from(round) + 1);
            assert_eq!(a.count("contact"), 10 * (i64::from(round) + 1));
        }
        assert_eq!(a.count("_idmap"), 66);
        b.stop().await;
        a.stop().await;
    }
}
