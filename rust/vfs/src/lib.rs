//! The file system clientd mounts (at `~/clientd` by default), as a plain inode tree:
//!
//! - `cas/`: every blob of every instance name, lazily, as files, executables, directories
//!   (REv2 Directory), trees (REv2 Tree) and runnable command scripts (REv2 Command);
//! - `scratch/`: a writable directory whose files live in a bounded pool, and which accepts hard
//!   links from `cas/` (so `cp -lr` of an input root costs neither time nor space);
//! - `outputs/`: empty until the Output Service stages bazel-out trees there.
//!
//! [`Vfs`] has one method per file-system operation; the FUSE adapter (`clientd-fuse`) only
//! translates calls to it.

mod attr;
mod cas;
mod command;
mod fs;
mod locked;
mod outputs;
mod scratch;

pub use attr::{Attr, Errno, FileKind, SetAttr, Statfs, VfsResult};
pub use cas::{CasView, DigestFunctions, LocalRouting, Routing};
pub use command::script;
pub use fs::{Invalidate, Listing, Vfs, CAS_ROOT, OUTPUTS_ROOT, ROOT, SCRATCH_ROOT};
pub use outputs::{Lstat, OutputEntry, OutputStat};
pub use scratch::Pool;
