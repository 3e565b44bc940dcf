//! Many devices syncing at once, and a large batch streamed into one transaction.

use crate::common::*;
use ferrysync_core::wire::Mode;
use std::time::Duration;

store_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_syncs_of_many_devices_all_apply() {
        let s = TestServer::start().await;
        let devs: Vec<Dev> = (0..6).map(|i| s.device(&format!("scope{i}"))).collect();
        let runs = devs.iter().map(|d| {
            let s = &s;
            async move {
                let mut changes: Vec<Chg> = (1..=50)
                    .map(|i| {
                        add(
                            COMPANY,
                            i,
                            None,
                            at(d.id, 0),
                            text3(COMPANY, &d.scope, "x", "0"),
                        )
                    })
                    .collect();
                changes.extend((1..=100).map(|j| {
                    add(
                        CONTACT,
                        j,
                        Some(local(1 + (j - 1) / 2)),
                        at(d.id, 0),
                        text3(CONTACT, &d.scope, "y", "1"),
                    )
                }));
                let r = s.sync(d, hello(1, None, Mode::Full), &changes).await;
                (d.clone(), r)
            }
        });
        let results = futures_join_all(runs.collect()).await;
        assert_eq!(s.count("company"), 300);
        assert_eq!(s.count("contact"), 600);
        for (d, r) in results {
            assert_eq!(r.mappings.len(), 150);
            // Each reply maps the device's records and sends none back (they are its own),
            // nor any other device's (other scopes).
            assert!(r.upserts.is_empty(), "{:?}", r.upserts);
            // A full refresh then holds exactly the device's own records.
            let full = s.sync(&d, hello(2, None, Mode::Full), &[]).await;
            assert_eq!(full.upserts.len(), 150);
            let schema = ferrysync_server::LoadedSchema::example();
            assert!(full
                .upserts
                .iter()
                .all(|u| texts(&schema, u.table, &u.body)[0] == d.scope));
        }
        // Six pushes and six full refreshes.
        let (_, m) = s.get("/metrics").await;
        assert!(m.contains("ferrysync_syncs_total 12\n"), "{m}");
        s.stop().await;
    }
}

/// Polls a list of futures together (no extra dependency).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

store_test! {
    #[tokio::test]
    async fn a_large_batch_streams_into_one_transaction() {
        let s = TestServer::start().await;
        let dev = s.device("north");
        let t = at(dev.id, 0);
        let mut changes: Vec<Chg> = (1..=1_000)
            .map(|i| {
                add(
                    COMPANY,
                    i,
                    None,
                    t,
                    text3(COMPANY, &format!("C{i}"), "x", "0"),
                )
            })
            .collect();
        changes.extend((1..=10_000).map(|j| {
            add(
                CONTACT,
                j,
                Some(local(1 + (j - 1) / 10)),
                t,
                text3(CONTACT, &format!("K{j}"), "y", "1"),
            )
        }));
        let r = s.sync(&dev, hello(1, None, Mode::Delta), &changes).await;
        assert_eq!(r.mappings.len(), 11_000);
        // What the sync wrote is not sent back.
        assert!(r.upserts.is_empty());
        // Every contact is under the company its local parent was mapped to.
        let wrong = s.one_i64(
            "SELECT count(*) FROM contact k JOIN company c ON c.id = k.company_id
             WHERE CAST(substr(c.name, 2) AS INTEGER) != (CAST(substr(k.name, 2) AS INTEGER) - 1) / 10 + 1",
            &[],
        );
        assert_eq!(wrong, 0);
        s.stop().await;
    }
}

store_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pull_does_not_wait_for_a_push_that_holds_the_writer() {
        let s = TestServer::start().await;
        let (a, b) = (s.device("north"), s.device("north"));
        let first = s
            .sync(
                &a,
                hello(1, None, Mode::Delta),
                &[add(COMPANY, 1, None, at(a.id, 0), text3(COMPANY, "ACME", "x", "0"))],
            )
            .await;
        // A push large enough that the server starts applying it before its body ends (past
        // 8 Ki changes), whose last bytes are late, as over a weak link: it holds the writer.
        let changes: Vec<Chg> = (2..=9_000)
            .map(|i| add(COMPANY, i, None, at(a.id, 1), text3(COMPANY, "C", "y", "1")))
            .collect();
        let body = encode_request(hello(2, None, Mode::Delta), &changes);
        let (mut tx, chan, head, tail) = split_body(&body, body.len() - 10);
        let push = s.post_sync_body(Some(&a.token), chan);
        let others = async {
            tx.send_data(head).await.unwrap();
            for _ in 0..500 {
                if s.writer_busy() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(s.writer_busy(), "the push never took the writer");
            // Another phone's pull answers meanwhile, from what is committed.
            let pull = tokio::time::timeout(
                Duration::from_secs(10),
                s.post_sync(Some(&b.token), encode_request(hello(1, None, Mode::Delta), &[])),
            )
            .await
            .expect("the pull waited for the push's transaction");
            assert_eq!(pull.status.as_u16(), 200, "{}", pull.text());
            let pull = decode_reply(1, &pull.body).unwrap();
            assert_eq!(pull.ids(COMPANY), vec![first.mapped(COMPANY, 1)]);
            assert!(s.writer_busy(), "the push ended before the pull");
            tx.send_data(tail).await.unwrap();
            drop(tx);
        };
        let (push, ()) = tokio::join!(push, others);
        assert_eq!(push.status.as_u16(), 200, "{}", push.text());
        assert_eq!(decode_reply(2, &push.body).unwrap().mappings.len(), 8_999);
        assert_eq!(s.count("company"), 9_000);
        s.stop().await;
    }
}
