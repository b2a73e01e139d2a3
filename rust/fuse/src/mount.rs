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

/// Why the file system cannot be mounted, or a stale mount removed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{} is mounted and `fusermount3 -u -z` could not unmount it ({status})", path.display())]
    Stale { path: PathBuf, status: String },
    #[error("cannot create mount point {}: {source}", path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot mount the file system at {}: {source}{}; run with --no-mount to do without it",
        path.display(),
        if source.kind() == std::io::ErrorKind::NotFound {
            " (is fusermount3 installed? `apt-get install fuse3`)"
        } else {
            ""
        }
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Unmounts (lazily) a FUSE file system at `path`: the stale mount a daemon that did not exit
/// cleanly leaves behind. Whether there was one.
pub fn unmount_stale(path: &Path) -> Result<bool, MountError> {
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
        _ => Err(MountError::Stale {
            path: path.to_path_buf(),
            status: format!("{status:?}"),
        }),
    }
}

/// Mounts `vfs` at `path`, creating the directory and first removing a stale mount left there by
/// a daemon that did not exit cleanly.
pub fn mount(
    vfs: Arc<Vfs>,
    path: &Path,
    runtime: tokio::runtime::Handle,
) -> Result<Mount, MountError> {
    if unmount_stale(path)? {
        tracing::warn!(
            "{} was still mounted (a daemon crashed?); unmounted it",
            path.display()
        );
    }
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
        path: path.to_path_buf(),
        source,
    })?;
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
    .map_err(|source| MountError::Mount {
        path: path.to_path_buf(),
        source,
    })?;
    kernel_cache_owner.set_invalidator(Box::new(KernelCache(session.notifier())));
    tracing::info!("mounted the file system at {}", path.display());
    Ok(Mount {
        session: Some(session),
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_fusermount_is_named_with_the_way_out() {
        let missing = MountError::Mount {
            path: "/home/u/clientd".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = missing.to_string();
        assert!(
            text.starts_with("cannot mount the file system at /home/u/clientd: "),
            "{text}"
        );
        assert!(text.contains("apt-get install fuse3"), "{text}");
        assert!(
            text.ends_with("run with --no-mount to do without it"),
            "{text}"
        );
        let denied = MountError::Mount {
            path: "/home/u/clientd".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!denied.to_string().contains("fuse3"), "{denied}");
    }
}
