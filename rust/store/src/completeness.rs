//! An action cache decorator that only reports hits whose outputs are all in the CAS.
//!
//! The CAS and the action cache are bounded separately, so an action result can outlive the blobs
//! it names. Bazel treats a hit as a promise that the outputs can be downloaded; a hit with missing
//! outputs fails the build. Reporting such a hit as a miss makes Bazel run the action again instead.

use crate::error::StoreResult;
use crate::traits::{ActionCache, BlobStore};
use async_trait::async_trait;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use std::sync::Arc;

pub struct CompletenessChecking {
    inner: Arc<dyn ActionCache>,
    cas: Arc<dyn BlobStore>,
}

impl CompletenessChecking {
    pub fn new(inner: Arc<dyn ActionCache>, cas: Arc<dyn BlobStore>) -> Self {
        CompletenessChecking { inner, cas }
    }
}

/// Every CAS digest an action result refers to directly: output files, output directory trees,
/// stdout and stderr.
pub(crate) fn referenced_digests(
    action: &Digest,
    result: &ActionResult,
) -> StoreResult<Vec<Digest>> {
    let function = Some(action.function());
    let files = result.output_files.iter().filter_map(|f| f.digest.as_ref());
    let trees = result
        .output_directories
        .iter()
        .filter_map(|d| d.tree_digest.as_ref());
    let logs = [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten();
    files
        .chain(trees)
        .chain(logs)
        .map(|d| Ok(Digest::from_proto(function, d)?))
        .collect()
}

#[async_trait]
impl ActionCache for CompletenessChecking {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>> {
        let Some(result) = self.inner.get(instance_name, action).await? else {
            return Ok(None);
        };
        let Ok(digests) = referenced_digests(action, &result) else {
            tracing::warn!(%action, "action result with malformed digests treated as a miss");
            return Ok(None);
        };
        let missing = self.cas.find_missing(instance_name, &digests).await?;
        if !missing.is_empty() {
            tracing::debug!(%action, missing = missing.len(), "action result with missing outputs treated as a miss");
            return Ok(None);
        }
        Ok(Some(result))
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        self.inner.put(instance_name, action, result).await
    }
}
