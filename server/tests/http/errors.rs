//! Every error status, with its machine-readable body; a bad or cut request changes nothing.

use crate::common::*;
use bytes::Bytes;
use ferrysync_core::wire::{End, Hello, Mode, Request, PROTOCOL_VERSION};
use ferrysync_server::{Config, CONTENT_TYPE_V1};
use http_body_util::BodyExt;
use std::io;

/// A server with some data, and a device of its scope.
async fn seeded(config: Config) -> (TestServer, Dev) {
    let s = TestServer::with_config(config).await;
    let dev = s.device("north");
    s.sync(
        &dev,
        hello(1, None, Mode::Full),
        &[
            add(
                COMPANY,
                1,
                None,
                at(dev.id, 0),
                text3(COMPANY, "ACME", "Lyon", "0"),
            ),
            add(
                CONTACT,
                1,
                Some(local(1)),
                at(dev.id, 0),
                text3(CONTACT, "Ann", "a", "1"),
            ),
        ],
    )
    .await;
    (s, dev)
}

/// A batch of new records that would change the database if applied.
fn batch(n: u32, dev: &Dev) -> Vec<Chg> {
    let mut v: Vec<Chg> = (0..n)
        .map(|i| {
            add(
                COMPANY,
                100 + i,
                None,
                at(dev.id, 1),
                text3(COMPANY, "ACME new", "x", "0"),
            )
        })
        .collect();
    v.push(add(
        CONTACT,
        100,
        Some(local(100)),
        at(dev.id, 1),
        text3(CONTACT, "New", "x", "0"),
    ));
    v
}

