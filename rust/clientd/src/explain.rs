//! `clientd explain [INVOCATION]`: why the actions of a build missed the cache, grouped by cause,
//! as the running daemon works it out from its activity record and the CAS.

use crate::config::Config;
use crate::daemon;

/// Actions named per cause before the rest are counted.
const EXAMPLES: usize = 3;

pub fn print(config: &Config, invocation: Option<&str>, list: bool) -> Result<(), String> {
    let response = crate::runtime()?.block_on(daemon::explain(config, invocation.unwrap_or("")))?;
    if list {
        println!("invocations (oldest first): id, started (unix seconds), actions, hits");
        for line in &response.invocations {
            println!("  {line}");
        }
        return Ok(());
    }
    println!(
        "invocation {}: {} actions, {} cache hits, {} misses",
        response.invocation_id, response.actions, response.hits, response.misses
    );
    println!(
        "bytes read: {} ({} from the local cache, {} fetched from clusters)",
        response.bytes_served,
        response.bytes_served.saturating_sub(response.bytes_fetched),
        response.bytes_fetched
    );
    for cause in &response.causes {
        let n = cause.actions.len();
        let actions = if n == 1 { "action" } else { "actions" };
        println!("\n{n} {actions} missed because:");
        for reason in &cause.reasons {
            println!("  - {reason}");
        }
        let mut shown: Vec<&str> = cause
            .actions
            .iter()
            .take(EXAMPLES)
            .map(String::as_str)
            .collect();
        let more;
        if n > EXAMPLES {
            more = format!("and {} more", n - EXAMPLES);
            shown.push(&more);
        }
        println!("  ({})", shown.join(", "));
    }
    Ok(())
}
