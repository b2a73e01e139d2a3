//! `/invocation?id=ID[&outcome=O]`: one invocation's actions (filtered by outcome), with charts of
//! the outcomes and of the hit rate as the build went on; `/action?invocation=ID&action=KEY`: one
//! action's command, environment, inputs, outputs, exit code and logs, with links that open blobs
//! through this listener, the `cas/` paths to use in a shell, and why it missed the cache;
//! `/blob?instance=I&digest=FUNCTION/HASH/SIZE`: a blob's bytes.

use crate::error::PageError;
use crate::page::{bar, encode, escape, frame};
use crate::Web;
use clientd_activity::{
    explain_action, flatten, load, parse_action, parse_instance, ExplainError, Invocation, Outcome,
};
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use std::collections::HashMap;
use std::fmt::Write;

/// The largest blob `/blob` serves.
const MAX_BLOB_BYTES: u64 = 16 << 20;

const OUTCOMES: [(Outcome, &str, &str); 7] = [
    (Outcome::LocalHit, "local_hit", "#282"),
    (Outcome::ClusterHit, "cluster_hit", "#4a4"),
    (Outcome::ExecuteCacheHit, "execute_cache_hit", "#7c7"),
    (Outcome::ExecutedRemotely, "executed_remotely", "#c80"),
    (Outcome::Uploaded, "uploaded", "#a60"),
    (Outcome::Miss, "miss", "#a22"),
    (Outcome::Failed, "failed", "#600"),
];

fn outcome_name(outcome: Outcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _, _)| *o == outcome)
        .map_or("?", |(_, n, _)| n)
}

/// A link to a blob through this listener.
fn blob_link(instance: &InstanceName, digest: &Digest, text: &str) -> String {
    format!(
        "<a href=\"/blob?instance={}&amp;digest={}/{}/{}\">{}</a>",
        encode(instance.as_str()),
        digest.function().name(),
        digest.hash_hex(),
        digest.size(),
        escape(text)
    )
}

/// One stacked bar of the outcomes, and the running hit rate over the actions in the order
/// they were first seen, as SVG.
fn charts(invocation: &Invocation) -> String {
    let n = invocation.actions.len().max(1);
    let mut out = String::from("<svg width=\"600\" height=\"24\" role=\"img\">");
    let mut x = 0;
    let mut legend = String::new();
    for (outcome, name, color) in OUTCOMES {
        let count = invocation
            .actions
            .iter()
            .filter(|a| a.outcome == outcome)
            .count();
        if count == 0 {
            continue;
        }
        let width = count * 600 / n;
        let _ = write!(
            out,
            "<rect x=\"{x}\" width=\"{width}\" height=\"24\" fill=\"{color}\"><title>{name}: {count}</title></rect>"
        );
        let _ = write!(
            legend,
            "<span style=\"color:{color}\">&#9632;</span> {name} {count} &nbsp; "
        );
        x += width;
    }
    out.push_str("</svg><br>");
    out.push_str(&legend);
    // The running hit rate: a polyline from the first action to the last.
    let mut hits = 0;
    let points: Vec<String> = invocation
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            hits += usize::from(a.outcome.is_hit());
            format!("{},{}", i * 600 / n, 100 - hits * 100 / (i + 1))
        })
        .collect();
    let _ = write!(
        out,
        "<p>Hit rate as the build went on (0-100%):</p><svg width=\"600\" height=\"100\" \
         role=\"img\" style=\"background:#f6f6f6\"><polyline fill=\"none\" stroke=\"#4a4\" \
         stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    );
    out
}

