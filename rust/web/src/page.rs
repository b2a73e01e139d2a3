//! `/`: the counters, the clusters and the recent invocations, rendered on the server (no
//! scripts, no build step).

use crate::Web;
use std::fmt::Write;

/// Text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar of `part` out of `whole`, as inline SVG.
fn bar(part: usize, whole: usize) -> String {
    let width = (part * 200).checked_div(whole).unwrap_or(0);
    format!(
        "<svg width=\"200\" height=\"12\" role=\"img\"><rect width=\"200\" height=\"12\" \
         fill=\"#eee\"/><rect width=\"{width}\" height=\"12\" fill=\"#4a4\"/></svg>"
    )
}

pub fn index(web: &Web) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>clientd</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}\
         </style></head><body><h1>clientd</h1>",
    );
    out.push_str("<h2>Recent invocations</h2>");
    match &web.activity {
        None => out.push_str("<p>No activity record (activity.max_invocations is 0).</p>"),
        Some(log) => {
            out.push_str(
                "<table><tr><th>invocation</th><th>actions</th><th>cache hits</th>\
                 <th>hit rate</th><th>output bytes</th></tr>",
            );
            for invocation in log.invocations().iter().rev() {
                let (n, hits) = (invocation.actions.len(), invocation.hits());
                let bytes: u64 = invocation.actions.iter().map(|a| a.output_bytes).sum();
                let _ = write!(
                    out,
                    "<tr><td class=\"invocation\">{}</td><td>{n}</td><td>{hits}</td><td>{} {}%</td>\
                     <td>{bytes}</td></tr>",
                    escape(&invocation.id),
                    bar(hits, n),
                    (hits * 100).checked_div(n).unwrap_or(0),
                );
            }
            out.push_str("</table><p>Why actions missed: <code>clientd explain</code>.</p>");
        }
    }
    out.push_str("<h2>Clusters</h2><table><tr><th>prefix</th><th>endpoint</th><th>state</th></tr>");
    for cluster in &web.clusters {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(cluster.prefix()),
            escape(&cluster.endpoint().to_string()),
            escape(&cluster.state())
        );
    }
    out.push_str("</table><h2>Counters</h2><table>");
    for (name, value) in web.stats.snapshot() {
        let _ = write!(out, "<tr><td>{name}</td><td>{value}</td></tr>");
    }
    out.push_str("</table><p><a href=\"/metrics\">/metrics</a> (Prometheus)</p></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_bars() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
        assert!(bar(1, 2).contains("width=\"100\""));
        assert!(bar(0, 0).contains("width=\"0\""));
    }
}
