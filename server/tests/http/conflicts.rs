//! Last-write-wins, clock clamping, cascading deletes, delete vs update.

use crate::common::*;
use ferrysync_core::wire::{Mode, RejectReason};
use ferrysync_core::{Hlc, ServerId};
use ferrysync_server::Config;

async fn one_company(s: &TestServer, dev: &Dev, at: Hlc) -> u64 {
    let r = s
        .sync(
            dev,
            hello(1, None, Mode::Full),
            &[add(
                COMPANY,
                1,
                None,
                at,
                text3(COMPANY, "ACME", "Lyon", "0"),
            )],
        )
        .await;
    r.mapped(COMPANY, 1)
}

fn company_name(s: &TestServer, id: u64) -> String {
    s.one_text("SELECT name FROM company WHERE id = ?1", &[id as i64])
}

store_test! {
    #[tokio::test]
    async fn newer_update_wins_and_older_loses_and_loser_gets_the_winner() {
        let s = TestServer::start().await;
        let a = s.device("north");
        let b = s.device("north");
        let id = one_company(&s, &a, at(a.id, -10_000)).await;
        // A catches up.
        let ra = s.sync(&a, hello(2, None, Mode::Full), &[]).await;
        let cursor_a = ra.done.cursor;

        // B's update is newer than the stored one: it wins.
        let rb = s
            .sync(
                &b,
                hello(3, None, Mode::Full),
                &[update(
                    COMPANY,
                    server_id(id),
                    None,
                    at(b.id, -1_000),
                    text3(COMPANY, "ACME B", "Lyon", "0"),
                )],
            )
            .await;
        assert!(rb.rejected.is_empty());
        assert_eq!(company_name(&s, id), "ACME B");

        // A syncs the change it made offline earlier than B's: it loses, silently (no rejection),
        // and A's reply carries the winner.
        let stale = update(
            COMPANY,
            server_id(id),
            None,
            at(a.id, -5_000),
            text3(COMPANY, "ACME A", "Lyon", "0"),
        );
        let ra = s
            .sync(
                &a,
                hello(4, Some(cursor_a), Mode::Delta),
                std::slice::from_ref(&stale),
            )
            .await;
        assert!(ra.rejected.is_empty());
        assert_eq!(company_name(&s, id), "ACME B");
        let winner = ra.upsert(COMPANY, id).expect("winner in reply");
        assert_eq!(winner.body, text3(COMPANY, "ACME B", "Lyon", "0"));
        assert_eq!(winner.at.device, b.id);

        // Even when nothing else changed since the device's cursor, the loser gets the winner.
        let ra2 = s
            .sync(&a, hello(5, Some(ra.done.cursor), Mode::Delta), &[stale])
            .await;
        assert_eq!(ra2.upserts.len(), 1);
        assert_eq!(ra2.upsert(COMPANY, id).unwrap().body, winner.body);
        assert_eq!(ra2.done.cursor, ra.done.cursor);

        // A newer update from A wins again.
        s.sync(
            &a,
            hello(6, Some(ra2.done.cursor), Mode::Delta),
            &[update(
                COMPANY,
                server_id(id),
                None,
                at(a.id, 0),
                text3(COMPANY, "ACME A2", "Lyon", "0"),
            )],
        )
        .await;
        assert_eq!(company_name(&s, id), "ACME A2");
        // Ties on wall time and counter are broken by device id.
        let t = Hlc::new(now() + 60_000, 0, 0);
        let (lo, hi) = if a.id < b.id { (&a, &b) } else { (&b, &a) };
        s.sync(
            hi,
            hello(7, None, Mode::Full),
            &[update(
                COMPANY,
                server_id(id),
                None,
                Hlc { device: hi.id, ..t },
                text3(COMPANY, "HI", "x", "0"),
            )],
        )
        .await;
        let r = s
            .sync(
                lo,
                hello(8, None, Mode::Full),
                &[update(
                    COMPANY,
                    server_id(id),
                    None,
                    Hlc { device: lo.id, ..t },
                    text3(COMPANY, "LO", "x", "0"),
                )],
            )
            .await;
        assert_eq!(company_name(&s, id), "HI");
        assert!(r.rejected.is_empty());
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn future_clocks_are_clamped() {
        let skew = 1_000;
        let s = TestServer::with_config(Config {
            max_skew_ms: skew,
            ..Config::default()
        })
        .await;
        let a = s.device("north");
        let b = s.device("north");
        let id = one_company(&s, &a, at(a.id, 0)).await;
        let ten_years = 10 * 365 * 24 * 3600 * 1000;
        let before = now();
        s.sync(
            &a,
            hello(2, None, Mode::Full),
            &[update(
                COMPANY,
                server_id(id),
                None,
                at(a.id, ten_years),
                text3(COMPANY, "FUTURE", "x", "0"),
            )],
        )
        .await;
        let after = now();
        let wall = s.one_i64("SELECT _wall FROM company WHERE id = ?1", &[id as i64]);
        let wall = wall as u64;
        assert!(
            wall >= before + skew && wall <= after + skew,
            "stored {wall}"
        );
        // B writes just after the clamped stamp (far before A's claimed one): B wins.
        let r = s
            .sync(
                &b,
                hello(3, None, Mode::Full),
                &[update(
                    COMPANY,
                    server_id(id),
                    None,
                    Hlc::new(wall + 1, 0, b.id),
                    text3(COMPANY, "B", "x", "0"),
                )],
            )
            .await;
        assert!(r.rejected.is_empty());
        assert_eq!(company_name(&s, id), "B");
        assert!(r.accepted.server_time >= before);
        // The stored stamp carries the authenticated device's id, whatever the device claimed.
        s.sync(
            &a,
            hello(4, None, Mode::Full),
            &[update(
                COMPANY,
                server_id(id),
                None,
                Hlc::new(wall + 2, 0, 0xffff),
                text3(COMPANY, "A", "x", "0"),
            )],
        )
        .await;
        let dev = s.one_i64("SELECT _device FROM company WHERE id = ?1", &[id as i64]);
        assert_eq!(dev, i64::from(a.id));
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn delete_cascades_to_details_as_tombstones() {
        let s = TestServer::start().await;
        let a = s.device("north");
        let b = s.device("north");
        let t = at(a.id, 0);
        let r = s
            .sync(
                &a,
                hello(1, None, Mode::Full),
                &[
                    add(COMPANY, 1, None, t, text3(COMPANY, "ACME", "Lyon", "0")),
                    add(COMPANY, 2, None, t, text3(COMPANY, "Keep", "Lyon", "0")),
                    add(
                        CONTACT,
                        1,
                        Some(local(1)),
                        t,
                        text3(CONTACT, "Ann", "a", "1"),
                    ),
                    add(
                        CONTACT,
                        2,
                        Some(local(1)),
                        t,
                        text3(CONTACT, "Bob", "b", "2"),
                    ),
                    add(
                        CONTACT,
                        3,
                        Some(local(2)),
                        t,
                        text3(CONTACT, "Cid", "c", "3"),
                    ),
                ],
            )
            .await;
        let (acme, keep) = (r.mapped(COMPANY, 1), r.mapped(COMPANY, 2));
        let (ann, bob, cid) = (
            r.mapped(CONTACT, 1),
            r.mapped(CONTACT, 2),
            r.mapped(CONTACT, 3),
        );
        let rb = s.sync(&b, hello(1, None, Mode::Full), &[]).await;
        assert_eq!(rb.upserts.len(), 5);

        s.sync(
            &a,
            hello(2, Some(r.done.cursor), Mode::Delta),
            &[delete(COMPANY, server_id(acme), at(a.id, 1))],
        )
        .await;
        assert_eq!(s.count("company"), 1);
        assert_eq!(s.count("contact"), 1);
        let tomb: Vec<(String, i64)> = s
            .rows("SELECT tbl, id FROM _tombstone ORDER BY seq", &[])
            .iter()
            .map(|r| (r[0].text(), r[1].int()))
            .collect();
        assert_eq!(tomb.len(), 3);
        assert_eq!(tomb[2], ("company".into(), acme as i64));
        let mut details: Vec<i64> = tomb[..2]
            .iter()
            .map(|(t, id)| {
                assert_eq!(t, "contact");
                *id
            })
            .collect();
        details.sort_unstable();
        let mut want = vec![ann as i64, bob as i64];
        want.sort_unstable();
        assert_eq!(details, want);

        // B learns all three removals in its delta, and nothing about the untouched records.
        let rb2 = s
            .sync(&b, hello(2, Some(rb.done.cursor), Mode::Delta), &[])
            .await;
        assert!(!rb2.reset);
        assert!(rb2.upserts.is_empty());
        let mut removed: Vec<(u8, u64)> = rb2.removes.iter().map(|x| (x.table.0, x.id.0)).collect();
        removed.sort_unstable();
        let mut want = vec![(0, acme), (1, ann), (1, bob)];
        want.sort_unstable();
        assert_eq!(removed, want);
        // A detail added later under the deleted master is refused; the other master is intact.
        let rb3 = s
            .sync(
                &b,
                hello(3, Some(rb2.done.cursor), Mode::Delta),
                &[add(
                    CONTACT,
                    9,
                    Some(server_id(acme)),
                    at(b.id, 2),
                    text3(CONTACT, "Late", "l", "9"),
                )],
            )
            .await;
        assert_eq!(rb3.rejection(RejectReason::ParentMissing).key, local(9));
        assert_eq!(company_name(&s, keep), "Keep");
        let _ = (cid, ServerId(0));
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn delete_wins_over_concurrent_update_and_later_updates_are_rejected() {
        let s = TestServer::start().await;
        let a = s.device("north");
        let b = s.device("north");
        let id = one_company(&s, &a, at(a.id, -60_000)).await;
        // A deletes at t+0.
        s.sync(
            &a,
            hello(2, None, Mode::Full),
            &[delete(COMPANY, server_id(id), at(a.id, 0))],
        )
        .await;
        // B edited earlier, offline: the delete wins; the update is rejected Deleted with its body.
        let older = update(
            COMPANY,
            server_id(id),
            None,
            at(b.id, -30_000),
            text3(COMPANY, "B edit", "x", "0"),
        );
        let r = s
            .sync(&b, hello(3, None, Mode::Full), std::slice::from_ref(&older))
            .await;
        let rej = r.rejection(RejectReason::Deleted);
        assert_eq!(rej.body, older.body);
        assert_eq!(rej.key, server_id(id));
        assert_eq!(rej.op, ferrysync_core::wire::Op::Update);
        // Even a newer update of a deleted record is rejected.
        let newer = update(
            COMPANY,
            server_id(id),
            None,
            at(b.id, 1_000),
            text3(COMPANY, "B again", "x", "0"),
        );
        let r = s
            .sync(&b, hello(4, None, Mode::Full), std::slice::from_ref(&newer))
            .await;
        assert_eq!(r.rejection(RejectReason::Deleted).body, newer.body);
        assert_eq!(s.count("company"), 0);
        // Deleting again is idempotent, not an error.
        let r = s
            .sync(
                &b,
                hello(5, None, Mode::Full),
                &[delete(COMPANY, server_id(id), at(b.id, 2_000))],
            )
            .await;
        assert!(r.rejected.is_empty());
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn delete_applies_even_if_older_than_the_last_update() {
        let s = TestServer::start().await;
        let a = s.device("north");
        let b = s.device("north");
        let id = one_company(&s, &a, at(a.id, -60_000)).await;
        s.sync(
            &b,
            hello(2, None, Mode::Full),
            &[update(
                COMPANY,
                server_id(id),
                None,
                at(b.id, 0),
                text3(COMPANY, "B", "x", "0"),
            )],
        )
        .await;
        let r = s
            .sync(
                &a,
                hello(3, None, Mode::Full),
                &[delete(COMPANY, server_id(id), at(a.id, -30_000))],
            )
            .await;
        assert!(r.rejected.is_empty());
        assert_eq!(s.count("company"), 0);
        assert!(r.upserts.is_empty());
        s.stop().await;
    }
}
