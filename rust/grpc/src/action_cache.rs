use crate::activity::{request_metadata, Recorder};
use crate::request;
use clientd_activity::Outcome;
use clientd_digest::truncate;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{ActionCache, Stats};
use re::action_cache_server::ActionCache as ActionCacheRpc;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct ActionCacheService {
    cache: Arc<dyn ActionCache>,
    /// Hits and misses as clients see them, local cache and clusters alike.
    stats: Arc<Stats>,
    recorder: Recorder,
}

impl ActionCacheService {
    pub fn new(cache: Arc<dyn ActionCache>, stats: Arc<Stats>, recorder: Recorder) -> Self {
        ActionCacheService {
            cache,
            stats,
            recorder,
        }
    }
}

#[tonic::async_trait]
impl ActionCacheRpc for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        let started = Instant::now();
        let metadata = request_metadata(request.metadata());
        let request = request.get_ref();
        let instance_name = &request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        let action = request::digest(function, request.action_digest.as_ref(), "action_digest")?;
        let record = |outcome, result| {
            self.recorder
                .record(&metadata, instance_name, &action, outcome, started, result)
        };
        match self
            .cache
            .get(instance_name, &action)
            .await
            .map_err(request::status)?
        {
            Some(result) => {
                Stats::add(&self.stats.action_cache_hits, 1);
                let outcome = match instance_name.is_local() {
                    true => Outcome::LocalHit,
                    false => Outcome::ClusterHit,
                };
                record(outcome, Some(&result));
                Ok(Response::new(result))
            }
            None => Err({
                Stats::add(&self.stats.action_cache_misses, 1);
                record(Outcome::Miss, None);
                Status::not_found(format!(
                    "no action result for {action} in instance {:?}",
                    truncate(instance_name.as_str())
                ))
            }),
        }
    }

    async fn update_action_result(
        &self,
        request: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        let started = Instant::now();
        let metadata = request_metadata(request.metadata());
        let request = request.into_inner();
        let instance_name = &request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        let action = request::digest(function, request.action_digest.as_ref(), "action_digest")?;
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("action_result is missing"))?;
        let function = Some(action.function());
        for file in &result.output_files {
            request::digest(
                function,
                file.digest.as_ref(),
                &format!("output file {:?}", truncate(&file.path)),
            )?;
        }
        self.cache
            .put(instance_name, &action, &result)
            .await
            .map_err(request::status)?;
        self.recorder.record(
            &metadata,
            instance_name,
            &action,
            Outcome::Uploaded,
            started,
            Some(&result),
        );
        Ok(Response::new(result))
    }
}
