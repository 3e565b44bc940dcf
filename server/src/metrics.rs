//! Prometheus counters, written by hand in the text exposition format.

use ferrysync_core::wire::RejectReason;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the sync latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const REASONS: [RejectReason; 7] = [
    RejectReason::UnknownTable,
    RejectReason::InvalidBody,
    RejectReason::OutOfScope,
    RejectReason::ParentMissing,
    RejectReason::Deleted,
    RejectReason::UnknownRecord,
    RejectReason::BadKey,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    syncs: AtomicU64,
    applied: AtomicU64,
    mappings: AtomicU64,
    reply_records: AtomicU64,
    in_flight: AtomicI64,
    rejections: [AtomicU64; 7],
    errors: Mutex<BTreeMap<(u16, &'static str), u64>>,
    buckets: [AtomicU64; 12],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn reason_index(r: RejectReason) -> usize {
    REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

impl Metrics {
    /// Counts a committed sync.
    pub fn sync_committed(&self, applied: u64, mappings: usize, rejected: &[RejectReason]) {
        self.syncs.fetch_add(1, Relaxed);
        self.applied.fetch_add(applied, Relaxed);
        self.mappings.fetch_add(mappings as u64, Relaxed);
        for r in rejected {
            self.rejections[reason_index(*r)].fetch_add(1, Relaxed);
        }
    }

    /// Counts records sent in replies.
    pub fn reply_records(&self, n: u64) {
        self.reply_records.fetch_add(n, Relaxed);
    }

    /// Counts an error answer.
    pub fn error(&self, status: u16, code: &'static str) {
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((status, code)).or_insert(0) += 1;
    }

    /// A sync started (`+1`) or ended (`-1`).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }

    /// Syncs running now.
    pub fn syncs_in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// Records the duration of a whole sync (request to last reply byte).
    pub fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "ferrysync_syncs_total",
            "Syncs committed.",
            self.syncs.load(Relaxed),
        );
        counter(
            "ferrysync_records_applied_total",
            "Changes written (adds, winning updates, deletes).",
            self.applied.load(Relaxed),
        );
        counter(
            "ferrysync_mappings_total",
            "Local to server id mappings sent.",
            self.mappings.load(Relaxed),
        );
        counter(
            "ferrysync_reply_records_total",
            "Upsert and Remove frames sent.",
            self.reply_records.load(Relaxed),
        );
        // Writing to a String cannot fail: the results below are ignored.
        let _ = writeln!(
            s,
            "# HELP ferrysync_syncs_in_flight Syncs running now.\n# TYPE ferrysync_syncs_in_flight gauge\nferrysync_syncs_in_flight {}",
            self.in_flight.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP ferrysync_rejections_total Changes refused, by reason.\n# TYPE ferrysync_rejections_total counter"
        );
        for (i, r) in REASONS.iter().enumerate() {
            let _ = writeln!(
                s,
                "ferrysync_rejections_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rejections[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP ferrysync_errors_total Requests answered with an error, by status and code.\n# TYPE ferrysync_errors_total counter"
        );
        {
            let m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            for ((status, code), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "ferrysync_errors_total{{status=\"{status}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP ferrysync_sync_duration_seconds Duration of whole syncs.\n# TYPE ferrysync_sync_duration_seconds histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "ferrysync_sync_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "ferrysync_sync_duration_seconds_bucket{{le=\"+Inf\"}} {count}\nferrysync_sync_duration_seconds_sum {}\nferrysync_sync_duration_seconds_count {count}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.sync_committed(3, 2, &[RejectReason::Deleted, RejectReason::Deleted]);
        m.error(401, "bad_token");
        m.observe_latency(Duration::from_millis(20));
        let t = m.render();
        assert!(t.contains("ferrysync_syncs_total 1\n"));
        assert!(t.contains("ferrysync_records_applied_total 3\n"));
        assert!(t.contains("ferrysync_rejections_total{reason=\"deleted\"} 2\n"));
        assert!(t.contains("ferrysync_errors_total{status=\"401\",code=\"bad_token\"} 1\n"));
        assert!(t.contains("ferrysync_sync_duration_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(t.contains("ferrysync_sync_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(t.contains("ferrysync_sync_duration_seconds_count 1\n"));
    }
}
