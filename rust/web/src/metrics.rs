//! `/metrics` in the Prometheus text format (version 0.0.4): every counter of [`Stats`] (with its
//! doc comment as HELP), whether each cluster is up, each cluster's call latencies per method as
//! histograms, and the daemon's own time per method on its gRPC front and its HTTP cache.

use clientd_store::Stats;
use clientd_upstream::{Cluster, Histogram, Latency, BUCKETS};
use std::fmt::Write;

/// A counter's Prometheus name: `clientd_` + the name, units last (`bytes_served` ->
/// `clientd_served_bytes_total`).
fn counter_name(name: &str) -> String {
    match name.strip_prefix("bytes_") {
        Some(rest) => format!("clientd_{rest}_bytes_total"),
        None => format!("clientd_{name}_total"),
    }
}

/// A label value, escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: one line, backslashes and newlines escaped.
fn help(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.replace('\\', "\\\\")
}

/// One histogram's `_bucket`, `_sum` and `_count` lines; `labels` without braces.
fn histogram(out: &mut String, name: &str, labels: &str, histogram: &Histogram) {
    for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
    }
    let count = histogram.count;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

pub fn render(stats: &Stats, clusters: &[std::sync::Arc<Cluster>], front: &Latency) -> String {
    let mut out = String::new();
    for (name, doc, value) in stats.described() {
        let name = counter_name(name);
        let _ = writeln!(out, "# HELP {name} {}", help(doc));
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP clientd_cluster_up Whether the cluster answers (0 while it is marked down)."
    );
    let _ = writeln!(out, "# TYPE clientd_cluster_up gauge");
    for cluster in clusters {
        let up = u8::from(cluster.is_up());
        let _ = writeln!(
            out,
            "clientd_cluster_up{{cluster=\"{}\"}} {up}",
            label(cluster.prefix())
        );
    }
    let name = "clientd_upstream_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time a cluster took to answer a call, retries included, by method."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for cluster in clusters {
        let prefix = label(cluster.prefix());
        for (method, observed) in cluster.latency().snapshot() {
            let labels = format!("cluster=\"{prefix}\",method=\"{}\"", label(&method));
            histogram(&mut out, name, &labels, &observed);
        }
    }
    let name = "clientd_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time the daemon took to answer a call on its gRPC front, by method, or a \
         request to its HTTP cache (GET /ac, PUT /cas, ...), until the response starts (a Read: \
         its first bytes ready; a Write: the whole upload). What a client measures beyond this \
         is the client's and the wire's."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (method, observed) in front.snapshot() {
        let labels = format!("method=\"{}\"", label(&method));
        histogram(&mut out, name, &labels, &observed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_help_and_escaping() {
        assert_eq!(counter_name("bytes_served"), "clientd_served_bytes_total");
        assert_eq!(counter_name("local_hits"), "clientd_local_hits_total");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(help(" two\n lines \\ "), "two lines \\\\");
        let stats = Stats::default();
        Stats::add(&stats.bytes_served, 42);
        let front = Latency::default();
        front.observe("GetActionResult", std::time::Duration::from_micros(60));
        let text = render(&stats, &[], &front);
        assert!(text.contains(
            "# TYPE clientd_served_bytes_total counter\nclientd_served_bytes_total 42\n"
        ));
        assert!(text.contains("# HELP clientd_action_cache_hits_total GetActionResult calls"));
        assert!(text.contains("# TYPE clientd_upstream_request_duration_seconds histogram\n"));
        assert!(text.contains("# TYPE clientd_request_duration_seconds histogram\n"));
        assert!(text.contains(
            "clientd_request_duration_seconds_bucket{method=\"GetActionResult\",le=\"0.0001\"} 1\n"
        ));
        assert!(
            text.contains("clientd_request_duration_seconds_count{method=\"GetActionResult\"} 1\n")
        );
    }
}
