//! Execution forwarded to the cluster an instance name routes to; operations stream through as
//! the cluster sends them.
//!
//! Operation names are rewritten to `<prefix>/operations/<cluster's name>`: WaitExecution carries
//! no instance name, so the name itself must say which cluster to ask. `operations` is a reserved
//! instance-name segment, so no prefix can contain it and the split is unambiguous.
//!
//! With a scrubbing configuration, Execute first looks stamped actions up under their scrubbed
//! key (see [`crate::scrubbing`]).

use crate::activity::{request_metadata, Recorder};
use crate::request;
use crate::routes::Clusters;
use crate::scrubbing::{cached_operation, Scrubbing};
use clientd_activity::Outcome;
use clientd_digest::{truncate, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::longrunning::{operation, Operation};
use futures::stream::{BoxStream, StreamExt};
use prost::Message;
use re::execution_server::Execution;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status, Streaming};

const OPERATIONS: &str = "/operations/";

pub struct ExecutionService {
    clusters: Arc<Clusters>,
    scrubbing: Option<Arc<Scrubbing>>,
    recorder: Recorder,
}

impl ExecutionService {
    pub fn new(
        clusters: Arc<Clusters>,
        scrubbing: Option<Arc<Scrubbing>>,
        recorder: Recorder,
    ) -> Self {
        ExecutionService {
            clusters,
            scrubbing,
            recorder,
        }
    }
}

/// The ExecuteResponse of a finished operation.
pub(crate) fn execute_response(operation: &Operation) -> Option<re::ExecuteResponse> {
    let Some(operation::Result::Response(response)) = &operation.result else {
        return None;
    };
    if !operation.done || !response.type_url.ends_with(".ExecuteResponse") {
        return None;
    }
    re::ExecuteResponse::decode(response.value.as_slice()).ok()
}

/// Whether an ExecuteResponse reports a successful action: an OK status, a result, exit code 0.
pub(crate) fn succeeded(response: &re::ExecuteResponse) -> bool {
    response.status.as_ref().is_none_or(|s| s.code == 0)
        && response.result.as_ref().is_some_and(|r| r.exit_code == 0)
}

/// What a finished operation says happened to its action.
fn outcome(operation: &Operation) -> (Outcome, Option<re::ActionResult>) {
    match execute_response(operation) {
        Some(r) if r.cached_result => (Outcome::ExecuteCacheHit, r.result),
        Some(r) if succeeded(&r) => (Outcome::ExecutedRemotely, r.result),
        Some(r) => (Outcome::Failed, r.result),
        None => (Outcome::Failed, None),
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
        let started = Instant::now();
        let (metadata, _, mut request) = request.into_parts();
        let metadata = request_metadata(&metadata);
        let full_name = request.instance_name.clone();
        let instance_name = &request::instance_name(&full_name)?;
        let (prefix, cluster, rest) = self
            .clusters
            .route_with_prefix(instance_name)
            .map_err(request::status)?;
        let Some(cluster) = cluster else {
            return Err(Status::unimplemented(format!(
                "instance name {:?} is a local cache and cannot execute actions; \
                 use an instance name that routes to a cluster",
                truncate(instance_name.as_str())
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
        // A malformed action digest is the cluster's to refuse; it is never scrubbed.
        let action = request::digest_function(request.digest_function)
            .and_then(|f| request::digest(f, request.action_digest.as_ref(), "action_digest"))
            .ok();
        let scrubbed = match (&self.scrubbing, action) {
            (Some(scrubbing), Some(action)) => scrubbing
                .key(instance_name, &action, &metadata)
                .await
                .map(|scrubbed| (scrubbing.clone(), action, scrubbed)),
            _ => None,
        };
        if let Some((scrubbing, action, scrubbed)) = &scrubbed {
            if !request.skip_cache_lookup {
                if let Some(result) = scrubbing.lookup(instance_name, scrubbed).await {
                    self.recorder.record(
                        &metadata,
                        instance_name,
                        action,
                        Outcome::ExecuteCacheHit,
                        started,
                        Some(&result),
                    );
                    let key = &scrubbed.key;
                    let name = format!("{prefix}{OPERATIONS}scrubbed/{}", key.digest.hash_hex());
                    let operation = cached_operation(name, action, key, result);
                    return Ok(Response::new(
                        futures::stream::iter([Ok(operation)]).boxed(),
                    ));
                }
            }
        }
        let operations = renamed(prefix, cluster.execute(request).await?);
        let operations = match scrubbed {
            Some((scrubbing, _, scrubbed)) => scrubbing.storing(
                operations,
                instance_name.clone(),
                scrubbed,
                cluster.clone(),
                rest,
            ),
            None => operations,
        };
        let Some(action) = action else {
            return Ok(Response::new(operations));
        };
        // The final operation tells the record what happened.
        let recorder = self.recorder.clone();
        let instance_name = instance_name.clone();
        Ok(Response::new(
            operations
                .inspect(move |operation| {
                    if let Some(operation) = operation.as_ref().ok().filter(|o| o.done) {
                        let (outcome, result) = outcome(operation);
                        recorder.record(
                            &metadata,
                            &instance_name,
                            &action,
                            outcome,
                            started,
                            result.as_ref(),
                        );
                    }
                })
                .boxed(),
        ))
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
        let prefix = InstanceName::new(prefix).map_err(|_| not_ours())?;
        let cluster = self
            .clusters
            .get(&prefix)
            .cloned()
            .flatten()
            .ok_or_else(not_ours)?;
        let prefix = prefix.to_string();
        request.name = name.to_string();
        let operations = cluster.wait_execution(request).await?;
        Ok(Response::new(renamed(prefix, operations)))
    }
}
