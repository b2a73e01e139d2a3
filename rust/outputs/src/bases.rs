//! The output paths the service keeps, one per output base: created at StartBuild, saved at
//! FinalizeBuild, restored at start (those saved recently enough), removed by Clean.

use crate::error::OutputsError;
use crate::expand;
use crate::locators;
use crate::paths;
use crate::service::status;
use crate::state::{self, LastBuild};
use clientd_digest::{truncate, Digest, DigestFunction, InstanceName};
use clientd_proto::bazel_output_service as pb;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::rpc::Status as RpcStatus;
use clientd_store::{BlobStore, StoreError};
use clientd_vfs::{Lstat, OutputEntry, OutputStat, Pool, Vfs};
use prost::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::{Code, Status};

/// Symlinks followed while resolving one BatchStat path, as the kernel allows.
const MAX_SYMLINKS: usize = 40;

/// One output base's output path.
pub(crate) struct Base {
    pub(crate) root: u64,
    pub(crate) pool: Arc<Pool>,
    pub(crate) last: Option<LastBuild>,
    /// The build in progress (StartBuild seen, FinalizeBuild not yet).
    pub(crate) running: Option<Build>,
}

#[derive(Clone)]
pub(crate) struct Build {
    pub(crate) output_base_id: String,
    pub(crate) build_id: String,
    pub(crate) instance_name: InstanceName,
    pub(crate) function: DigestFunction,
    pub(crate) aliases: Vec<(String, String)>,
    pub(crate) root: u64,
}

/// What the RPCs share, reachable from blocking threads.
pub struct Shared {
    pub(crate) vfs: Arc<Vfs>,
    pub(crate) stores: Arc<dyn BlobStore>,
    /// `<cache_dir>/outputs`: one directory per output base (state and files/).
    pub(crate) dir: PathBuf,
    /// `<mount>/outputs`, for absolute output path suffixes.
    pub(crate) mount_outputs: PathBuf,
    pub(crate) pool_max_bytes: u64,
    /// Largest Tree a TreeArtifactLocator may name.
    pub(crate) max_tree_bytes: u64,
    pub(crate) bases: Mutex<HashMap<String, Base>>,
}

