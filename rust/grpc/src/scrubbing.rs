//! Stamped actions that execute remotely and still hit the cache: on Execute, an action a
//! scrubbing rule matches (by the target label and mnemonic Bazel sends in RequestMetadata) is
//! looked up under its scrubbed key ([`clientd_scrub::key`]). A hit is answered at once, with
//! `cached_result`; on a miss the Execute goes to the cluster as it is, and a successful result
//! is stored under the scrubbed key: in clientd's action cache, and in the cluster's where it
//! accepts updates, so that a teammate's clientd gets the hit too.
//!
//! Scrubbing never fails a build: when the key cannot be computed (an input tree not in the CAS,
//! a message that does not decode) the action is forwarded unscrubbed, with a warning.

use crate::execution::{execute_response, succeeded};
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::longrunning::{operation, Operation};
use clientd_proto::google::rpc;
use clientd_proto::prost_types::Any;
use clientd_scrub::{scrub_action, ScrubbedAction, ScrubbingConfig};
use clientd_store::{ActionCache, BlobStore, Stats};
use clientd_upstream::Cluster;
use futures::stream::{BoxStream, StreamExt};
use prost::Message;
use std::sync::Arc;
use tonic::Status;

const TYPE_PREFIX: &str = "type.googleapis.com/build.bazel.remote.execution.v2.";

pub struct Scrubbing {
    config: ScrubbingConfig,
    /// Every instance's CAS, where Bazel uploaded the Action, Command and input tree.
    blobs: Arc<dyn BlobStore>,
    /// clientd's own store of scrubbed results; it serves one only while every output it names
    /// is still in the instance's CAS.
    results: Arc<dyn ActionCache>,
    /// Every instance's action cache: for a cluster's instances, the cluster's.
    action_caches: Arc<dyn ActionCache>,
    stats: Arc<Stats>,
}

/// An Execute's scrubbed key, and the action in words for the logs.
pub(crate) struct Scrubbed {
    pub(crate) key: ScrubbedAction,
    what: String,
}

fn any(name: &str, message: &impl Message) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

/// A successful result in a finished operation: the only kind stored under a scrubbed key.
fn successful_result(operation: &Operation) -> Option<re::ActionResult> {
    let response = execute_response(operation)?;
    match succeeded(&response) {
        true => response.result,
        false => None,
    }
}

impl Scrubbing {
    pub fn new(
        config: ScrubbingConfig,
        blobs: Arc<dyn BlobStore>,
        results: Arc<dyn ActionCache>,
        action_caches: Arc<dyn ActionCache>,
        stats: Arc<Stats>,
    ) -> Self {
        Scrubbing {
            config,
            blobs,
            results,
            action_caches,
            stats,
        }
    }

    /// The scrubbed key of an Execute's action when a rule matches its target and mnemonic (from
    /// the call's RequestMetadata).
    pub(crate) async fn key(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        metadata: &re::RequestMetadata,
    ) -> Option<Scrubbed> {
        let (target, mnemonic) = (&metadata.target_id, &metadata.action_mnemonic);
        let rule = self.config.rule_for(target, mnemonic)?;
        match scrub_action(&*self.blobs, instance_name, action, &rule.transform).await {
            Ok(Some(key)) => {
                let what = format!(
                    "Execute {action} ({mnemonic} {target}, scrubbing rule {}, key {})",
                    rule.number, key.digest
                );
                Some(Scrubbed { key, what })
            }
            Ok(None) => None,
            Err(e) => {
                Stats::add(&self.stats.scrub_failures, 1);
                tracing::warn!(
                    "Execute {action} ({mnemonic} {target}) matches scrubbing rule {} but is \
                     forwarded unscrubbed: {e}",
                    rule.number
                );
                None
            }
        }
    }

    /// A result stored under `key`: clientd's own first, then the instance's action cache.
    pub(crate) async fn lookup(
        &self,
        instance_name: &InstanceName,
        scrubbed: &Scrubbed,
    ) -> Option<re::ActionResult> {
        let key = &scrubbed.key;
        let own = self.results.get(instance_name, &key.digest).await;
        let found = match own {
            Ok(Some(result)) => Some(result),
            _ => match self.action_caches.get(instance_name, &key.digest).await {
                Ok(Some(result)) => {
                    // Remembered, so the next lookup needs no round trip.
                    let _ = self.results.put(instance_name, &key.digest, &result).await;
                    Some(result)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!("looking up scrubbed key {}: {e}", key.digest);
                    None
                }
            },
        };
        let what = &scrubbed.what;
        match found {
            Some(_) => {
                tracing::info!("{what}: scrubbed hit, nothing runs");
                Stats::add(&self.stats.scrubbed_hits, 1);
            }
            None => {
                tracing::info!("{what}: scrubbed miss, executing on the cluster");
                Stats::add(&self.stats.scrubbed_misses, 1);
            }
        }
        found
    }

