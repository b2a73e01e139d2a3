//! clientd's Stats service: the counters behind `clientd stats`, and where the daemon listens
//! and mounts, for `clientd bazelrc`.

use crate::routes::Clusters;
use clientd_proto::clientd::v1 as pb;
use clientd_store::Stats;
use pb::stats_server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Where the running daemon serves and mounts, as opposed to what a configuration file says:
/// command-line flags add listeners and clusters.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub unix_socket: PathBuf,
    /// Bound addresses (a configured port 0 shows the port chosen).
    pub tcp_listeners: Vec<SocketAddr>,
    /// None when the file system is not mounted.
    pub mount_path: Option<PathBuf>,
    /// The scrubbing configuration Execute applies, if any.
    pub scrubbing_config: Option<PathBuf>,
}

pub struct StatsService {
    stats: Arc<Stats>,
    clusters: Arc<Clusters>,
    info: ServerInfo,
}

impl StatsService {
    pub fn new(stats: Arc<Stats>, clusters: Arc<Clusters>, info: ServerInfo) -> Self {
        StatsService {
            stats,
            clusters,
            info,
        }
    }

    fn clusters(&self) -> Vec<pb::get_stats_response::Cluster> {
        self.clusters
            .targets()
            .filter_map(|(_, cluster)| cluster.as_ref())
            .map(|cluster| pb::get_stats_response::Cluster {
                prefix: cluster.prefix().to_string(),
                endpoint: cluster.endpoint().to_string(),
                has_credentials: cluster.has_credentials(),
                state: cluster.state(),
            })
            .collect()
    }
}

#[tonic::async_trait]
impl stats_server::Stats for StatsService {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let counters = self
            .stats
            .snapshot()
            .into_iter()
            .map(|(name, value)| pb::get_stats_response::Counter {
                name: name.to_string(),
                value,
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse {
            counters,
            clusters: self.clusters(),
        }))
    }

    async fn get_server_info(
        &self,
        _request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let clusters = self
            .clusters()
            .into_iter()
            .map(|cluster| pb::get_stats_response::Cluster {
                has_credentials: false,
                ..cluster
            })
            .collect();
        Ok(Response::new(pb::GetServerInfoResponse {
            unix_socket: path(&self.info.unix_socket),
            tcp_listeners: self
                .info
                .tcp_listeners
                .iter()
                .map(ToString::to_string)
                .collect(),
            mount_path: self.info.mount_path.as_ref().map(path).unwrap_or_default(),
            clusters,
            scrubbing_config: self
                .info
                .scrubbing_config
                .as_ref()
                .map(path)
                .unwrap_or_default(),
        }))
    }
}
