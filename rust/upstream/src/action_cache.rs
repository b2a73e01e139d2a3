//! A cluster's ActionCache as an [`ActionCache`]; NOT_FOUND becomes a miss.

use crate::cluster::{digest_function_field, Cluster};
use async_trait::async_trait;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{ActionCache, StoreError, StoreResult};
use std::sync::Arc;

pub struct UpstreamActionCache {
    cluster: Arc<Cluster>,
}

impl UpstreamActionCache {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        UpstreamActionCache { cluster }
    }
}

#[async_trait]
impl ActionCache for UpstreamActionCache {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<re::ActionResult>> {
        let request = re::GetActionResultRequest {
            instance_name: instance_name.to_string(),
            action_digest: Some(action.to_proto()),
            digest_function: digest_function_field(action.function()),
            ..Default::default()
        };
        let response = self
            .cluster
            .store_call("GetActionResult", || {
                let mut client = self.cluster.action_cache_client();
                let request = self.cluster.request(request.clone());
                async move { client.get_action_result(request).await }
            })
            .await;
        match response {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &re::ActionResult,
    ) -> StoreResult<()> {
        let request = re::UpdateActionResultRequest {
            instance_name: instance_name.to_string(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            digest_function: digest_function_field(action.function()),
            ..Default::default()
        };
        self.cluster
            .store_call("UpdateActionResult", || {
                let mut client = self.cluster.action_cache_client();
                let request = self.cluster.request(request.clone());
                async move { client.update_action_result(request).await }
            })
            .await?;
        Ok(())
    }
}
