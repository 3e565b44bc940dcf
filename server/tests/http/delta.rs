//! Delta replies hold only what changed since the cursor; full gives the same final state.

use crate::common::*;
use ferrysync_core::wire::Mode;
use ferrysync_server::Config;
use std::collections::BTreeMap;

type State = BTreeMap<(u8, u64), (Option<u64>, Vec<u8>)>;

fn apply(state: &mut State, r: &OwnedReply) {
    if r.reset {
        state.clear();
    }
    for u in &r.upserts {
        state.insert((u.table.0, u.id), (u.parent, u.body.clone()));
    }
    for x in &r.removes {
        state.remove(&(x.table.0, x.id.0));
    }
}

store_test! {
    #[tokio::test]
    async fn delta_holds_only_changes_and_matches_full() {
        let s = TestServer::start().await;
        let a = s.device("north");
        let b = s.device("north");
        let t = at(a.id, 0);
        let r1 = s
            .sync(
                &a,
                hello(1, None, Mode::Delta),
                &[
                    add(COMPANY, 1, None, t, text3(COMPANY, "C1", "x", "0")),
                    add(COMPANY, 2, None, t, text3(COMPANY, "C2", "x", "0")),
                    add(COMPANY, 3, None, t, text3(COMPANY, "C3", "x", "0")),
                    add(
                        CONTACT,
                        1,
                        Some(local(1)),
                        t,
                        text3(CONTACT, "k1", "x", "0"),
                    ),
                    add(
                        CONTACT,
                        2,
                        Some(local(2)),
                        t,
                        text3(CONTACT, "k2", "x", "0"),
                    ),
                ],
            )
            .await;
        // No cursor: the server answers in full even though delta was asked.
        assert!(r1.reset);
        let mut b_state = State::new();
        let rb = s.sync(&b, hello(1, None, Mode::Delta), &[]).await;
        assert!(rb.reset);
        apply(&mut b_state, &rb);
        assert_eq!(b_state.len(), 5);

        let (c1, c2) = (r1.mapped(COMPANY, 1), r1.mapped(COMPANY, 2));
        let r2 = s
            .sync(
                &a,
                hello(2, Some(r1.done.cursor), Mode::Delta),
                &[
                    add(
                        COMPANY,
                        4,
                        None,
                        at(a.id, 1),
                        text3(COMPANY, "C4", "x", "0"),
                    ),
                    update(
                        COMPANY,
                        server_id(c1),
                        None,
                        at(a.id, 1),
                        text3(COMPANY, "C1b", "x", "0"),
                    ),
                    delete(COMPANY, server_id(c2), at(a.id, 1)),
                ],
            )
            .await;

        let delta = s
            .sync(&b, hello(2, Some(rb.done.cursor), Mode::Delta), &[])
            .await;
        assert!(!delta.reset);
        // Only C4 (new) and C1 (changed); C2 and its contact removed; C3 and k1 untouched.
        let mut ids = delta.ids(COMPANY);
        ids.sort_unstable();
        let mut want = vec![c1, r2.mapped(COMPANY, 4)];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert!(delta.ids(CONTACT).is_empty());
        assert_eq!(delta.removes.len(), 2);
        apply(&mut b_state, &delta);

        let full = s
            .sync(&b, hello(3, Some(delta.done.cursor), Mode::Full), &[])
            .await;
        assert!(full.reset);
        assert_eq!(full.done.cursor, delta.done.cursor);
        let mut full_state = State::new();
        apply(&mut full_state, &full);
        assert_eq!(b_state, full_state);
        assert_eq!(full_state.len(), 4);

        // Nothing new: an empty delta with the same cursor.
        let idle = s
            .sync(&b, hello(4, Some(full.done.cursor), Mode::Delta), &[])
            .await;
        assert!(idle.upserts.is_empty() && idle.removes.is_empty() && !idle.reset);
        assert_eq!(idle.done.cursor, full.done.cursor);
        assert_eq!(idle.done.count, 0);
        // A cursor from the future (a server restored from backup) gets a full reply.
        let ahead = s
            .sync(&b, hello(5, Some(full.done.cursor + 100), Mode::Delta), &[])
            .await;
        assert!(ahead.reset);
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn cursor_older_than_retained_tombstones_gets_a_full_reply() {
        let s = TestServer::with_config(Config {
            tombstone_retention_ms: 0,
            ..Config::default()
        })
        .await;
        let a = s.device("north");
        let b = s.device("north");
        let r = s
            .sync(
                &a,
                hello(1, None, Mode::Full),
                &[
                    add(
                        COMPANY,
                        1,
                        None,
                        at(a.id, 0),
                        text3(COMPANY, "C1", "x", "0"),
                    ),
                    add(
                        COMPANY,
                        2,
                        None,
                        at(a.id, 0),
                        text3(COMPANY, "C2", "x", "0"),
                    ),
                ],
            )
            .await;
        let rb = s.sync(&b, hello(1, None, Mode::Full), &[]).await;
        s.sync(
            &a,
            hello(2, None, Mode::Full),
            &[delete(
                COMPANY,
                server_id(r.mapped(COMPANY, 1)),
                at(a.id, 1),
            )],
        )
        .await;
        // A sync without changes writes nothing: the tombstone stays.
        s.sync(&a, hello(3, None, Mode::Full), &[]).await;
        assert_eq!(s.count("_tombstone"), 1);
        // The next sync that writes prunes it (retention 0); B's cursor predates it.
        let ra = s
            .sync(
                &a,
                hello(4, None, Mode::Full),
                &[add(
                    COMPANY,
                    3,
                    None,
                    at(a.id, 2),
                    text3(COMPANY, "C3", "x", "0"),
                )],
            )
            .await;
        assert_eq!(s.count("_tombstone"), 0);
        let delta = s
            .sync(&b, hello(2, Some(rb.done.cursor), Mode::Delta), &[])
            .await;
        assert!(delta.reset, "old cursor must give a full reply");
        let mut live = vec![r.mapped(COMPANY, 2), ra.mapped(COMPANY, 3)];
        live.sort_unstable();
        let mut got = delta.ids(COMPANY);
        got.sort_unstable();
        assert_eq!(got, live);
        // A cursor at or past the floor still gets a delta.
        let d2 = s
            .sync(&a, hello(5, Some(ra.done.cursor), Mode::Delta), &[])
            .await;
        assert!(!d2.reset);
        s.stop().await;
    }
}
