//! The gRPC service, in the order Bazel calls it: StartBuild, StageArtifacts and
//! FinalizeArtifacts per action, BatchStat on incremental builds, FinalizeBuild; Clean.

use crate::bases::{Build, Shared};
use crate::error::OutputsError;
use crate::locators::{self, Locator, LocatorError};
use crate::paths;
use clientd_digest::{truncate, Digest, DigestFunction, InstanceName};
use clientd_proto::bazel_output_service as pb;
use clientd_proto::google::rpc::Status as RpcStatus;
use clientd_store::BlobStore;
use clientd_vfs::{Errno, OutputEntry, Vfs};
use pb::bazel_output_service_server::BazelOutputService;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// The only protocol version (experimental) Bazel speaks today.
const VERSION: i32 = 1;
/// Digests per existence check at StartBuild.
const CHECK_CHUNK: usize = 10_000;

/// The service. Its RPCs run the file system's work (the output tree's lock, hashing local
/// files, saving state, removing trees) on blocking threads, never on the runtime's.
pub struct OutputService(Arc<Shared>);

impl std::ops::Deref for OutputService {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) fn status(code: Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
}

/// INVALID_ARGUMENT saying why.
fn invalid(why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(why.to_string())
}

fn ok() -> RpcStatus {
    RpcStatus::default()
}

fn vfs_status(path: &str, errno: Errno) -> RpcStatus {
    let (code, why) = match errno {
        Errno::NOTDIR => (Code::InvalidArgument, "a parent is not a directory"),
        Errno::NOSPC => (Code::ResourceExhausted, "no space left for output files"),
        Errno::INVAL | Errno::NAMETOOLONG => (Code::InvalidArgument, "invalid name"),
        _ => (Code::Internal, "file system error"),
    };
    status(code, format!("{path}: {why} (errno {})", errno.0))
}

impl OutputService {
    /// Restores the saved output paths under `dir` (dropping those not saved within `max_age`).
    pub fn open(
        vfs: Arc<Vfs>,
        stores: Arc<dyn BlobStore>,
        dir: PathBuf,
        mount_outputs: PathBuf,
        pool_max_bytes: u64,
        max_age: Duration,
        max_tree_bytes: u64,
    ) -> Result<Self, OutputsError> {
        std::fs::create_dir_all(&dir).map_err(OutputsError::io("create", &dir))?;
        let service = OutputService(Arc::new(Shared {
            vfs,
            stores,
            dir,
            mount_outputs,
            pool_max_bytes,
            max_tree_bytes,
            bases: Mutex::new(HashMap::new()),
        }));
        service.restore_all(max_age)?;
        Ok(service)
    }

    /// Runs `f` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let shared = self.0.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Status::internal(format!("output service task failed: {e}")))
    }

    /// Removes staged CAS files that this build cannot use: staged for another instance name or
    /// digest function, or whose blobs no longer exist. Returns their paths.
    async fn drop_stale(
        &self,
        root: u64,
        instance_name: InstanceName,
        function: DigestFunction,
    ) -> Result<Vec<String>, Status> {
        let instance = instance_name.clone();
        let (mut removed, kept) = self
            .blocking(move |s| s.drop_foreign(root, &instance, function))
            .await?;
        let mut gone = Vec::new();
        for chunk in kept.chunks(CHECK_CHUNK) {
            let digests: Vec<Digest> = chunk.iter().map(|(_, d)| *d).collect();
            let missing = self
                .stores
                .find_missing(&instance_name, &digests)
                .await
                .map_err(|e| {
                    Status::new(
                        e.code().into(),
                        format!(
                            "checking staged outputs in {:?}: {e}",
                            truncate(instance_name.as_str())
                        ),
                    )
                })?;
            let missing: std::collections::HashSet<Digest> = missing.into_iter().collect();
            gone.extend(
                chunk
                    .iter()
                    .filter(|(_, d)| missing.contains(d))
                    .map(|(path, _)| path.clone()),
            );
        }
        removed.extend(
            self.blocking(move |s| {
                for path in &gone {
                    let _ = s.vfs.remove_output(root, path);
                }
                gone
            })
            .await?,
        );
        removed.sort();
        Ok(removed)
    }
}

#[tonic::async_trait]
impl BazelOutputService for OutputService {
    async fn clean(
        &self,
        request: Request<pb::CleanRequest>,
    ) -> Result<Response<pb::CleanResponse>, Status> {
        let id = request.into_inner().output_base_id;
        paths::check(&id).map_err(invalid)?;
        self.blocking(move |s| s.clean(&id)).await??;
        Ok(Response::new(pb::CleanResponse {}))
    }

