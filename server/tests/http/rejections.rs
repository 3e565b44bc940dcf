//! Every rejection reason, each with the body that was sent; other changes of the batch apply.

use crate::common::*;
use ferrysync_core::wire::{Mode, Op, RejectReason};
use ferrysync_core::TableId;

store_test! {
    #[tokio::test]
    async fn every_reason_is_returned_with_the_sent_body() {
        let s = TestServer::start().await;
        let dev = s.device("north");
        let other = s.device("south");
        let t = at(dev.id, 0);
        // Setup: a north company to delete, a south company out of scope.
        let r = s
            .sync(
                &dev,
                hello(1, None, Mode::Full),
                &[add(COMPANY, 1, None, t, text3(COMPANY, "Gone", "x", "0"))],
            )
            .await;
        let gone = r.mapped(COMPANY, 1);
        s.sync(
            &dev,
            hello(2, None, Mode::Full),
            &[delete(COMPANY, server_id(gone), at(dev.id, 1))],
        )
        .await;
        let south = s
            .sync(
                &other,
                hello(1, None, Mode::Full),
                &[add(COMPANY, 1, None, t, text3(COMPANY, "South", "x", "0"))],
            )
            .await
            .mapped(COMPANY, 1);

        let t = at(dev.id, 10);
        let good = add(COMPANY, 10, None, t, text3(COMPANY, "Good", "x", "0"));
        let add_server_key = Chg {
            key: server_id(5),
            ..add(COMPANY, 0, None, t, text3(COMPANY, "BadKey", "x", "0"))
        };
        let master_with_parent = add(
            COMPANY,
            11,
            Some(local(10)),
            t,
            text3(COMPANY, "BadKey2", "x", "0"),
        );
        let invalid = add(COMPANY, 12, None, t, vec![3, b'a', b'b']);
        let trailing = add(COMPANY, 13, None, t, {
            let mut b = text3(COMPANY, "a", "b", "c");
            b.push(0);
            b
        });
        let out_of_scope = update(
            COMPANY,
            server_id(south),
            None,
            t,
            text3(COMPANY, "Mine", "x", "0"),
        );
        let out_of_scope_delete = delete(COMPANY, server_id(south), t);
        let deleted = update(
            COMPANY,
            server_id(gone),
            None,
            t,
            text3(COMPANY, "Back", "x", "0"),
        );
        let unknown = update(
            COMPANY,
            server_id(999_999),
            None,
            t,
            text3(COMPANY, "Who", "x", "0"),
        );
        let unknown_local = update(
            COMPANY,
            local(77),
            None,
            t,
            text3(COMPANY, "Who2", "x", "0"),
        );
        let unknown_delete = delete(COMPANY, server_id(888_888), t);
        let orphan_deleted = add(
            CONTACT,
            1,
            Some(server_id(gone)),
            t,
            text3(CONTACT, "Orphan", "o", "1"),
        );
        let orphan_local = add(
            CONTACT,
            2,
            Some(local(99)),
            t,
            text3(CONTACT, "Orphan2", "o", "2"),
        );
        let orphan_unknown = add(
            CONTACT,
            3,
            Some(server_id(777_777)),
            t,
            text3(CONTACT, "Orphan3", "o", "3"),
        );
        let no_parent = add(CONTACT, 4, None, t, text3(CONTACT, "NoParent", "o", "4"));
        let under_south = add(
            CONTACT,
            5,
            Some(server_id(south)),
            t,
            text3(CONTACT, "Spy", "o", "5"),
        );
        let good_detail = add(
            CONTACT,
            6,
            Some(local(10)),
            t,
            text3(CONTACT, "Fine", "f", "6"),
        );
        let unknown_table = Chg {
            table: TableId(9),
            ..add(COMPANY, 1, None, t, vec![1, 2, 3])
        };
        let batch = vec![
            good.clone(),
            add_server_key.clone(),
            master_with_parent.clone(),
            invalid.clone(),
            trailing.clone(),
            out_of_scope.clone(),
            out_of_scope_delete.clone(),
            deleted.clone(),
            unknown.clone(),
            unknown_local.clone(),
            unknown_delete.clone(),
            orphan_deleted.clone(),
            orphan_local.clone(),
            orphan_unknown.clone(),
            no_parent.clone(),
            under_south.clone(),
            good_detail.clone(),
            unknown_table.clone(),
        ];
        let before_south = s
            .dump()
            .into_iter()
            .filter(|l| l.contains("South"))
            .collect::<Vec<_>>();
        let r = s.sync(&dev, hello(3, None, Mode::Full), &batch).await;

        let expect = [
            (&add_server_key, RejectReason::BadKey),
            (&master_with_parent, RejectReason::BadKey),
            (&invalid, RejectReason::InvalidBody),
            (&trailing, RejectReason::InvalidBody),
            (&out_of_scope, RejectReason::OutOfScope),
            (&out_of_scope_delete, RejectReason::OutOfScope),
            (&deleted, RejectReason::Deleted),
            (&unknown, RejectReason::UnknownRecord),
            (&unknown_local, RejectReason::UnknownRecord),
            (&unknown_delete, RejectReason::UnknownRecord),
            (&orphan_deleted, RejectReason::ParentMissing),
            (&orphan_local, RejectReason::ParentMissing),
            (&orphan_unknown, RejectReason::ParentMissing),
            (&no_parent, RejectReason::BadKey),
            (&under_south, RejectReason::OutOfScope),
            (&unknown_table, RejectReason::UnknownTable),
        ];
        assert_eq!(r.rejected.len(), expect.len(), "{:#?}", r.rejected);
        for ((sent, reason), got) in expect.iter().zip(&r.rejected) {
            assert_eq!(got.reason, *reason, "{sent:?}");
            assert_eq!(got.table, sent.table);
            assert_eq!(got.op, sent.op);
            assert_eq!(got.key, sent.key);
            assert_eq!(got.body, sent.body, "{reason}: the sent body comes back");
        }
        assert_eq!(r.rejected[4].op, Op::Update);
        assert_eq!(r.rejected[5].op, Op::Delete);
        // The good changes of the same batch applied, the detail under its new master.
        let good_id = r.mapped(COMPANY, 10);
        let fine = r.mapped(CONTACT, 6);
        assert_eq!(r.mappings.len(), 2);
        let parent = s.one_i64("SELECT company_id FROM contact WHERE id = ?1", &[fine as i64]);
        assert_eq!(parent, good_id as i64);
        assert_eq!(s.count("contact"), 1);
        // The other scope's record is untouched.
        let after_south = s
            .dump()
            .into_iter()
            .filter(|l| l.contains("South"))
            .collect::<Vec<_>>();
        assert_eq!(before_south, after_south);
        // Metrics count rejections by reason.
        let (_, m) = s.get("/metrics").await;
        assert!(
            m.contains("ferrysync_rejections_total{reason=\"bad_key\"} 3"),
            "{m}"
        );
        assert!(
            m.contains("ferrysync_rejections_total{reason=\"unknown_table\"} 1"),
            "{m}"
        );
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn a_local_delete_of_a_record_never_synced_is_a_no_op() {
        let s = TestServer::start().await;
        let dev = s.device("north");
        let r = s
            .sync(
                &dev,
                hello(1, None, Mode::Full),
                &[delete(COMPANY, local(3), at(dev.id, 0))],
            )
            .await;
        assert!(r.rejected.is_empty());
        assert!(r.mappings.is_empty());
        s.stop().await;
    }
}