pub fn invocation(web: &Web, query: &HashMap<String, String>) -> Result<String, PageError> {
    let log = web
        .activity
        .as_ref()
        .ok_or_else(|| PageError::not_found("no activity record"))?;
    let id = query
        .get("id")
        .ok_or_else(|| PageError::bad_request("which invocation? /invocation?id=..."))?;
    let invocations = log.invocations();
    let invocation = invocations
        .iter()
        .find(|i| &i.id == id)
        .ok_or_else(|| ExplainError::NoInvocation(id.clone()))?;
    let filter = query.get("outcome").filter(|o| !o.is_empty());
    let (n, hits) = (invocation.actions.len(), invocation.hits());
    let traffic = invocation.traffic;
    let mut out = format!(
        "<p>{n} actions, {hits} cache hits {} {}%</p>\
         <p>Bytes read: {} ({} from the local cache, {} fetched from clusters)</p>{}",
        bar(hits, n),
        (hits * 100).checked_div(n).unwrap_or(0),
        traffic.served,
        traffic.local(),
        traffic.fetched,
        charts(invocation)
    );
    let link = |outcome: &str, text: &str| {
        format!(
            "<a href=\"/invocation?id={}&amp;outcome={outcome}\">{text}</a>",
            encode(id)
        )
    };
    out.push_str("<p>Show: ");
    out.push_str(&link("", "all"));
    out.push_str(", ");
    out.push_str(&link("hit", "hits"));
    out.push_str(", ");
    out.push_str(&link("miss", "misses"));
    for (_, name, _) in OUTCOMES {
        let _ = write!(out, ", {}", link(name, name));
    }
    out.push_str(
        "</p><table><tr><th>target</th><th>mnemonic</th><th>outcome</th><th>ms</th>\
                  <th>output bytes</th></tr>",
    );
    for action in &invocation.actions {
        let name = outcome_name(action.outcome);
        let shown = match filter.map(String::as_str) {
            None => true,
            Some("hit") => action.outcome.is_hit(),
            Some("miss") => !action.outcome.is_hit(),
            Some(other) => other == name,
        };
        if !shown {
            continue;
        }
        let class = if action.outcome.is_hit() {
            "hit"
        } else {
            "miss"
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/action?invocation={}&amp;action={}\">{}</a></td><td>{}</td>\
             <td class=\"{class}\">{name}</td><td>{:.1}</td><td>{}</td></tr>",
            encode(id),
            encode(&action.action),
            escape(&action.target),
            escape(&action.mnemonic),
            action.micros as f64 / 1000.0,
            action.output_bytes
        );
    }
    out.push_str("</table>");
    Ok(frame(&format!("Invocation {id}"), &out))
}

pub async fn action(web: &Web, query: &HashMap<String, String>) -> Result<String, PageError> {
    let log = web
        .activity
        .as_ref()
        .ok_or_else(|| PageError::not_found("no activity record"))?;
    let (Some(id), Some(key)) = (query.get("invocation"), query.get("action")) else {
        return Err(PageError::bad_request(
            "which action? /action?invocation=...&action=...",
        ));
    };
    let invocations = log.invocations();
    let record = invocations
        .iter()
        .find(|i| &i.id == id)
        .and_then(|i| i.actions.iter().find(|a| &a.action == key))
        .ok_or_else(|| PageError::not_found(format!("no action {key} in invocation {id:?}")))?;
    let digest = parse_action(record)
        .ok_or_else(|| PageError::not_found("a malformed action digest in the record"))?;
    let instance = &parse_instance(record)
        .ok_or_else(|| PageError::not_found("a malformed instance name in the record"))?;
    let mut out = format!(
        "<table><tr><td>target</td><td>{}</td></tr><tr><td>mnemonic</td><td>{}</td></tr>\
         <tr><td>outcome</td><td>{}</td></tr><tr><td>instance</td><td>{}</td></tr>\
         <tr><td>action</td><td>{}</td></tr>",
        escape(&record.target),
        escape(&record.mnemonic),
        outcome_name(record.outcome),
        escape(instance.as_str()),
        blob_link(instance, &digest, &digest.to_string()),
    );
    let loaded = load(&*web.blobs, record).await;
    let digest_of = |d: Option<&re::Digest>| {
        d.and_then(|d| Digest::from_proto(Some(digest.function()), d).ok())
    };
    let root = loaded
        .as_ref()
        .and_then(|l| digest_of(l.action.input_root_digest.as_ref()));
    let command = loaded
        .as_ref()
        .and_then(|l| digest_of(l.action.command_digest.as_ref()));
    if let (Some(mount), Some(root), Some(command)) = (&web.mount, root, command) {
        let cas = |kind: &str, d: &Digest| {
            format!(
                "{}/cas/{instance}/blobs/{}/{kind}/{}",
                mount.display(),
                d.function().name(),
                d.file_name()
            )
        };
        let _ = write!(
            out,
            "<tr><td>in a shell</td><td><code>cp -lr {} /tmp/x &amp;&amp; cd /tmp/x &amp;&amp; \
             {}</code> runs it (a copy of the inputs in scratch/ works too)</td></tr>",
            escape(&cas("directory", &root)),
            escape(&cas("command", &command))
        );
    }
    out.push_str("</table>");
    let reasons = explain_action(&invocations, id, key, &*web.blobs).await?;
    if !reasons.is_empty() {
        out.push_str("<h2>Why it missed the cache</h2><ul class=\"explanation\">");
        for reason in reasons {
            let _ = write!(out, "<li>{}</li>", escape(&reason));
        }
        out.push_str("</ul>");
    }
    match &loaded {
        None => out.push_str("<p>Its Action or Command is not in the CAS.</p>"),
        Some(loaded) => {
            out.push_str("<h2>Command</h2><pre class=\"command\">");
            for argument in &loaded.command.arguments {
                let _ = writeln!(out, "{}", escape(argument));
            }
            out.push_str("</pre><h2>Environment</h2><table>");
            for v in &loaded.command.environment_variables {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&v.name),
                    escape(&v.value)
                );
            }
            out.push_str("</table>");
            out.push_str("<h2>Inputs</h2>");
            let files = match root {
                Some(root) => flatten(&*web.blobs, instance, &root).await,
                None => None,
            };
            match files {
                None => out.push_str(
                    "<p>The input tree is not in the CAS (a cache-only build uploads none).</p>",
                ),
                Some(files) => {
                    out.push_str("<table>");
                    for (path, (what, file)) in files {
                        let shown = match &file {
                            Some(d) => blob_link(instance, d, &what),
                            None => escape(&what),
                        };
                        let _ = write!(out, "<tr><td>{}</td><td>{shown}</td></tr>", escape(&path));
                    }
                    out.push_str("</table>");
                }
            }
        }
    }
    out.push_str(&outputs(web, instance, &digest).await);
    Ok(frame(
        &format!("{} ({})", record.target, record.mnemonic),
        &out,
    ))
}

