//! Mounting and unmounting, including the stale mount a crashed daemon leaves behind.

use crate::adapter::Adapter;
use clientd_vfs::{Invalidate, Vfs};
use fuser::{BackgroundSession, Config, MountOption};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// FUSE threads: calls that wait for the network run on the runtime, so a few suffice.
const FUSE_THREADS: usize = 4;

/// A mounted file system; dropping it unmounts.
pub struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session);
            tracing::info!("unmounted {}", self.path.display());
        }
    }
}

/// The kernel's dentry cache, for names the Output Service changes.
struct KernelCache(fuser::Notifier);

impl Invalidate for KernelCache {
    fn entry(&self, parent: u64, name: &std::ffi::OsStr) {
        // ENOENT: the kernel did not have the name cached, which is fine.
        let _ = self.0.inval_entry(fuser::INodeNo(parent), name);
    }
}

/// Whether `path` is a mount point of a clientd file system (live or stale).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (_, point, kind) = (fields.next(), fields.next(), fields.next());
        point == Some(wanted.as_str()) && kind.is_some_and(|k| k.starts_with("fuse"))
    })
}

/// Unmounts (lazily) a FUSE file system at `path`: the stale mount a daemon that did not exit
/// cleanly leaves behind. Whether there was one.
pub fn unmount_stale(path: &Path) -> Result<bool, String> {
    if !is_mounted(path) {
        return Ok(false);
    }
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(true),
        _ => Err(format!(
            "{} is mounted and `fusermount3 -u -z` could not unmount it ({status:?})",
            path.display()
        )),
    }
}

/// Mounts `vfs` at `path`, creating the directory and first removing a stale mount left there by
/// a daemon that did not exit cleanly.
pub fn mount(vfs: Arc<Vfs>, path: &Path, runtime: tokio::runtime::Handle) -> Result<Mount, String> {
    if unmount_stale(path)? {
        tracing::warn!(
            "{} was still mounted (a daemon crashed?); unmounted it",
            path.display()
        );
    }
    std::fs::create_dir_all(path)
        .map_err(|e| format!("cannot create mount point {}: {e}", path.display()))?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("clientd".into()),
        MountOption::Subtype("clientd".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.n_threads = Some(FUSE_THREADS);
    let kernel_cache_owner = vfs.clone();
    let session = fuser::spawn_mount(
        Adapter {
            vfs,
            runtime,
            passthrough: Default::default(),
        },
        path,
        &config,
    )
    .map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (is fusermount3 installed? `apt-get install fuse3`)"
        } else {
            ""
        };
        format!(
            "cannot mount the file system at {}: {e}{hint}; run with --no-mount to do without it",
            path.display()
        )
    })?;
    kernel_cache_owner.set_invalidator(Box::new(KernelCache(session.notifier())));
    tracing::info!("mounted the file system at {}", path.display());
    Ok(Mount {
        session: Some(session),
        path: path.to_path_buf(),
    })
}
