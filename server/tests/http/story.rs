//! The pattern's story, retries, and a two-level hierarchy.

use crate::common::*;
use ferrysync_core::wire::Mode;

store_test! {
    /// A device creates companies with local ids 5, 6, 7 and contacts under them offline; one
    /// sync stores them under new server ids, each contact under the right company, and the reply
    /// carries the map.
    #[tokio::test]
    async fn story_local_ids_are_mapped_and_foreign_keys_rewritten() {
        let s = TestServer::start().await;
        let dev = s.device("north");
        let t = at(dev.id, 0);
        // Something already on the server, so server ids differ from local ones.
        let other = s.device("south");
        s.sync(
            &other,
            hello(1, None, Mode::Full),
            &[add(COMPANY, 1, None, t, text3(COMPANY, "Old", "Nice", "0"))],
        )
        .await;

        let changes = vec![
            add(COMPANY, 5, None, t, text3(COMPANY, "ACME", "Lyon", "+33 1")),
            add(
                COMPANY,
                6,
                None,
                t,
                text3(COMPANY, "Globex", "Paris", "+33 2"),
            ),
            add(
                COMPANY,
                7,
                None,
                t,
                text3(COMPANY, "Initech", "Brest", "+33 3"),
            ),
            add(
                CONTACT,
                1,
                Some(local(5)),
                t,
                text3(CONTACT, "Ann", "ann@acme", "1"),
            ),
            add(
                CONTACT,
                2,
                Some(local(5)),
                t,
                text3(CONTACT, "Bob", "bob@acme", "2"),
            ),
            add(
                CONTACT,
                3,
                Some(local(6)),
                t,
                text3(CONTACT, "Cid", "cid@globex", "3"),
            ),
            add(
                CONTACT,
                4,
                Some(local(7)),
                t,
                text3(CONTACT, "Dee", "dee@initech", "4"),
            ),
        ];
        let r = s.sync(&dev, hello(42, None, Mode::Full), &changes).await;
        assert_eq!(r.accepted.batch_id, 42);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        assert_eq!(r.mappings.len(), 7);
        let (c5, c6, c7) = (
            r.mapped(COMPANY, 5),
            r.mapped(COMPANY, 6),
            r.mapped(COMPANY, 7),
        );
        assert!(c5 != 5 && c5 != c6 && c6 != c7);

        // Plain SQL on the server's file: each contact under the right company's server id.
        let fk = |contact_local: u32| -> (i64, String) {
            let row = &s.rows(
                "SELECT company_id, name FROM contact WHERE id = ?1",
                &[r.mapped(CONTACT, contact_local) as i64],
            )[0];
            (row[0].int(), row[1].text())
        };
        assert_eq!(fk(1), (c5 as i64, "Ann".into()));
        assert_eq!(fk(2), (c5 as i64, "Bob".into()));
        assert_eq!(fk(3), (c6 as i64, "Cid".into()));
        assert_eq!(fk(4), (c7 as i64, "Dee".into()));
        let name = s.one_text("SELECT name FROM company WHERE id = ?1", &[c7 as i64]);
        assert_eq!(name, "Initech");

        // The reply is a full refresh of the device's scope without what it just sent: the
        // mappings deliver those records (nothing else is in the scope yet).
        assert!(r.reset);
        assert!(r.upserts.is_empty(), "{:?}", r.upserts);
        assert!(r.removes.is_empty());
        assert_eq!(r.done.count as usize, 7 + 1);

        // A later full refresh holds them all, with server ids and the foreign keys rewritten.
        let r = s.sync(&dev, hello(43, None, Mode::Full), &[]).await;
        assert!(r.reset);
        assert_eq!(r.ids(COMPANY), {
            let mut v = vec![c5, c6, c7];
            v.sort_unstable();
            v
        });
        assert_eq!(r.ids(CONTACT).len(), 4);
        let ann = r
            .upserts
            .iter()
            .find(|u| u.table == CONTACT && u.body == text3(CONTACT, "Ann", "ann@acme", "1"))
            .unwrap();
        assert_eq!(ann.parent, Some(c5));
        assert_eq!(r.done.count as usize, 1 + 7);
        s.stop().await;
    }
}

