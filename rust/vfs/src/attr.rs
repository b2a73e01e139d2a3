//! What the file system reports about a node, independent of FUSE.

use std::time::{Duration, SystemTime};

/// An errno value, e.g. `Errno(libc::ENOENT)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const NOENT: Errno = Errno(libc::ENOENT);
    pub const INVAL: Errno = Errno(libc::EINVAL);
    pub const IO: Errno = Errno(libc::EIO);
    pub const ACCES: Errno = Errno(libc::EACCES);
    pub const PERM: Errno = Errno(libc::EPERM);
    pub const EXIST: Errno = Errno(libc::EEXIST);
    pub const NOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const ISDIR: Errno = Errno(libc::EISDIR);
    pub const NOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const XDEV: Errno = Errno(libc::EXDEV);
    pub const NOSPC: Errno = Errno(libc::ENOSPC);
    pub const ROFS: Errno = Errno(libc::EROFS);
    pub const BADF: Errno = Errno(libc::EBADF);
    pub const NAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);

    pub fn from_io(err: &std::io::Error) -> Errno {
        Errno(err.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type VfsResult<T> = Result<T, Errno>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    File,
    Symlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, e.g. 0o555.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// How long the kernel may cache this attribute and the entry that led to it.
    pub ttl: Duration,
}

/// Timestamps of immutable CAS nodes: 2000-01-01, as bb_clientd reports them.
pub const CAS_TIME: Duration = Duration::from_secs(946_684_800);

/// Link count reported for CAS files: they may be linked from anywhere, any number of times.
pub const CAS_NLINK: u32 = 9999;

/// Attribute and entry validity of immutable nodes (cas/, the fixed top-level directories).
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(300);

/// Attribute and entry validity of scratch/ nodes, which change.
pub const MUTABLE_TTL: Duration = Duration::from_secs(1);

/// Changes to apply in `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    /// A new owner (chown): only the daemon's own user and group can own anything here.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// File-system totals for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub name_max: u32,
}
