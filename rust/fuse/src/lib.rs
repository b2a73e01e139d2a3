//! Mounts the [`clientd_vfs::Vfs`] with FUSE. The adapter is thin on purpose: every semantic
//! decision is in `clientd-vfs`; here calls are only translated, and those that may wait for the
//! network run on the tokio runtime so that a FUSE thread is never blocked by them.

mod adapter;
mod mount;

pub use mount::{is_mounted, mount, unmount_stale, Mount, MountError};
