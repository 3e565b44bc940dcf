//! Health and metrics.

use crate::common::*;
use ferrysync_core::wire::Mode;

store_test! {
    #[tokio::test]
    async fn healthz_and_metrics() {
        let s = TestServer::start().await;
        assert_eq!(
            s.get("/healthz").await,
            (hyper::StatusCode::OK, "ok\n".to_string())
        );
        let dev = s.device("north");
        s.sync(
            &dev,
            hello(1, None, Mode::Full),
            &[add(
                COMPANY,
                1,
                None,
                at(dev.id, 0),
                text3(COMPANY, "A", "b", "c"),
            )],
        )
        .await;
        s.post_sync(Some("bad"), Vec::new()).await;
        let (status, m) = s.get("/metrics").await;
        assert_eq!(status, hyper::StatusCode::OK);
        for line in [
            "ferrysync_syncs_total 1",
            "ferrysync_records_applied_total 1",
            "ferrysync_mappings_total 1",
            // The reply does not send back the record the sync wrote.
            "ferrysync_reply_records_total 0",
            "ferrysync_rejections_total{reason=\"parent_missing\"} 0",
            "ferrysync_errors_total{status=\"401\",code=\"unauthorized\"} 1",
            "ferrysync_sync_duration_seconds_count 1",
            "ferrysync_syncs_in_flight 0",
            "# TYPE ferrysync_sync_duration_seconds histogram",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        s.stop().await;
    }
}

store_test! {
    /// A client that accepts gzip (a phone on a cellular link) gets the same reply gzipped;
    /// others, or one that refuses gzip with `q=0`, get it plain.
    #[tokio::test]
    async fn replies_are_gzipped_for_clients_that_accept_it() {
        use std::io::Read;
        let s = TestServer::start().await;
        let a = s.device("north");
        let changes: Vec<Chg> = (1..=300)
            .map(|i| {
                let name = format!("Company {i}");
                let body = text3(COMPANY, &name, "Lyon", "+33 4 72 00 00 00");
                add(COMPANY, i, None, at(a.id, 0), body)
            })
            .collect();
        s.sync(&a, hello(1, None, Mode::Full), &changes).await;
        let auth = format!("Bearer {}", a.token);
        let post = |encoding: Option<&'static str>| {
            let auth = auth.clone();
            let req = encode_request(hello(2, None, Mode::Full), &[]);
            let s = &s;
            async move {
                let mut h = vec![
                    ("content-type", ferrysync_server::CONTENT_TYPE_V1),
                    ("authorization", auth.as_str()),
                ];
                h.extend(encoding.map(|e| ("accept-encoding", e)));
                let r = s.request("POST", "/v1/sync", &h, full(req)).await.unwrap();
                s.wait_idle().await;
                r
            }
        };
        let (status, headers, plain) = post(None).await;
        assert_eq!(status, hyper::StatusCode::OK);
        assert!(headers.get("content-encoding").is_none());
        // `br` refused: gzip (with `br` accepted the reply would be brotli).
        let (_, headers, zipped) = post(Some("br;q=0, gzip")).await;
        assert_eq!(headers.get("content-encoding").unwrap(), "gzip");
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut inflated)
            .unwrap();
        let (p, g) = (
            decode_reply(2, &plain).unwrap(),
            decode_reply(2, &inflated).unwrap(),
        );
        assert_eq!(p.upserts.len(), 300);
        assert_eq!(p.upserts, g.upserts);
        assert!(
            zipped.len() * 2 < plain.len(),
            "gzip {} of {} bytes",
            zipped.len(),
            plain.len()
        );
        let (_, headers, _) = post(Some("gzip;q=0")).await;
        assert!(headers.get("content-encoding").is_none());
        s.stop().await;
    }
}
