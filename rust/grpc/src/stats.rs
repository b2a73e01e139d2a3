//! clientd's Stats service: the counters behind `clientd stats`, and where the daemon listens
//! and mounts, for `clientd bazelrc`.

use crate::routes::Clusters;
use clientd_activity::{explain, ActivityLog};
use clientd_proto::clientd::v1 as pb;
use clientd_store::{BlobStore, Stats};
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
    insight: Option<Insight>,
}

/// What explanations are made of: the activity record, and every instance's CAS.
pub struct Insight {
    pub log: Arc<ActivityLog>,
    pub blobs: Arc<dyn BlobStore>,
}

impl StatsService {
    pub fn new(
        stats: Arc<Stats>,
        clusters: Arc<Clusters>,
        info: ServerInfo,
        insight: Option<Insight>,
    ) -> Self {
        StatsService {
            stats,
            clusters,
            info,
            insight,
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

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let Some(insight) = &self.insight else {
            return Err(Status::failed_precondition(
                "the daemon keeps no activity record (activity.max_invocations is 0)",
            ));
        };
        let id = request.into_inner().invocation_id;
        let invocations = insight.log.invocations();
        let wanted = (!id.is_empty()).then_some(id.as_str());
        let explanation = explain(&invocations, wanted, &*insight.blobs)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::ExplainResponse {
            invocation_id: explanation.invocation,
            actions: explanation.actions as u64,
            hits: explanation.hits as u64,
            misses: explanation.misses as u64,
            causes: explanation
                .causes
                .into_iter()
                .map(|c| pb::explain_response::Cause {
                    reasons: c.reasons,
                    actions: c.actions,
                })
                .collect(),
            invocations: invocations
                .iter()
                .map(|i| format!("{} {} {} {}", i.id, i.started(), i.actions.len(), i.hits()))
                .collect(),
            bytes_served: explanation.traffic.served,
            bytes_fetched: explanation.traffic.fetched,
        }))
    }
}
