//! Two scopes never see each other's data, and cannot write it.

use crate::common::*;
use ferrysync_core::wire::{Mode, RejectReason};

store_test! {
    #[tokio::test]
    async fn scopes_are_isolated_in_full_and_delta_replies_and_writes() {
        let s = TestServer::start().await;
        let n = s.device("north");
        let so = s.device("south");
        let tn = at(n.id, 0);
        let ts = at(so.id, 0);
        let rn = s
            .sync(
                &n,
                hello(1, None, Mode::Full),
                &[
                    add(COMPANY, 1, None, tn, text3(COMPANY, "N1", "x", "0")),
                    add(
                        CONTACT,
                        1,
                        Some(local(1)),
                        tn,
                        text3(CONTACT, "n1", "x", "0"),
                    ),
                ],
            )
            .await;
        let rs = s
            .sync(
                &so,
                hello(1, None, Mode::Full),
                &[
                    add(COMPANY, 1, None, ts, text3(COMPANY, "S1", "x", "0")),
                    add(
                        CONTACT,
                        1,
                        Some(local(1)),
                        ts,
                        text3(CONTACT, "s1", "x", "0"),
                    ),
                ],
            )
            .await;
        let (n1, s1) = (rn.mapped(COMPANY, 1), rs.mapped(COMPANY, 1));
        let s1c = rs.mapped(CONTACT, 1);
        // Full replies hold only the own scope.
        let full_n = s.sync(&n, hello(2, None, Mode::Full), &[]).await;
        assert_eq!(full_n.ids(COMPANY), vec![n1]);
        assert_eq!(full_n.ids(CONTACT), vec![rn.mapped(CONTACT, 1)]);
        let full_s = s.sync(&so, hello(2, None, Mode::Full), &[]).await;
        assert_eq!(full_s.ids(COMPANY), vec![s1]);

        // South changes and deletes things; north's delta shows none of it.
        s.sync(
            &so,
            hello(3, Some(full_s.done.cursor), Mode::Delta),
            &[
                add(COMPANY, 2, None, ts, text3(COMPANY, "S2", "x", "0")),
                update(
                    COMPANY,
                    server_id(s1),
                    None,
                    at(so.id, 5),
                    text3(COMPANY, "S1b", "x", "0"),
                ),
                delete(CONTACT, server_id(s1c), at(so.id, 6)),
            ],
        )
        .await;
        let delta_n = s
            .sync(&n, hello(3, Some(full_n.done.cursor), Mode::Delta), &[])
            .await;
        assert!(
            delta_n.upserts.is_empty() && delta_n.removes.is_empty(),
            "{delta_n:?}"
        );
        assert!(delta_n.done.cursor > full_n.done.cursor);

        // North cannot write south's records: update, delete, detail under, re-parent onto.
        let dump = s.dump();
        let r = s
            .sync(
                &n,
                hello(4, Some(delta_n.done.cursor), Mode::Delta),
                &[
                    update(
                        COMPANY,
                        server_id(s1),
                        None,
                        at(n.id, 9),
                        text3(COMPANY, "Mine", "x", "0"),
                    ),
                    delete(COMPANY, server_id(s1), at(n.id, 9)),
                    add(
                        CONTACT,
                        7,
                        Some(server_id(s1)),
                        at(n.id, 9),
                        text3(CONTACT, "spy", "x", "0"),
                    ),
                    update(
                        CONTACT,
                        server_id(rn.mapped(CONTACT, 1)),
                        Some(server_id(s1)),
                        at(n.id, 9),
                        text3(CONTACT, "moved", "x", "0"),
                    ),
                    // A deleted record of the other scope is out of scope, not "deleted".
                    update(
                        CONTACT,
                        server_id(s1c),
                        None,
                        at(n.id, 9),
                        text3(CONTACT, "x", "x", "0"),
                    ),
                ],
            )
            .await;
        assert_eq!(r.rejected.len(), 5);
        assert!(
            r.rejected
                .iter()
                .all(|x| x.reason == RejectReason::OutOfScope),
            "{:?}",
            r.rejected
        );
        assert!(r.upserts.is_empty() && r.removes.is_empty());
        // Nothing changed but the sequence counter (no record, id map or tombstone).
        let strip = |d: Vec<String>| {
            d.into_iter()
                .filter(|l| !l.starts_with("_meta"))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(s.dump()), strip(dump));
        s.stop().await;
    }
}
