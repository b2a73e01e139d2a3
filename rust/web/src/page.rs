//! What every page shares (the frame, escaping, links, query strings, bars) and `/`: the recent
//! invocations with their hit rates, the clusters and the counters. Rendered on the server: no
//! scripts, no build step.

use crate::Web;
use std::collections::HashMap;
use std::fmt::Write;

/// Text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A query-string value.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// The query string's `key=value` pairs, percent-decoded.
pub fn query(text: Option<&str>) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// A horizontal bar of `part` out of `whole`, as inline SVG.
pub fn bar(part: usize, whole: usize) -> String {
    let width = (part * 200).checked_div(whole).unwrap_or(0);
    format!(
        "<svg width=\"200\" height=\"12\" role=\"img\"><rect width=\"200\" height=\"12\" \
         fill=\"#eee\"/><rect width=\"{width}\" height=\"12\" fill=\"#4a4\"/></svg>"
    )
}

/// The page around `body`.
pub fn frame(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} - clientd</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse}}\
         td,th{{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}}\
         code,pre{{background:#f6f6f6}}pre{{padding:6px;white-space:pre-wrap;word-break:break-all}}\
         .hit{{color:#282}}.miss{{color:#a22}}</style></head><body>\
         <p><a href=\"/\">clientd</a></p><h1>{}</h1>{body}</body></html>\n",
        escape(title),
        escape(title)
    )
}

/// Bytes since the daemon started, by where they came from and went, as horizontal bars.
fn bytes_by_source(web: &Web) -> String {
    let counters: HashMap<&str, u64> = web.stats.snapshot().into_iter().collect();
    let rows = [
        ("served to clients", counters["bytes_served"], "#4a4"),
        (
            "fetched from clusters",
            counters["upstream_fetch_bytes"],
            "#c80",
        ),
        ("stored from clients", counters["bytes_stored"], "#48c"),
        (
            "uploaded to clusters",
            counters["upstream_write_bytes"],
            "#a60",
        ),
    ];
    let most = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let mut out = String::from("<h2>Bytes by source</h2><table class=\"bytes\">");
    for (what, bytes, color) in rows {
        let width = bytes * 300 / most;
        let _ = write!(
            out,
            "<tr><td>{what}</td><td><svg width=\"300\" height=\"12\" role=\"img\">\
             <rect width=\"{width}\" height=\"12\" fill=\"{color}\"/></svg></td><td>{bytes}</td></tr>"
        );
    }
    out.push_str("</table>");
    out
}

pub fn index(web: &Web) -> String {
    let mut out = String::from("<h2>Recent invocations</h2>");
    match &web.activity {
        None => out.push_str("<p>No activity record (activity.max_invocations is 0).</p>"),
        Some(log) => {
            out.push_str(
                "<table><tr><th>invocation</th><th>actions</th><th>cache hits</th>\
                 <th>hit rate</th><th>output bytes</th><th>bytes read</th>\
                 <th>from the local cache</th><th>fetched from clusters</th></tr>",
            );
            for invocation in log.invocations().iter().rev() {
                let (n, hits) = (invocation.actions.len(), invocation.hits());
                let bytes: u64 = invocation.actions.iter().map(|a| a.output_bytes).sum();
                let traffic = invocation.traffic;
                let _ = write!(
                    out,
                    "<tr><td class=\"invocation\"><a href=\"/invocation?id={}\">{}</a></td>\
                     <td>{n}</td><td>{hits}</td><td>{} {}%</td><td>{bytes}</td>\
                     <td class=\"served\">{}</td><td class=\"local\">{}</td>\
                     <td class=\"fetched\">{}</td></tr>",
                    encode(&invocation.id),
                    escape(&invocation.id),
                    bar(hits, n),
                    (hits * 100).checked_div(n).unwrap_or(0),
                    traffic.served,
                    traffic.local(),
                    traffic.fetched,
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
    out.push_str("</table>");
    out.push_str(&bytes_by_source(web));
    out.push_str("<h2>Counters</h2><table>");
    for (name, value) in web.stats.snapshot() {
        let _ = write!(out, "<tr><td>{name}</td><td>{value}</td></tr>");
    }
    out.push_str("</table><p><a href=\"/metrics\">/metrics</a> (Prometheus)</p>");
    frame("clientd", &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_encoding_queries_and_bars() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
        assert_eq!(encode("sha256/ab/1 &x"), "sha256/ab/1%20%26x");
        let q = query(Some("id=a%20b&outcome=miss&flag&bad=%zz&end=%4"));
        assert_eq!(q["id"], "a b");
        assert_eq!(q["outcome"], "miss");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
        assert!(query(None).is_empty());
        assert!(bar(1, 2).contains("width=\"100\""));
        assert!(bar(0, 0).contains("width=\"0\""));
    }
}
