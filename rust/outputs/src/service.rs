//! The gRPC service, in the order Bazel calls it: StartBuild, StageArtifacts and
//! FinalizeArtifacts per action, BatchStat on incremental builds, FinalizeBuild; Clean.

use crate::locators::{self, Locator};
use crate::paths;
use crate::state::{self, LastBuild};
use clientd_digest::{truncate, validate_instance_name, Digest, DigestFunction};
use clientd_proto::bazel_output_service as pb;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::rpc::Status as RpcStatus;
use clientd_store::{BlobStore, StoreError};
use clientd_vfs::{Errno, Lstat, OutputEntry, OutputStat, Pool, Vfs};
use pb::bazel_output_service_server::BazelOutputService;
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::{Code, Request, Response, Status};

/// The only protocol version (experimental) Bazel speaks today.
const VERSION: i32 = 1;
/// Symlinks followed while resolving one BatchStat path, as the kernel allows.
const MAX_SYMLINKS: usize = 40;
/// Digests per existence check at StartBuild.
const CHECK_CHUNK: usize = 10_000;

/// One output base's output path.
struct Base {
    root: u64,
    pool: Arc<Pool>,
    last: Option<LastBuild>,
    /// The build in progress (StartBuild seen, FinalizeBuild not yet).
    running: Option<Build>,
}

#[derive(Clone)]
struct Build {
    output_base_id: String,
    build_id: String,
    instance_name: Arc<str>,
    function: DigestFunction,
    aliases: Vec<(String, String)>,
    root: u64,
}

/// The service. Its RPCs run the file system's work (the output tree's lock, hashing local
/// files, saving state, removing trees) on blocking threads, never on the runtime's.
pub struct OutputService(Arc<Shared>);

