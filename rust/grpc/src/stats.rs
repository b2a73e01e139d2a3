//! clientd's Stats service: the counters behind `clientd stats`.

use crate::routes::Clusters;
use clientd_proto::clientd::v1 as pb;
use clientd_store::Stats;
use pb::stats_server;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct StatsService {
    stats: Arc<Stats>,
    clusters: Arc<Clusters>,
}

impl StatsService {
    pub fn new(stats: Arc<Stats>, clusters: Arc<Clusters>) -> Self {
        StatsService { stats, clusters }
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
        let clusters = self
            .clusters
            .targets()
            .filter_map(|(_, cluster)| cluster.as_ref())
            .map(|cluster| pb::get_stats_response::Cluster {
                prefix: cluster.prefix().to_string(),
                endpoint: cluster.endpoint().to_string(),
                has_credentials: cluster.has_credentials(),
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse { counters, clusters }))
    }
}
