//! `clientd stats`: the running daemon's counters.

use crate::config::Config;
use crate::daemon;

pub async fn print(config: &Config) -> Result<(), String> {
    let response = daemon::stats(config).await?;
    for counter in response.counters {
        println!("{} {}", counter.name, counter.value);
    }
    for cluster in response.clusters {
        let credentials = if cluster.has_credentials {
            "credentials remembered"
        } else {
            "no credentials seen"
        };
        println!(
            "cluster {} {} {} ({credentials})",
            cluster.prefix, cluster.endpoint, cluster.state
        );
    }
    Ok(())
}
