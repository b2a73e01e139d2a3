//! `/metrics` in the Prometheus text format (version 0.0.4): every counter of [`Stats`] (with its
//! doc comment as HELP), whether each cluster is up, and each cluster's call latencies per
//! method as histograms.

use clientd_store::Stats;
use clientd_upstream::{Cluster, BUCKETS};
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

pub fn render(stats: &Stats, clusters: &[std::sync::Arc<Cluster>]) -> String {
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
        for (method, histogram) in cluster.latency().snapshot() {
            let labels = format!("cluster=\"{prefix}\",method=\"{}\"", label(&method));
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let count = histogram.count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum_seconds);
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
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
        let text = render(&stats, &[]);
        assert!(text.contains(
            "# TYPE clientd_served_bytes_total counter\nclientd_served_bytes_total 42\n"
        ));
        assert!(text.contains("# HELP clientd_action_cache_hits_total GetActionResult calls"));
        assert!(text.contains("# TYPE clientd_upstream_request_duration_seconds histogram\n"));
    }
}
