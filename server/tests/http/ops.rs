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