/// The action's result, as the instance's action cache has it.
async fn outputs(web: &Web, instance: &InstanceName, digest: &Digest) -> String {
    let result = match web.results.get(instance, digest).await {
        Ok(Some(result)) => result,
        Ok(None) => return "<h2>Outputs</h2><p>No result in the action cache.</p>".into(),
        Err(e) => return format!("<h2>Outputs</h2><p>{}</p>", escape(&e.to_string())),
    };
    let mut out = format!(
        "<h2>Outputs</h2><p>exit code {}</p><table>",
        result.exit_code
    );
    let function = Some(digest.function());
    for file in &result.output_files {
        let shown = match file
            .digest
            .as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
        {
            Some(d) => blob_link(instance, &d, &d.to_string()),
            None => "?".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{shown}</td></tr>",
            escape(&file.path)
        );
    }
    for (name, log) in [
        ("stdout", &result.stdout_digest),
        ("stderr", &result.stderr_digest),
    ] {
        if let Some(d) = log
            .as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
        {
            let _ = write!(
                out,
                "<tr><td>{name}</td><td>{}</td></tr>",
                blob_link(instance, &d, &d.to_string())
            );
        }
    }
    out.push_str("</table>");
    out
}

/// `/blob`: the bytes (text/plain when they are UTF-8), or why not.
pub async fn blob(
    web: &Web,
    query: &HashMap<String, String>,
) -> Result<(String, Vec<u8>), PageError> {
    let (Some(instance), Some(digest)) = (query.get("instance"), query.get("digest")) else {
        return Err(PageError::bad_request(
            "which blob? /blob?instance=...&digest=FUNCTION/HASH/SIZE",
        ));
    };
    let bad = PageError::BadRequest;
    let (function, rest) = digest
        .split_once('/')
        .ok_or_else(|| bad("digest: FUNCTION/HASH/SIZE".into()))?;
    let function =
        DigestFunction::from_name(function).ok_or_else(|| bad("unknown digest function".into()))?;
    let digest = Digest::parse_joined(Some(function), rest, '/').map_err(|e| bad(e.to_string()))?;
    let instance = InstanceName::new(instance).map_err(|e| bad(e.to_string()))?;
    if digest.size() > MAX_BLOB_BYTES {
        return Err(bad(format!(
            "{digest} is larger than {MAX_BLOB_BYTES} bytes: read it in cas/"
        )));
    }
    let bytes = web.blobs.read_bytes(&instance, &digest).await?.to_vec();
    let content_type = match std::str::from_utf8(&bytes) {
        Ok(_) => "text/plain; charset=utf-8",
        Err(_) => "application/octet-stream",
    };
    Ok((content_type.into(), bytes))
}
