//! How long calls take, per method: histograms for `/metrics`. A cluster's answers
//! (`clientd_upstream_request_duration_seconds`) are observed by [`crate::Cluster::call`], the
//! daemon's own on its gRPC front (`clientd_request_duration_seconds`) by clientd_grpc's
//! `TimingLayer`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus' `le`), for calls from 100 µs (a local
/// cache hit) to 10 s.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One method's calls: cumulative counts per bucket (as Prometheus wants them), the sum and the
/// count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `buckets[i]`: calls that took at most `BUCKETS[i]`.
    pub buckets: [u64; BUCKETS.len()],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&mut self.buckets) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

/// The most method names kept apart; calls of any further ones are counted under [`OTHER`].
/// Names come from requests (the front times whatever path a client sends), so they are bounded
/// here, not by trusting clients: the services have about 30 methods in all.
pub const MAX_METHODS: usize = 64;

/// Where calls of methods beyond [`MAX_METHODS`] are counted.
pub const OTHER: &str = "other";

/// Histograms by method name.
#[derive(Debug, Default)]
pub struct Latency(Mutex<BTreeMap<String, Histogram>>);

impl Latency {
    pub fn observe(&self, method: &str, elapsed: Duration) {
        let mut methods = self.0.lock().unwrap();
        if let Some(histogram) = methods.get_mut(method) {
            return histogram.observe(elapsed);
        }
        // One place is left for OTHER.
        let name = match methods.len() < MAX_METHODS - 1 {
            true => method,
            false => OTHER,
        };
        methods
            .entry(name.to_string())
            .or_default()
            .observe(elapsed);
    }

    /// Every method's histogram so far.
    pub fn snapshot(&self) -> Vec<(String, Histogram)> {
        let methods = self.0.lock().unwrap();
        methods
            .iter()
            .map(|(m, h)| (m.clone(), h.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let latency = Latency::default();
        latency.observe("GetActionResult", Duration::from_micros(800));
        latency.observe("GetActionResult", Duration::from_millis(30));
        latency.observe("GetActionResult", Duration::from_secs(20));
        let snapshot = latency.snapshot();
        let (method, h) = &snapshot[0];
        assert_eq!(method, "GetActionResult");
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[2], 0); // <= 500 µs
        assert_eq!(h.buckets[3], 1); // <= 1 ms
        assert_eq!(h.buckets[8], 2); // <= 50 ms
        assert_eq!(h.buckets[15], 2); // <= 10 s: the 20 s call is only in +Inf (count)
        assert!((h.sum_seconds - 20.0308).abs() < 1e-6);
    }

    #[test]
    fn method_names_are_bounded() {
        let latency = Latency::default();
        for i in 0..MAX_METHODS + 10 {
            latency.observe(&format!("Method{i}"), Duration::from_millis(1));
        }
        latency.observe("Method0", Duration::from_millis(1));
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.len(), MAX_METHODS);
        let count = |name: &str| {
            snapshot
                .iter()
                .find(|(m, _)| m == name)
                .map(|(_, h)| h.count)
        };
        assert_eq!(count("Method0"), Some(2));
        // The first MAX_METHODS - 1 names, then everything else together.
        assert_eq!(count(OTHER), Some(11));
    }
}