impl std::ops::Deref for OutputService {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What the RPCs share, reachable from blocking threads.
pub struct Shared {
    vfs: Arc<Vfs>,
    stores: Arc<dyn BlobStore>,
    /// `<cache_dir>/outputs`: one directory per output base (state and files/).
    dir: PathBuf,
    /// `<mount>/outputs`, for absolute output path suffixes.
    mount_outputs: PathBuf,
    pool_max_bytes: u64,
    /// Largest Tree a TreeArtifactLocator may name.
    max_tree_bytes: u64,
    bases: Mutex<HashMap<String, Base>>,
}

fn status(code: Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
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
    ) -> Result<Self, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
        instance_name: Arc<str>,
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
                        Status::from(e.clone()).code(),
                        format!(
                            "checking staged outputs in {:?}: {e}",
                            truncate(&instance_name)
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

impl Shared {
    fn restore_all(&self, max_age: Duration) -> Result<(), String> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let base_dir = entry.path();
            let saved = std::fs::metadata(base_dir.join("state")).and_then(|m| m.modified());
            let fresh = saved
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age <= max_age);
            if !fresh {
                tracing::info!("outputs/{id}: no state saved within {max_age:?}; removing it");
                let _ = std::fs::remove_dir_all(&base_dir);
                continue;
            }
            let start = std::time::Instant::now();
            match self.restore(&id) {
                Ok(count) => tracing::info!(
                    "outputs/{id}: restored {count} entries in {:?}",
                    start.elapsed()
                ),
                Err(e) => {
                    tracing::warn!("outputs/{id}: cannot restore ({e}); removing it");
                    self.vfs.remove_output_root(&id);
                    let _ = std::fs::remove_dir_all(&base_dir);
                }
            }
        }
        Ok(())
    }

    fn restore(&self, id: &str) -> Result<usize, String> {
        let base_dir = self.dir.join(id);
        let (last, entries) = state::load(&base_dir)?;
        let pool = Pool::open_persistent(&base_dir.join("files"), self.pool_max_bytes)
            .map_err(|e| e.to_string())?;
        let root = self
            .vfs
            .output_root(id, pool.clone())
            .map_err(|e| format!("errno {}", e.0))?;
        let local: std::collections::HashSet<u64> = entries
            .iter()
            .filter_map(|(_, e)| match e {
                OutputEntry::LocalFile { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        pool.retain(|id| local.contains(&id))
            .map_err(|e| e.to_string())?;
        let count = entries.len();
        for (result, (path, _)) in self
            .vfs
            .stage(root, entries.clone())
            .into_iter()
            .zip(&entries)
        {
            if let Err(e) = result {
                tracing::warn!("outputs/{id}/{path}: not restored (errno {})", e.0);
            }
        }
        self.bases.lock().unwrap().insert(
            id.to_string(),
            Base {
                root,
                pool,
                last: Some(last),
                running: None,
            },
        );
        Ok(count)
    }

    /// The output base `id`, created empty if new.
    fn base(&self, id: &str) -> Result<(u64, Option<Build>), Status> {
        let mut bases = self.bases.lock().unwrap();
        if let Some(base) = bases.get(id) {
            return Ok((base.root, base.running.clone()));
        }
        let pool = Pool::open_persistent(&self.dir.join(id).join("files"), self.pool_max_bytes)
            .map_err(|e| {
                Status::internal(format!("cannot create the output path's storage: {e}"))
            })?;
        let root = self.vfs.output_root(id, pool.clone()).map_err(|e| {
            Status::invalid_argument(format!("output_base_id {:?}: errno {}", truncate(id), e.0))
        })?;
        bases.insert(
            id.to_string(),
            Base {
                root,
                pool,
                last: None,
                running: None,
            },
        );
        Ok((root, None))
    }

    /// The running build `build_id`.
    fn build(&self, build_id: &str) -> Result<Build, Status> {
        let bases = self.bases.lock().unwrap();
        bases
            .values()
            .filter_map(|b| b.running.as_ref())
            .find(|b| b.build_id == build_id)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "build {:?} is not running: StartBuild first (or it was finalized)",
                    truncate(build_id)
                ))
            })
    }

    /// Saves `build`'s output path and marks the build finished.
    fn finalize(&self, build: &Build) -> Result<(), Status> {
        let entries = self.vfs.snapshot(build.root);
        let last = LastBuild {
            build_id: build.build_id.clone(),
            instance_name: build.instance_name.clone(),
            function: build.function,
        };
        let dir = self.dir.join(&build.output_base_id);
        std::fs::create_dir_all(&dir)
            .and_then(|()| state::save(&dir, &last, &entries))
            .map_err(|e| Status::internal(format!("cannot save {}: {e}", dir.display())))?;
        let mut bases = self.bases.lock().unwrap();
        if let Some(base) = bases.get_mut(&build.output_base_id) {
            if base
                .running
                .as_ref()
                .is_some_and(|r| r.build_id == build.build_id)
            {
                base.running = None;
            }
            base.last = Some(last);
        }
        Ok(())
    }

    /// Removes staged CAS files staged for another instance name or digest function (BatchStat
    /// would answer with digests this build cannot use). Returns their paths, and the CAS files
    /// kept (all of `instance_name`), for the existence check.
    fn drop_foreign(
        &self,
        root: u64,
        instance_name: &str,
        function: DigestFunction,
    ) -> (Vec<String>, Vec<(String, Digest)>) {
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (path, entry) in self.vfs.snapshot(root) {
            if let OutputEntry::CasFile {
                instance, digest, ..
            } = entry
            {
                if &*instance != instance_name || digest.function() != function {
                    let _ = self.vfs.remove_output(root, &path);
                    removed.push(path);
                    continue;
                }
                kept.push((path, digest));
            }
        }
        (removed, kept)
    }

    /// The entries a Tree expands to below `path`.
    async fn expand_tree(
        &self,
        build: &Build,
        path: &str,
        tree: &Digest,
        expected_root: Option<&Digest>,
    ) -> Result<Vec<(String, OutputEntry)>, RpcStatus> {
        if tree.size() > self.max_tree_bytes {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "{path}: tree {tree} is larger than outputs.max_tree_size_bytes ({} bytes): \
                     it is read into memory to be staged",
                    self.max_tree_bytes
                ),
            ));
        }
        let bytes = self
            .stores
            .read_bytes(&build.instance_name, tree)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => status(
                    Code::NotFound,
                    format!("{path}: tree {tree} is not in the CAS"),
                ),
                e => {
                    let s = Status::from(e);
                    status(
                        s.code(),
                        format!("{path}: reading tree {tree}: {}", s.message()),
                    )
                }
            })?;
        let tree_message = re::Tree::decode(bytes).map_err(|e| {
            status(
                Code::InvalidArgument,
                format!("{path}: {tree} is not a Tree: {e}"),
            )
        })?;
        let function = build.function;
        let root = tree_message.root.ok_or_else(|| {
            status(
                Code::InvalidArgument,
                format!("{path}: tree {tree} has no root"),
            )
        })?;
        let root_digest = function.digest_of(&root.encode_to_vec());
        if let Some(expected) = expected_root {
            if *expected != root_digest {
                return Err(status(
                    Code::InvalidArgument,
                    format!("{path}: root_directory_digest {expected} is not the tree's root {root_digest}"),
                ));
            }
        }
        let children: HashMap<Digest, re::Directory> = tree_message
            .children
            .into_iter()
            .map(|d| (function.digest_of(&d.encode_to_vec()), d))
            .collect();
        let mut out = vec![(path.to_string(), OutputEntry::Directory)];
        let mut stack = vec![(path.to_string(), &root)];
        let bad = |what: String| {
            status(
                Code::InvalidArgument,
                format!("{path}: tree {tree}: {what}"),
            )
        };
        while let Some((dir_path, dir)) = stack.pop() {
            for file in &dir.files {
                paths::check(&file.name).map_err(&bad)?;
                let digest = file
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(Some(function), d).ok())
                    .ok_or_else(|| bad(format!("file {:?} has no valid digest", file.name)))?;
                out.push((
                    format!("{dir_path}/{}", file.name),
                    OutputEntry::CasFile {
                        instance: build.instance_name.clone(),
                        digest,
                        executable: file.is_executable,
                    },
                ));
            }
            for link in &dir.symlinks {
                paths::check(&link.name).map_err(&bad)?;
                out.push((
                    format!("{dir_path}/{}", link.name),
                    OutputEntry::Symlink(link.target.clone()),
                ));
            }
            for sub in &dir.directories {
                paths::check(&sub.name).map_err(&bad)?;
                let digest = sub
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(Some(function), d).ok())
                    .ok_or_else(|| bad(format!("directory {:?} has no valid digest", sub.name)))?;
                let child = children.get(&digest).ok_or_else(|| {
                    bad(format!(
                        "directory {:?} ({digest}) is not among its children",
                        sub.name
                    ))
                })?;
                let sub_path = format!("{dir_path}/{}", sub.name);
                out.push((sub_path.clone(), OutputEntry::Directory));
                stack.push((sub_path, child));
            }
        }
        Ok(out)
    }

    /// Forgets output base `id`: its tree, its files and its saved state.
    fn clean(&self, id: &str) -> Result<(), Status> {
        if let Some(base) = self.bases.lock().unwrap().remove(id) {
            drop(base.pool);
        }
        self.vfs.remove_output_root(id);
        match std::fs::remove_dir_all(self.dir.join(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Status::internal(format!(
                    "cannot remove the saved state of {id}: {e}"
                )))
            }
            _ => {}
        }
        tracing::info!("outputs/{id}: cleaned");
        Ok(())
    }

    /// lstat of `path`, following intermediate symlinks (through the aliases for absolute ones).
    fn stat(&self, build: &Build, path: &str) -> Option<pb::batch_stat_response::Stat> {
        use pb::batch_stat_response::stat;
        let mut path = path.to_string();
        for _ in 0..MAX_SYMLINKS {
            match self.vfs.output_lstat(build.root, &path).ok()? {
                Lstat::Found(found) => {
                    let kind = match found {
                        OutputStat::Directory => Some(stat::Type::Directory(stat::Directory {})),
                        OutputStat::Symlink(target) => {
                            Some(stat::Type::Symlink(stat::Symlink { target }))
                        }
                        OutputStat::File { ino, digest } => {
                            let digest = match digest {
                                Some(d) => Some(d),
                                None => self.vfs.local_digest(ino, build.function).ok(),
                            };
                            Some(stat::Type::File(stat::File {
                                locator: digest.as_ref().map(locators::file_locator),
                            }))
                        }
                        OutputStat::Other => None,
                    };
                    return Some(pb::batch_stat_response::Stat { r#type: kind });
                }
                Lstat::ThroughSymlink { dir, target, rest } => {
                    let resolved = if target.starts_with('/') {
                        paths::unalias(&target, &build.aliases)?
                    } else {
                        paths::join(&dir, &target)?
                    };
                    path = paths::join(&resolved, &rest)?;
                }
            }
        }
        None
    }
}

#[tonic::async_trait]
impl BazelOutputService for OutputService {
    async fn clean(
        &self,
        request: Request<pb::CleanRequest>,
    ) -> Result<Response<pb::CleanResponse>, Status> {
        let id = request.into_inner().output_base_id;
        paths::check(&id).map_err(Status::invalid_argument)?;
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
        paths::check(&id).map_err(Status::invalid_argument)?;
        if request.build_id.is_empty() {
            return Err(Status::invalid_argument("build_id is empty"));
        }
        let args =
            locators::start_build_args(request.args.as_ref()).map_err(Status::invalid_argument)?;
        validate_instance_name(&args.instance_name)
            .map_err(|e| Status::invalid_argument(format!("args.instance_name: {e}")))?;
        let function = DigestFunction::from_proto(args.digest_function)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
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
            .drop_stale(root, args.instance_name.as_str().into(), function)
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
            instance_name: args.instance_name.as_str().into(),
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
            let locator = paths::check(&artifact.path).and_then(|()| {
                let any = artifact.locator.as_ref().ok_or("locator is missing")?;
                Locator::decode(any, build.function)
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
            .await?
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