    /// Stores a successful result under `key`: clientd's own store always, the cluster's action
    /// cache when its Capabilities allow updates. Failures are logged: the client already has
    /// its result.
    async fn store(
        &self,
        instance_name: &InstanceName,
        scrubbed: &Scrubbed,
        result: &re::ActionResult,
        cluster: &Cluster,
        cluster_instance: &InstanceName,
    ) {
        tracing::info!(
            "{}: succeeded; stored under its scrubbed key",
            scrubbed.what
        );
        let key = &scrubbed.key;
        let written = self
            .blobs
            .batch_write(instance_name, key.blobs.clone())
            .await;
        if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
            tracing::warn!("storing the scrubbed action {}: {e}", key.digest);
        }
        if let Err(e) = self.results.put(instance_name, &key.digest, result).await {
            tracing::warn!("storing the result of scrubbed key {}: {e}", key.digest);
            return;
        }
        Stats::add(&self.stats.scrubbed_stored, 1);
        let updates = match cluster.capabilities(cluster_instance).await {
            Ok(c) => c
                .cache_capabilities
                .and_then(|c| c.action_cache_update_capabilities)
                .is_some_and(|u| u.update_enabled),
            Err(_) => false,
        };
        if !updates {
            tracing::debug!(
                "{} does not take action-cache updates: scrubbed key {} is kept locally only",
                cluster.describe(),
                key.digest
            );
            return;
        }
        if let Err(e) = self
            .action_caches
            .put(instance_name, &key.digest, result)
            .await
        {
            tracing::warn!(
                "{}: storing the result of scrubbed key {}: {e}",
                cluster.describe(),
                key.digest
            );
        }
    }

    /// The cluster's operations, with the final result stored under `key` (before it reaches
    /// the client, so that the next build finds it) when it succeeded.
    pub(crate) fn storing(
        self: Arc<Self>,
        operations: BoxStream<'static, Result<Operation, Status>>,
        instance_name: InstanceName,
        scrubbed: Scrubbed,
        cluster: Arc<Cluster>,
        cluster_instance: InstanceName,
    ) -> BoxStream<'static, Result<Operation, Status>> {
        let context = Arc::new((self, instance_name, scrubbed, cluster, cluster_instance));
        operations
            .then(move |operation| {
                let context = context.clone();
                async move {
                    let (scrubbing, instance_name, scrubbed, cluster, cluster_instance) = &*context;
                    if let Some(result) = operation.as_ref().ok().and_then(successful_result) {
                        scrubbing
                            .store(instance_name, scrubbed, &result, cluster, cluster_instance)
                            .await;
                    }
                    operation
                }
            })
            .boxed()
    }
}

/// The finished operation that answers an Execute from a scrubbed hit.
pub(crate) fn cached_operation(
    name: String,
    action: &Digest,
    key: &ScrubbedAction,
    result: re::ActionResult,
) -> Operation {
    let metadata = re::ExecuteOperationMetadata {
        stage: re::execution_stage::Value::Completed as i32,
        action_digest: Some(action.to_proto()),
        digest_function: action.function().to_proto(),
        ..Default::default()
    };
    let response = re::ExecuteResponse {
        result: Some(result),
        cached_result: true,
        status: Some(rpc::Status::default()),
        message: format!("clientd: a cache hit under the scrubbed key {}", key.digest),
        ..Default::default()
    };
    Operation {
        name,
        metadata: Some(any("ExecuteOperationMetadata", &metadata)),
        done: true,
        result: Some(operation::Result::Response(any(
            "ExecuteResponse",
            &response,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(status: i32, exit_code: i32) -> Operation {
        let response = re::ExecuteResponse {
            result: Some(re::ActionResult {
                exit_code,
                ..Default::default()
            }),
            status: Some(rpc::Status {
                code: status,
                ..Default::default()
            }),
            ..Default::default()
        };
        Operation {
            done: true,
            result: Some(operation::Result::Response(any(
                "ExecuteResponse",
                &response,
            ))),
            ..Default::default()
        }
    }

    #[test]
    fn only_successful_finished_results_are_stored() {
        assert!(successful_result(&finished(0, 0)).is_some());
        assert!(
            successful_result(&finished(0, 1)).is_none(),
            "failed action"
        );
        assert!(
            successful_result(&finished(4, 0)).is_none(),
            "DEADLINE_EXCEEDED"
        );
        let mut running = finished(0, 0);
        running.done = false;
        assert!(successful_result(&running).is_none());
        let error = Operation {
            done: true,
            result: Some(operation::Result::Error(rpc::Status {
                code: 13,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(successful_result(&error).is_none());
    }
}