impl Shared {
    /// Restores every output path saved under `dir` within `max_age`, and removes the others and
    /// any that cannot be restored.
    pub(crate) fn restore_all(&self, max_age: Duration) -> Result<(), OutputsError> {
        let entries = std::fs::read_dir(&self.dir).map_err(OutputsError::io("read", &self.dir))?;
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

    /// Restores output path `id` from its saved state; the number of entries staged.
    pub(crate) fn restore(&self, id: &str) -> Result<usize, OutputsError> {
        let base_dir = self.dir.join(id);
        let (last, entries) = state::load(&base_dir)?;
        let (root, pool) = self.open(id)?;
        let local: std::collections::HashSet<u64> = entries
            .iter()
            .filter_map(|(_, e)| match e {
                OutputEntry::LocalFile { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        let files = base_dir.join("files");
        pool.retain(|id| local.contains(&id))
            .map_err(OutputsError::io("clean up the files of", &files))?;
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

    /// Output path `id`'s file pool (`<dir>/<id>/files`, created if new) and its root in the file
    /// system: what both a restored and a new output path start from.
    fn open(&self, id: &str) -> Result<(u64, Arc<Pool>), OutputsError> {
        let files = self.dir.join(id).join("files");
        let pool = Pool::open_persistent(&files, self.pool_max_bytes)
            .map_err(OutputsError::io("open the files of", &files))?;
        let root = self
            .vfs
            .output_root(id, pool.clone())
            .map_err(|e| OutputsError::Root {
                id: id.to_string(),
                errno: e.0,
            })?;
        Ok((root, pool))
    }

    /// The output base `id`, created empty if new.
    pub(crate) fn base(&self, id: &str) -> Result<(u64, Option<Build>), Status> {
        let mut bases = self.bases.lock().unwrap();
        if let Some(base) = bases.get(id) {
            return Ok((base.root, base.running.clone()));
        }
        let (root, pool) = self.open(id).map_err(|e| match e {
            OutputsError::Root { errno, .. } => Status::invalid_argument(format!(
                "output_base_id {:?}: errno {errno}",
                truncate(id)
            )),
            e => Status::internal(format!("cannot create the output path's storage: {e}")),
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
    pub(crate) fn build(&self, build_id: &str) -> Result<Build, Status> {
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
    pub(crate) fn finalize(&self, build: &Build) -> Result<(), Status> {
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
    pub(crate) fn drop_foreign(
        &self,
        root: u64,
        instance_name: &InstanceName,
        function: DigestFunction,
    ) -> (Vec<String>, Vec<(String, Digest)>) {
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (path, entry) in self.vfs.snapshot(root) {
            if let OutputEntry::CasFile {
                instance, digest, ..
            } = entry
            {
                if &instance != instance_name || digest.function() != function {
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
    pub(crate) async fn expand_tree(
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
                e => status(
                    Code::from(e.code()),
                    format!("{path}: reading tree {tree}: {e}"),
                ),
            })?;
        // Decoding and hashing every Directory of a tree (up to max_tree_size_bytes) is work
        // for a blocking thread.
        let (path, tree, expected_root) = (path.to_string(), *tree, expected_root.copied());
        let (function, instance) = (build.function, build.instance_name.clone());
        tokio::task::spawn_blocking(move || {
            let tree_message = re::Tree::decode(bytes).map_err(|e| {
                status(
                    Code::InvalidArgument,
                    format!("{path}: {tree} is not a Tree: {e}"),
                )
            })?;
            expand::expand(
                &path,
                &tree,
                tree_message,
                function,
                &instance,
                expected_root.as_ref(),
            )
        })
        .await
        .unwrap_or_else(|e| Err(status(Code::Internal, format!("expanding a tree: {e}"))))
    }

    /// Forgets output base `id`: its tree, its files and its saved state.
    pub(crate) fn clean(&self, id: &str) -> Result<(), Status> {
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
    pub(crate) fn stat(&self, build: &Build, path: &str) -> Option<pb::batch_stat_response::Stat> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clientd_store::{DiskLruOptions, LocalCas, SystemClock};
    use clientd_vfs::{CasView, LocalRouting};

    /// A service's state over `dir` (`cas/`, `outputs/`), as after a start of the daemon.
    fn shared(dir: &std::path::Path) -> Shared {
        let options = DiskLruOptions {
            max_bytes: 1 << 20,
            sync_writes: false,
        };
        let local =
            Arc::new(LocalCas::open(&dir.join("cas"), options, Arc::new(SystemClock)).unwrap());
        let cas = CasView::new(
            local.clone(),
            Box::new(LocalRouting),
            local.clone(),
            Duration::from_secs(5),
        );
        let scratch = Pool::open_empty(&dir.join("scratch"), 1 << 20).unwrap();
        Shared {
            vfs: Arc::new(Vfs::new(cas, scratch, 1000, 1000)),
            stores: local,
            dir: dir.join("outputs"),
            mount_outputs: dir.join("mnt/outputs"),
            pool_max_bytes: 1 << 20,
            max_tree_bytes: 1 << 20,
            bases: Mutex::new(HashMap::new()),
        }
    }

    /// Output base `id` with `entries` staged, and its build running.
    fn started(shared: &Shared, id: &str, entries: &[(&str, OutputEntry)]) -> Build {
        std::fs::create_dir_all(&shared.dir).unwrap();
        let (root, running) = shared.base(id).unwrap();
        assert!(running.is_none());
        let staged = entries
            .iter()
            .map(|(path, entry)| (path.to_string(), entry.clone()))
            .collect();
        for result in shared.vfs.stage(root, staged) {
            result.unwrap();
        }
        let build = Build {
            output_base_id: id.into(),
            build_id: format!("{id}-build"),
            instance_name: InstanceName::local(),
            function: DigestFunction::Sha256,
            aliases: vec![("/exec/bazel-out".into(), ".".into())],
            root,
        };
        shared.bases.lock().unwrap().get_mut(id).unwrap().running = Some(build.clone());
        build
    }

    fn tree() -> Vec<(&'static str, OutputEntry)> {
        vec![
            ("k8", OutputEntry::Directory),
            ("k8/bin", OutputEntry::Directory),
            ("k8/bin/link", OutputEntry::Symlink("../lib".into())),
            ("k8/lib", OutputEntry::Directory),
            (
                "k8/lib/abs",
                OutputEntry::Symlink("/exec/bazel-out/k8/bin".into()),
            ),
            ("loop", OutputEntry::Symlink("loop".into())),
        ]
    }

    #[test]
    fn a_saved_output_path_is_restored_and_an_old_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = shared(dir.path());
        let build = started(&first, "base", &tree());
        first.finalize(&build).unwrap();
        assert!(first.bases.lock().unwrap()["base"].running.is_none());
        drop(first);

        let second = shared(dir.path());
        second.restore_all(Duration::from_secs(3600)).unwrap();
        let root = {
            let bases = second.bases.lock().unwrap();
            let base = &bases["base"];
            assert_eq!(base.last.as_ref().unwrap().build_id, "base-build");
            base.root
        };
        assert_eq!(
            second.vfs.output_lstat(root, "k8/bin/link").unwrap(),
            Lstat::Found(OutputStat::Symlink("../lib".into()))
        );
        drop(second);

        // Not saved within the age allowed: removed, storage and all.
        let third = shared(dir.path());
        third.restore_all(Duration::ZERO).unwrap();
        assert!(third.bases.lock().unwrap().is_empty());
        assert!(!dir.path().join("outputs/base").exists());
    }

    #[test]
    fn a_saved_state_that_does_not_decode_is_removed_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("outputs/base");
        std::fs::create_dir_all(base.join("files")).unwrap();
        std::fs::write(base.join("state"), b"\xff\xff not a message").unwrap();
        let shared = shared(dir.path());
        let err = shared.restore("base").unwrap_err();
        assert!(matches!(err, OutputsError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("outputs/base/state"), "{err}");
        shared.restore_all(Duration::from_secs(3600)).unwrap();
        assert!(shared.bases.lock().unwrap().is_empty());
        assert!(!base.exists());
    }

    #[test]
    fn clean_forgets_the_tree_and_its_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let build = started(&shared, "base", &tree());
        shared.finalize(&build).unwrap();
        assert!(dir.path().join("outputs/base/state").exists());
        shared.clean("base").unwrap();
        assert!(shared.bases.lock().unwrap().is_empty());
        assert!(!dir.path().join("outputs/base").exists());
        assert!(shared.vfs.output_lstat(build.root, "k8").is_err());
        // Cleaning what is not there is not an error.
        shared.clean("base").unwrap();
    }

    #[test]
    fn stat_follows_symlinks_within_the_output_path_and_through_its_aliases() {
        use pb::batch_stat_response::stat::Type;
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let build = started(&shared, "base", &tree());
        let kind = |path: &str| shared.stat(&build, path).map(|s| s.r#type);
        // The last component is not followed (lstat); those before it are.
        assert!(matches!(kind("k8/bin/link"), Some(Some(Type::Symlink(_)))));
        // A relative target: k8/bin/link/abs is k8/lib/abs.
        assert!(matches!(
            kind("k8/bin/link/abs"),
            Some(Some(Type::Symlink(_)))
        ));
        // An absolute target through the alias: k8/lib/abs/link is k8/bin/link.
        assert!(matches!(
            kind("k8/lib/abs/link"),
            Some(Some(Type::Symlink(_)))
        ));
        assert!(matches!(
            kind("k8/lib/abs/link/abs"),
            Some(Some(Type::Symlink(_)))
        ));
        assert!(matches!(kind("k8/lib"), Some(Some(Type::Directory(_)))));
        // Missing, and a loop that never resolves: no stat.
        assert!(kind("k8/missing").is_none());
        assert!(kind("loop/x").is_none());
    }
}
