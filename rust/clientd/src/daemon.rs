//! The running daemon, reached over its UNIX socket by the commands that report on it or
//! describe it (`clientd stats`, `clientd bazelrc`).

use crate::config::Config;
use clientd_proto::clientd::v1 as pb;
use clientd_upstream::Endpoint;
use pb::stats_client::StatsClient;
use std::time::Duration;
use tonic::transport::Channel;

/// How long a command waits for the daemon to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

fn client(config: &Config) -> Result<StatsClient<Channel>, String> {
    let channel = Endpoint::Unix(config.unix_socket().to_path_buf())
        .channel(None, TIMEOUT)
        .map_err(|e| e.to_string())?;
    Ok(StatsClient::new(channel))
}

fn unreachable(config: &Config, what: &str, status: tonic::Status) -> String {
    format!(
        "cannot get {what} from the daemon at unix:{} (is it running?): {}",
        config.unix_socket().display(),
        status.message()
    )
}

pub async fn stats(config: &Config) -> Result<pb::GetStatsResponse, String> {
    let mut client = client(config)?;
    match tokio::time::timeout(TIMEOUT, client.get_stats(pb::GetStatsRequest {})).await {
        Ok(response) => Ok(response
            .map_err(|s| unreachable(config, "stats", s))?
            .into_inner()),
        Err(_) => Err(format!("the daemon did not answer within {TIMEOUT:?}")),
    }
}

/// Where the daemon serves and mounts; None when no daemon answers on the configured socket.
pub async fn server_info(config: &Config) -> Option<pb::GetServerInfoResponse> {
    if !config.unix_socket().exists() {
        return None;
    }
    let mut client = client(config).ok()?;
    let call = client.get_server_info(pb::GetServerInfoRequest {});
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(Ok(response)) => Some(response.into_inner()),
        Ok(Err(status)) => {
            eprintln!("clientd: {}", unreachable(config, "its listeners", status));
            None
        }
        Err(_) => {
            eprintln!("clientd: the daemon did not answer within {TIMEOUT:?}");
            None
        }
    }
}

/// Why the actions of an invocation (the most recent when `id` is empty) missed the cache.
pub async fn explain(config: &Config, id: &str) -> Result<pb::ExplainResponse, String> {
    let mut client = client(config)?;
    let request = pb::ExplainRequest {
        invocation_id: id.to_string(),
    };
    // Explaining reads Actions, Commands and input trees: longer than the other calls.
    match tokio::time::timeout(TIMEOUT * 12, client.explain(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
            Err(status.message().to_string())
        }
        Ok(Err(status)) => Err(unreachable(config, "an explanation", status)),
        Err(_) => Err(format!(
            "the daemon did not answer within {:?}",
            TIMEOUT * 12
        )),
    }
}