store_test! {
    /// The same batch sent twice (the first reply was lost): nothing is created twice and the
    /// mappings are the same.
    #[tokio::test]
    async fn retried_batch_creates_no_duplicates() {
        let s = TestServer::start().await;
        let dev = s.device("north");
        let t = at(dev.id, 0);
        let changes = vec![
            add(COMPANY, 5, None, t, text3(COMPANY, "ACME", "Lyon", "1")),
            add(COMPANY, 6, None, t, text3(COMPANY, "Globex", "Paris", "2")),
            add(
                CONTACT,
                1,
                Some(local(5)),
                t,
                text3(CONTACT, "Ann", "a", "1"),
            ),
            add(
                CONTACT,
                2,
                Some(local(6)),
                t,
                text3(CONTACT, "Bob", "b", "2"),
            ),
        ];
        let first = s.sync(&dev, hello(7, None, Mode::Delta), &changes).await;
        let dump = s.dump();
        let second = s.sync(&dev, hello(7, None, Mode::Delta), &changes).await;
        assert_eq!(first.mappings, second.mappings);
        assert_eq!(s.count("company"), 2);
        assert_eq!(s.count("contact"), 2);
        assert!(second.rejected.is_empty());
        // The retry changed nothing at all.
        assert_eq!(s.dump(), dump);
        // The first reply sends nothing back (the sync wrote it all); the retry wrote nothing,
        // so its reply carries the records as the server holds them: exactly as sent.
        assert!(first.upserts.is_empty());
        assert_eq!(second.upserts.len(), 4);
        for (u, c) in second.upserts.iter().zip(&changes) {
            assert_eq!((u.table, &u.body), (c.table, &c.body));
        }
        s.stop().await;
    }
}

store_test! {
    /// A full refresh does not send back what the sync wrote, so a retried add whose record
    /// another device deleted meanwhile gets its mapping and a `Remove`: the device must not
    /// keep a record the server no longer has.
    #[tokio::test]
    async fn a_retried_add_of_a_record_deleted_since_is_mapped_then_removed() {
        let s = TestServer::start().await;
        let (a, b) = (s.device("north"), s.device("north"));
        let changes = vec![
            add(COMPANY, 5, None, at(a.id, 0), text3(COMPANY, "ACME", "Lyon", "1")),
            add(COMPANY, 6, None, at(a.id, 0), text3(COMPANY, "Keep", "Lyon", "2")),
        ];
        // The reply to this first sync is lost.
        let lost = s.sync(&a, hello(1, None, Mode::Full), &changes).await;
        let (acme, keep) = (lost.mapped(COMPANY, 5), lost.mapped(COMPANY, 6));
        assert!(lost.upserts.is_empty() && lost.removes.is_empty());
        // Another device deletes ACME.
        let rb = s.sync(&b, hello(1, None, Mode::Full), &[]).await;
        assert_eq!(rb.ids(COMPANY).len(), 2);
        let del = delete(COMPANY, server_id(acme), at(b.id, 9));
        s.sync(&b, hello(2, Some(rb.done.cursor), Mode::Delta), &[del])
            .await;
        // The retry: both mappings again; ACME is removed. The retry wrote nothing (same
        // stamps), so Keep is sent as the server holds it.
        let r = s.sync(&a, hello(1, None, Mode::Full), &changes).await;
        assert_eq!(r.mappings, lost.mappings);
        assert!(r.reset);
        let removed: Vec<u64> = r.removes.iter().map(|x| x.id.0).collect();
        assert_eq!(removed, vec![acme]);
        assert_eq!(r.upsert(COMPANY, keep).unwrap().body, changes[1].body);
        assert_eq!(r.ids(COMPANY), vec![keep]);
        s.stop().await;
    }
}