    async fn start_build(
        &self,
        request: Request<pb::StartBuildRequest>,
    ) -> Result<Response<pb::StartBuildResponse>, Status> {
        let request = request.into_inner();
        if request.version != VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported Output Service version {}; this server speaks version {VERSION}",
                request.version
            )));
        }
        let id = request.output_base_id.clone();
        if id.contains('/') {
            return Err(Status::invalid_argument(format!(
                "output_base_id {:?} must be one path component",
                truncate(&id)
            )));
        }
        paths::check(&id).map_err(invalid)?;
        if request.build_id.is_empty() {
            return Err(Status::invalid_argument("build_id is empty"));
        }
        let args = locators::start_build_args(request.args.as_ref()).map_err(invalid)?;
        let instance_name = InstanceName::new(&args.instance_name)
            .map_err(|e| Status::invalid_argument(format!("args.instance_name: {e}")))?;
        let function = DigestFunction::from_proto(args.digest_function)
            .map_err(invalid)?
            .unwrap_or(DigestFunction::Sha256);

        let base_id = id.clone();
        let root = self
            .blocking(move |s| {
                let (root, unfinished) = s.base(&base_id)?;
                if let Some(previous) = unfinished {
                    tracing::info!(
                        "outputs/{base_id}: build {} was not finalized; finalizing it",
                        previous.build_id
                    );
                    s.finalize(&previous)?;
                }
                Ok::<_, Status>(root)
            })
            .await??;
        let gone = self
            .drop_stale(root, instance_name.clone(), function)
            .await?;
        if !gone.is_empty() {
            tracing::info!(
                "outputs/{id}: {} staged outputs are gone from the CAS",
                gone.len()
            );
        }
        // Absolute symlink targets resolve through Bazel's aliases, and through the output path's
        // own absolute path (where a link made by a tool inside the output path points).
        let mut aliases: Vec<(String, String)> = request.output_path_aliases.into_iter().collect();
        if !request.output_path_prefix.is_empty() {
            let own = Path::new(&request.output_path_prefix).join(&id);
            aliases.push((own.to_string_lossy().into_owned(), ".".into()));
        }
        aliases.push((
            self.mount_outputs.join(&id).to_string_lossy().into_owned(),
            ".".into(),
        ));
        let build = Build {
            output_base_id: id.clone(),
            build_id: request.build_id.clone(),
            instance_name,
            function,
            aliases,
            root,
        };
        if let Some(base) = self.bases.lock().unwrap().get_mut(&id) {
            base.running = Some(build);
        }
        let suffix = if request.output_path_prefix.is_empty() {
            self.mount_outputs.join(&id).to_string_lossy().into_owned()
        } else {
            id
        };
        // Unset, as the protocol requires of a server that does not track every change to the
        // output path (clientd keeps no dirty bits): Bazel then checks the contents itself.
        // Files whose blobs are gone were removed above all the same.
        Ok(Response::new(pb::StartBuildResponse {
            initial_output_path_contents: None,
            output_path_suffix: suffix,
        }))
    }

    async fn stage_artifacts(
        &self,
        request: Request<pb::StageArtifactsRequest>,
    ) -> Result<Response<pb::StageArtifactsResponse>, Status> {
        let request = request.into_inner();
        let build = self.build(&request.build_id)?;
        // Decode and check every artifact; one existence question for all the files.
        let mut statuses: Vec<Option<RpcStatus>> = vec![None; request.artifacts.len()];
        let mut files: Vec<(usize, Digest)> = Vec::new();
        let mut trees: Vec<(usize, Digest, Option<Digest>)> = Vec::new();
        for (i, artifact) in request.artifacts.iter().enumerate() {
            let locator = paths::check(&artifact.path)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let any = artifact.locator.as_ref();
                    let any = any.ok_or(LocatorError::Missing("locator"));
                    any.and_then(|any| Locator::decode(any, build.function))
                        .map_err(|e| e.to_string())
                });
            match locator {
                Ok(Locator::File(digest)) => files.push((i, digest)),
                Ok(Locator::Tree { tree, root }) => trees.push((i, tree, root)),
                Err(why) => {
                    statuses[i] = Some(status(
                        Code::InvalidArgument,
                        format!("{}: {why}", artifact.path),
                    ))
                }
            }
        }
        let digests: Vec<Digest> = files.iter().map(|(_, d)| *d).collect();
        let missing: std::collections::HashSet<Digest> = self
            .stores
            .find_missing(&build.instance_name, &digests)
            .await
            .map_err(|e| Status::new(e.code().into(), e.message()))?
            .into_iter()
            .collect();
        let mut staged: Vec<(usize, Vec<(String, OutputEntry)>)> = Vec::new();
        for (i, digest) in files {
            let path = &request.artifacts[i].path;
            if missing.contains(&digest) {
                statuses[i] = Some(status(
                    Code::NotFound,
                    format!("{path}: blob {digest} is not in the CAS"),
                ));
                continue;
            }
            staged.push((
                i,
                vec![(
                    path.clone(),
                    OutputEntry::CasFile {
                        instance: build.instance_name.clone(),
                        digest,
                        executable: true,
                    },
                )],
            ));
        }
        for (i, tree, root) in trees {
            let path = &request.artifacts[i].path;
            match self.expand_tree(&build, path, &tree, root.as_ref()).await {
                Ok(entries) => staged.push((i, entries)),
                Err(s) => statuses[i] = Some(s),
            }
        }
        // Stage everything in one pass over the tree.
        let spans: Vec<(usize, usize)> = staged.iter().map(|(i, e)| (*i, e.len())).collect();
        let entries: Vec<(String, OutputEntry)> = staged.into_iter().flat_map(|(_, e)| e).collect();
        let paths_of: Vec<String> = entries.iter().map(|(p, _)| p.clone()).collect();
        let root = build.root;
        let mut results = self
            .blocking(move |s| s.vfs.stage(root, entries))
            .await?
            .into_iter()
            .zip(paths_of);
        for (i, count) in spans {
            let first_error = results
                .by_ref()
                .take(count)
                .find_map(|(r, path)| r.err().map(|e| vfs_status(&path, e)));
            statuses[i] = Some(first_error.unwrap_or_else(ok));
        }
        Ok(Response::new(pb::StageArtifactsResponse {
            responses: statuses
                .into_iter()
                .map(|s| pb::stage_artifacts_response::Response {
                    status: Some(s.unwrap_or_else(ok)),
                })
                .collect(),
        }))
    }

    /// Nothing to do (clientd keeps no dirty bits). An unknown build id is fine too: after a
    /// daemon restart in the middle of a build, failing would fail Bazel's action for nothing.
    async fn finalize_artifacts(
        &self,
        _request: Request<pb::FinalizeArtifactsRequest>,
    ) -> Result<Response<pb::FinalizeArtifactsResponse>, Status> {
        Ok(Response::new(pb::FinalizeArtifactsResponse {}))
    }

    async fn finalize_build(
        &self,
        request: Request<pb::FinalizeBuildRequest>,
    ) -> Result<Response<pb::FinalizeBuildResponse>, Status> {
        let build_id = &request.get_ref().build_id;
        let build = {
            let bases = self.bases.lock().unwrap();
            let running = bases
                .values()
                .filter_map(|b| b.running.as_ref())
                .find(|b| &b.build_id == build_id)
                .cloned();
            let done = bases
                .values()
                .any(|b| b.last.as_ref().is_some_and(|l| &l.build_id == build_id));
            match (running, done) {
                (Some(build), _) => build,
                // Idempotent: finalizing a finished build again is fine.
                (None, true) => return Ok(Response::new(pb::FinalizeBuildResponse {})),
                // A build this daemon does not know (it restarted mid-build, or the output
                // base was cleaned): nothing to save, and failing would fail Bazel's build.
                (None, false) => {
                    tracing::info!(
                        "FinalizeBuild of build {:?}, which is not running here; nothing to do",
                        truncate(build_id)
                    );
                    return Ok(Response::new(pb::FinalizeBuildResponse {}));
                }
            }
        };
        self.blocking(move |s| s.finalize(&build)).await??;
        Ok(Response::new(pb::FinalizeBuildResponse {}))
    }

    async fn batch_stat(
        &self,
        request: Request<pb::BatchStatRequest>,
    ) -> Result<Response<pb::BatchStatResponse>, Status> {
        let request = request.into_inner();
        let build = self.build(&request.build_id)?;
        // Lookups under the tree's lock, and hashes of files Bazel wrote: blocking work.
        let responses = self
            .blocking(move |s| {
                request
                    .paths
                    .iter()
                    .map(|path| pb::batch_stat_response::StatResponse {
                        stat: paths::check(path).ok().and_then(|()| s.stat(&build, path)),
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::BatchStatResponse { responses }))
    }
}
