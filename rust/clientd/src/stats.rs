//! `clientd stats`: asks the running daemon for its counters over its UNIX socket.

use crate::config::Config;
use clientd_proto::clientd::v1 as pb;
use clientd_upstream::Endpoint;
use std::time::Duration;

pub async fn print(config: &Config) -> Result<(), String> {
    let socket = config.unix_socket();
    let channel = Endpoint::Unix(socket.to_path_buf()).channel(None, Duration::from_secs(5))?;
    let response = pb::stats_client::StatsClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await
        .map_err(|status| {
            format!(
                "cannot get stats from the daemon at unix:{} (is it running?): {}",
                socket.display(),
                status.message()
            )
        })?
        .into_inner();
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
            "cluster {} {} ({credentials})",
            cluster.prefix, cluster.endpoint
        );
    }
    Ok(())
}