store_test! {
    #[tokio::test]
    async fn malformed_requests_are_400_naming_the_frame_and_change_nothing() {
        let (s, dev) = seeded(Config::default()).await;
        let dump = s.dump();
        let changes = batch(3, &dev);
        let good = encode_request(hello(2, None, Mode::Full), &changes);

        // Bad CRC in frame 2 (a text byte of the second company's body changed on the way).
        let mut bad = Vec::new();
        bad.extend(frame(&Request::Hello(hello(2, None, Mode::Full))));
        bad.extend(change_frame(&changes[0]));
        let mut f = change_frame(&changes[1]);
        let pos = f.windows(4).position(|w| w == b"ACME").unwrap();
        f[pos] = b'B';
        bad.extend(f);
        bad.extend(change_frame(&changes[2]));
        s.post_sync(Some(&dev.token), bad)
            .await
            .assert_error(400, "bad_crc", Some(2));

        // Garbage.
        let a = s
            .post_sync(Some(&dev.token), b"hello world\0".to_vec())
            .await;
        assert_eq!(a.status.as_u16(), 400);
        assert_eq!(a.json()["frame"], 0);
        let a = s.post_sync(Some(&dev.token), vec![0x41; 5000]).await;
        a.assert_error(400, "frame_too_large", Some(0));

        // Truncated: the stream ends before End (frame 5 would be End)...
        let mut cut = encode_request(hello(2, None, Mode::Full), &changes);
        let end_len = frame(&Request::End(End { count: 4 })).len();
        cut.truncate(cut.len() - end_len);
        s.post_sync(Some(&dev.token), cut)
            .await
            .assert_error(400, "truncated", Some(5));
        // ... or in the middle of a frame.
        s.post_sync(Some(&dev.token), good[..good.len() - 3].to_vec())
            .await
            .assert_error(400, "truncated", Some(5));

        // Wrong order: a contact before a company.
        let mut wrong = frame(&Request::Hello(hello(2, None, Mode::Full)));
        wrong.extend(change_frame(&changes[3]));
        wrong.extend(change_frame(&changes[0]));
        wrong.extend(frame(&Request::End(End { count: 2 })));
        s.post_sync(Some(&dev.token), wrong)
            .await
            .assert_error(400, "table_order", Some(2));
        // No Hello first.
        let mut headless = change_frame(&changes[0]);
        headless.extend(frame(&Request::End(End { count: 1 })));
        s.post_sync(Some(&dev.token), headless)
            .await
            .assert_error(400, "missing_start", Some(0));
        // End count that does not match.
        let mut miscount = encode_request(hello(2, None, Mode::Full), &changes[..1]);
        miscount.truncate(miscount.len() - frame(&Request::End(End { count: 1 })).len());
        miscount.extend(frame(&Request::End(End { count: 7 })));
        s.post_sync(Some(&dev.token), miscount)
            .await
            .assert_error(400, "count_mismatch", Some(2));
        // Frames after End.
        let mut after = good.clone();
        after.extend(change_frame(&changes[0]));
        s.post_sync(Some(&dev.token), after)
            .await
            .assert_error(400, "after_end", Some(6));
        // Empty body.
        s.post_sync(Some(&dev.token), Vec::new())
            .await
            .assert_error(400, "truncated", Some(0));

        // Unsupported protocol version (decodable and not).
        let v2 = Hello {
            protocol: PROTOCOL_VERSION + 1,
            ..hello(2, None, Mode::Full)
        };
        let a = s
            .post_sync(Some(&dev.token), encode_request(v2, &changes))
            .await;
        a.assert_error(400, "unsupported_version", Some(0));
        let newer = (PROTOCOL_VERSION + 1).to_string();
        assert!(a.json()["message"].as_str().unwrap().contains(&newer));
        let mut future = frame(&(0u8, 9u16, 1u64, 2u64, "a longer future hello"));
        future.extend(frame(&Request::End(End { count: 0 })));
        s.post_sync(Some(&dev.token), future)
            .await
            .assert_error(400, "unsupported_version", Some(0));

        // 409: another schema.
        let other = hello_with(0x1234, 2, None, Mode::Full);
        s.post_sync(Some(&dev.token), encode_request(other, &changes))
            .await
            .assert_error(409, "schema_mismatch", Some(0));

        assert_eq!(s.dump(), dump, "no bad request changed anything");
        // The good request still works.
        let a = s.post_sync(Some(&dev.token), good).await;
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(s.count("company"), 4);
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn auth_errors_are_401() {
        let (s, dev) = seeded(Config::default()).await;
        let body = encode_request(hello(2, None, Mode::Full), &batch(1, &dev));
        let records = s.dump();
        let a = s.post_sync(None, body.clone()).await;
        a.assert_error(401, "unauthorized", None);
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        s.post_sync(Some("not-a-token"), body.clone())
            .await
            .assert_error(401, "unauthorized", None);
        let (_, h, b) = s
            .request(
                "POST",
                "/v1/sync",
                &[
                    ("content-type", CONTENT_TYPE_V1),
                    ("authorization", "Basic abc"),
                ],
                full(body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
        assert!(String::from_utf8_lossy(&b).contains("unauthorized"));
        assert!(s.revoke(dev.id));
        let a = s.post_sync(Some(&dev.token), body).await;
        a.assert_error(401, "unauthorized", None);
        assert!(a.json()["message"].as_str().unwrap().contains("revoked"));
        let no_devices = |d: Vec<String>| {
            d.into_iter()
                .filter(|l| !l.starts_with("_device"))
                .collect::<Vec<_>>()
        };
        assert_eq!(no_devices(s.dump()), no_devices(records));
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn wrong_content_type_is_415_and_unknown_paths_404() {
        let (s, dev) = seeded(Config::default()).await;
        let body = encode_request(hello(2, None, Mode::Full), &[]);
        let auth = format!("Bearer {}", dev.token);
        let (status, _, b) = s
            .request(
                "POST",
                "/v1/sync",
                &[("content-type", "text/plain"), ("authorization", &auth)],
                full(body),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 415);
        let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(j["error"], "unsupported_media_type");
        assert_eq!(s.get("/nope").await.0.as_u16(), 404);
        assert_eq!(s.get("/v1/sync").await.0.as_u16(), 405);
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn over_the_limits_is_413_and_changes_nothing() {
        let (s, dev) = seeded(Config {
            max_body_bytes: 2_000,
            max_frames: 8,
            ..Config::default()
        })
        .await;
        let dump = s.dump();
        // Too many frames (small bodies, under the byte limit).
        let many = encode_request(hello(2, None, Mode::Full), &batch(9, &dev));
        assert!(many.len() < 2_000);
        let a = s.post_sync(Some(&dev.token), many).await;
        a.assert_error(413, "too_large", Some(8));
        // Too many bytes, declared in Content-Length.
        let big: Vec<Chg> = (0..20)
            .map(|i| {
                add(
                    COMPANY,
                    i,
                    None,
                    at(dev.id, 0),
                    text3(COMPANY, &"x".repeat(600), "y", "z"),
                )
            })
            .collect();
        let big = encode_request(hello(2, None, Mode::Full), &big[..4]);
        assert!(big.len() > 2_000);
        s.post_sync(Some(&dev.token), big.clone())
            .await
            .assert_error(413, "too_large", None);
        // Too many bytes, streamed without a length.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, io::Error>::new(4);
        let chunks: Vec<Bytes> = big.chunks(500).map(Bytes::copy_from_slice).collect();
        let sender = tokio::spawn(async move {
            for c in chunks {
                if tx.send_data(c).await.is_err() {
                    break;
                }
            }
        });
        let a = s.post_sync_body(Some(&dev.token), body.boxed()).await;
        a.assert_error(413, "too_large", None);
        let _ = sender.await;
        s.wait_idle().await;
        assert_eq!(s.dump(), dump);
        s.stop().await;
    }
}

/// Whether the server is inside a sync transaction (it holds the single-writer lock).
fn writer_busy(s: &TestServer) -> bool {
    s.writer_busy()
}

store_test! {
    #[tokio::test]
    async fn a_request_cut_off_half_way_changes_nothing() {
        let (s, dev) = seeded(Config::default()).await;
        let dump = s.dump();
        let companies = s.count("company");
        // More changes than the server reads ahead, so they stream into the open transaction.
        let body = encode_request(hello(2, None, Mode::Full), &batch(10_000, &dev));
        let (mut tx, chan) = http_body_util::channel::Channel::<Bytes, io::Error>::new(4);
        let cut = body.len() * 9 / 10;
        let chunks: Vec<Bytes> = body[..cut]
            .chunks(16 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let server = &s;
        let token = dev.token.clone();
        let request = async move {
            let auth = format!("Bearer {token}");
            server
                .request(
                    "POST",
                    "/v1/sync",
                    &[("content-type", CONTENT_TYPE_V1), ("authorization", &auth)],
                    chan.boxed(),
                )
                .await
        };
        let cutter = async move {
            for c in chunks {
                tx.send_data(c).await.unwrap();
            }
            // Wait until the server is applying this batch in its transaction, then cut.
            let mut busy = false;
            for _ in 0..500 {
                if writer_busy(server) {
                    busy = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(busy, "the server never started the transaction");
            tx.abort(io::Error::other("connection lost"));
        };
        let (result, ()) = tokio::join!(request, cutter);
        assert!(result.is_err(), "the client saw its request fail");
        s.wait_idle().await;
        assert!(!writer_busy(&s), "rolled back and released");
        assert_eq!(s.count("company"), companies);
        assert_eq!(s.dump(), dump);
        // The device retries the whole batch later: applied once.
        let a = s.post_sync(Some(&dev.token), body).await;
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(s.count("company"), companies + 10_000);
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn a_stalled_request_times_out_with_408_and_changes_nothing() {
        let (s, dev) = seeded(Config {
            body_timeout: std::time::Duration::from_millis(200),
            ..Config::default()
        })
        .await;
        let dump = s.dump();
        let body = encode_request(hello(2, None, Mode::Full), &batch(5, &dev));
        let (mut tx, chan) = http_body_util::channel::Channel::<Bytes, io::Error>::new(4);
        tx.send_data(Bytes::copy_from_slice(&body[..body.len() / 2]))
            .await
            .unwrap();
        // The sender is kept but sends nothing more.
        let a = s.post_sync_body(Some(&dev.token), chan.boxed()).await;
        a.assert_error(408, "body_timeout", None);
        drop(tx);
        s.wait_idle().await;
        assert_eq!(s.dump(), dump);
        s.stop().await;
    }
}

store_test! {
    /// With every slot taken, a sync waits in the queue and runs when a slot frees.
    #[tokio::test]
    async fn a_sync_waits_for_a_free_slot() {
        let (s, dev) = seeded(Config {
            max_concurrent_syncs: 1,
            queue_wait: std::time::Duration::from_secs(30),
            ..Config::default()
        })
        .await;
        let body = encode_request(hello(2, None, Mode::Full), &batch(2, &dev));
        let (mut tx, chan, head, tail) = split_body(&body, body.len() - 10);
        let slow = s.post_sync_body(Some(&dev.token), chan);
        let other = async {
            tx.send_data(head).await.unwrap();
            s.wait_in_flight(1).await;
            // The slow sync holds the only slot: this one queues until it ends.
            let queued = s.post_sync(
                Some(&dev.token),
                encode_request(hello(3, None, Mode::Full), &[]),
            );
            let release = async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                tx.send_data(tail).await.unwrap();
                drop(tx);
            };
            let (a, ()) = tokio::join!(queued, release);
            a
        };
        let (slow, queued) = tokio::join!(slow, other);
        assert_eq!(slow.status.as_u16(), 200, "{}", slow.text());
        assert_eq!(queued.status.as_u16(), 200, "{}", queued.text());
        decode_reply(3, &queued.body).unwrap();
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn a_sync_that_waits_too_long_for_a_slot_is_503_with_retry_after() {
        let (s, dev) = seeded(Config {
            max_concurrent_syncs: 1,
            queue_wait: std::time::Duration::from_millis(200),
            retry_after_secs: 3,
            ..Config::default()
        })
        .await;
        let changes = batch(2, &dev);
        let body = encode_request(hello(2, None, Mode::Full), &changes);
        let (mut tx, chan, head, tail) = split_body(&body, body.len() - 10);
        let slow = s.post_sync_body(Some(&dev.token), chan);
        let other = async {
            tx.send_data(head).await.unwrap();
            s.wait_in_flight(1).await;
            // The slow sync holds the only slot.
            let a = s
                .post_sync(
                    Some(&dev.token),
                    encode_request(hello(3, None, Mode::Full), &[]),
                )
                .await;
            a.assert_error(503, "overloaded", None);
            assert_eq!(a.headers["retry-after"], "3");
            tx.send_data(tail).await.unwrap();
            drop(tx);
        };
        let (slow, ()) = tokio::join!(slow, other);
        assert_eq!(slow.status.as_u16(), 200, "{}", slow.text());
        decode_reply(2, &slow.body).unwrap();
        s.wait_idle().await;
        // The slot is free again.
        s.sync(&dev, hello(4, None, Mode::Full), &[]).await;
        let (_, m) = s.get("/metrics").await;
        assert!(
            m.contains("ferrysync_errors_total{status=\"503\",code=\"overloaded\"} 1"),
            "{m}"
        );
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn shutdown_lets_a_sync_in_flight_finish() {
        let (s, dev) = seeded(Config::default()).await;
        let body = encode_request(hello(2, None, Mode::Full), &batch(5, &dev));
        let (mut tx, chan, head, tail) = split_body(&body, body.len() / 2);
        let addr = s.addr;
        let slow = s.post_sync_body(Some(&dev.token), chan);
        let stopper = async {
            tx.send_data(head).await.unwrap();
            s.wait_in_flight(1).await;
            // Ask the server to stop while the sync is half-received, then finish the body.
            s.begin_stop();
            let mut refused = false;
            for _ in 0..500 {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    refused = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(refused, "the server stopped accepting");
            tx.send_data(tail).await.unwrap();
            drop(tx);
        };
        let (slow, ()) = tokio::join!(slow, stopper);
        assert_eq!(slow.status.as_u16(), 200);
        let r = decode_reply(2, &slow.body).unwrap();
        assert_eq!(r.mappings.len(), 6);
        s.stop().await;
    }
}
