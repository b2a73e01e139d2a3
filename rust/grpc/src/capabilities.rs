use crate::request;
use clientd_digest::DigestFunction;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::build::bazel::semver::SemVer;
use clientd_store::Demultiplexing;
use re::capabilities_server::Capabilities;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Largest total of blob bytes accepted in one BatchUpdateBlobs / BatchReadBlobs call.
pub const MAX_BATCH_TOTAL_SIZE_BYTES: i64 = 4 << 20;

/// Capabilities of the local cache: what it really does. No compressors are advertised: over a
/// local socket compression only costs CPU.
pub struct CapabilitiesService {
    routes: Arc<Demultiplexing>,
}

impl CapabilitiesService {
    pub fn new(routes: Arc<Demultiplexing>) -> Self {
        CapabilitiesService { routes }
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
        let instance_name = request::instance_name(&request.get_ref().instance_name)?;
        self.routes.route(instance_name)?;
        let functions: Vec<i32> = DigestFunction::ALL.iter().map(|f| f.to_proto()).collect();
        Ok(Response::new(re::ServerCapabilities {
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
        }))
    }
}
