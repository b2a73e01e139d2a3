use crate::request;
use crate::routes::Clusters;
use clientd_digest::{DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::build::bazel::semver::SemVer;
use re::capabilities_server::Capabilities;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Largest total of blob bytes accepted in one BatchUpdateBlobs / BatchReadBlobs call.
pub const MAX_BATCH_TOTAL_SIZE_BYTES: i64 = 4 << 20;

/// What clientd offers for an instance name: the local cache's capabilities, or a cluster's
/// limited to what clientd itself supports. No compressors are advertised: over a local socket
/// compression only costs CPU.
pub struct CapabilitiesService {
    clusters: Arc<Clusters>,
}

impl CapabilitiesService {
    pub fn new(clusters: Arc<Clusters>) -> Self {
        CapabilitiesService { clusters }
    }
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        let instance_name = &request::instance_name(&request.get_ref().instance_name)?;
        Ok(Response::new(
            served_capabilities(&self.clusters, instance_name).await?,
        ))
    }
}

/// What GetCapabilities answers for an instance name (the file system's `blobs/` lists its
/// digest functions).
pub async fn served_capabilities(
    clusters: &Clusters,
    instance_name: &InstanceName,
) -> Result<re::ServerCapabilities, Status> {
    let local = local_capabilities();
    match clusters.route(instance_name).map_err(request::status)? {
        (None, _) => Ok(local),
        (Some(cluster), rest) => Ok(limit(cluster.capabilities(&rest).await?, local)),
    }
}

/// A cluster's capabilities as clientd presents them: digest functions both support, clientd's
/// batch limit (clientd splits batches for the cluster), no compressors, the API versions both
/// speak; execution as the cluster offers it.
fn limit(
    upstream: re::ServerCapabilities,
    local: re::ServerCapabilities,
) -> re::ServerCapabilities {
    let ours = local.cache_capabilities.clone().unwrap_or_default();
    let supported = |f: &i32| ours.digest_functions.contains(f);
    let cache = upstream.cache_capabilities.map(|c| re::CacheCapabilities {
        digest_functions: c.digest_functions.into_iter().filter(supported).collect(),
        max_batch_total_size_bytes: MAX_BATCH_TOTAL_SIZE_BYTES,
        supported_compressors: vec![],
        supported_batch_update_compressors: vec![],
        split_blob_support: false,
        splice_blob_support: false,
        ..c
    });
    let execution = upstream
        .execution_capabilities
        .map(|e| re::ExecutionCapabilities {
            digest_functions: e.digest_functions.into_iter().filter(supported).collect(),
            ..e
        });
    let newest = |a: Option<SemVer>, b: Option<SemVer>| match (a, b) {
        (Some(a), Some(b)) => Some(if (a.major, a.minor) >= (b.major, b.minor) {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    };
    let oldest = |a: Option<SemVer>, b: Option<SemVer>| match (a, b) {
        (Some(a), Some(b)) => Some(if (a.major, a.minor) <= (b.major, b.minor) {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    };
    re::ServerCapabilities {
        cache_capabilities: cache,
        execution_capabilities: execution,
        low_api_version: newest(upstream.low_api_version, local.low_api_version),
        high_api_version: oldest(upstream.high_api_version, local.high_api_version),
        ..upstream
    }
}

/// The local cache's capabilities: what it really does.
fn local_capabilities() -> re::ServerCapabilities {
    {
        let functions: Vec<i32> = DigestFunction::ALL.iter().map(|f| f.to_proto()).collect();
        re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: functions.clone(),
                action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: MAX_BATCH_TOTAL_SIZE_BYTES,
                symlink_absolute_path_strategy: re::symlink_absolute_path_strategy::Value::Allowed
                    as i32,
                ..Default::default()
            }),
            execution_capabilities: Some(re::ExecutionCapabilities {
                digest_function: DigestFunction::Sha256.to_proto(),
                exec_enabled: false,
                digest_functions: functions,
                ..Default::default()
            }),
            low_api_version: version(2, 0),
            high_api_version: version(2, 3),
            ..Default::default()
        }
    }
}
