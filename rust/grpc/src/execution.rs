//! Execution forwarded to the cluster an instance name routes to; operations stream through as
//! the cluster sends them.
//!
//! Operation names are rewritten to `<prefix>/operations/<cluster's name>`: WaitExecution carries
//! no instance name, so the name itself must say which cluster to ask. `operations` is a reserved
//! instance-name segment, so no prefix can contain it and the split is unambiguous.

use crate::request;
use crate::routes::Clusters;
use clientd_digest::truncate;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::longrunning::Operation;
use futures::stream::{BoxStream, StreamExt};
use re::execution_server::Execution;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

const OPERATIONS: &str = "/operations/";

pub struct ExecutionService {
    clusters: Arc<Clusters>,
}

impl ExecutionService {
    pub fn new(clusters: Arc<Clusters>) -> Self {
        ExecutionService { clusters }
    }
}

/// The cluster's operations with names that route back to it.
fn renamed(
    prefix: String,
    operations: Streaming<Operation>,
) -> BoxStream<'static, Result<Operation, Status>> {
    operations
        .map(move |operation| {
            operation.map(|mut operation| {
                operation.name = format!("{prefix}{OPERATIONS}{}", operation.name);
                operation
            })
        })
        .boxed()
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = BoxStream<'static, Result<Operation, Status>>;

    async fn execute(
        &self,
        request: Request<re::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let mut request = request.into_inner();
        let instance_name = request::instance_name(&request.instance_name)?;
        let (prefix, cluster, rest) = self.clusters.route_with_prefix(instance_name)?;
        let Some(cluster) = cluster else {
            return Err(Status::unimplemented(format!(
                "instance name {:?} is a local cache and cannot execute actions; \
                 use an instance name that routes to a cluster",
                truncate(instance_name)
            )));
        };
        let prefix = prefix.to_string();
        request.instance_name = rest.to_string();
        if let Some(action) = &request.action_digest {
            tracing::debug!(
                "Execute: action {}-{} on {} instance {:?}",
                action.hash,
                action.size_bytes,
                cluster.describe(),
                request.instance_name
            );
        }
        let operations = cluster.execute(request).await?;
        Ok(Response::new(renamed(prefix, operations)))
    }

    type WaitExecutionStream = BoxStream<'static, Result<Operation, Status>>;

    async fn wait_execution(
        &self,
        request: Request<re::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let mut request = request.into_inner();
        let not_ours = || {
            Status::not_found(format!(
                "operation {:?} was not started through this daemon",
                truncate(&request.name)
            ))
        };
        let (prefix, name) = request.name.split_once(OPERATIONS).ok_or_else(not_ours)?;
        let cluster = self
            .clusters
            .get(prefix)
            .cloned()
            .flatten()
            .ok_or_else(not_ours)?;
        let prefix = prefix.to_string();
        request.name = name.to_string();
        let operations = cluster.wait_execution(request).await?;
        Ok(Response::new(renamed(prefix, operations)))
    }
}
