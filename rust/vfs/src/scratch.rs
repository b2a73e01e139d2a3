//! `scratch/`: an ordinary writable directory tree. Directories and symlinks live in memory;
//! regular files are files in a pool directory on disk, bounded in total size. Entries may also be
//! hard links to cas/ nodes, which take no pool space. Nothing survives a restart: the pool is
//! emptied when the file system starts.

use crate::attr::{Errno, VfsResult};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Ownership, permissions and times of a scratch node.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    pub fn new(perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Meta {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    pub fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

pub enum ScratchNode {
    Dir {
        /// Child names to inode numbers (scratch nodes or cas/ nodes linked in).
        children: BTreeMap<OsString, u64>,
        parent: u64,
        meta: Meta,
    },
    /// A regular file; its link count is the table's count of directory entries naming it.
    File {
        file: Arc<PoolFile>,
        meta: Meta,
    },
    Symlink {
        target: OsString,
        meta: Meta,
    },
}

/// One regular file's storage; the pool file is removed when the last reference goes.
pub struct PoolFile {
    pub file: File,
    path: PathBuf,
    pool: Arc<Pool>,
}

impl PoolFile {
    pub fn size(&self) -> VfsResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Errno::from_io(&e))
    }

    /// Resizes the file, within the pool's bound.
    pub fn set_len(&self, size: u64) -> VfsResult<()> {
        let old = self.size()?;
        self.pool.reserve(old, size)?;
        self.file.set_len(size).map_err(|e| {
            self.pool.reserve(size, old).ok();
            Errno::from_io(&e)
        })
    }

    /// Writes at `offset`, within the pool's bound.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> VfsResult<u32> {
        use std::os::unix::fs::FileExt;
        let old = self.size()?;
        let new = old.max(offset + data.len() as u64);
        self.pool.reserve(old, new)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Errno::from_io(&e))?;
        Ok(data.len() as u32)
    }

    pub fn read_at(&self, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        read_at(&self.file, offset, size)
    }
}

impl Drop for PoolFile {
    fn drop(&mut self) {
        if let Ok(size) = self.size() {
            self.pool.used.fetch_sub(size, Ordering::SeqCst);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads up to `size` bytes at `offset`, fewer only at the end of the file.
pub fn read_at(file: &File, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Errno::from_io(&e)),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// The directory holding scratch files, and the bound on their total size.
pub struct Pool {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    next: AtomicU64,
}

impl Pool {
    /// Empties (or creates) `dir`: scratch/ starts empty on every start.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Pool>> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Pool {
            dir: dir.to_path_buf(),
            max_bytes,
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
        }))
    }

    pub fn create(self: &Arc<Self>) -> VfsResult<Arc<PoolFile>> {
        let path = self
            .dir
            .join(self.next.fetch_add(1, Ordering::SeqCst).to_string());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Errno::from_io(&e))?;
        Ok(Arc::new(PoolFile {
            file,
            path,
            pool: self.clone(),
        }))
    }

    /// Accounts for a file growing (or shrinking) from `old` to `new` bytes; ENOSPC beyond the bound.
    fn reserve(&self, old: u64, new: u64) -> VfsResult<()> {
        if new <= old {
            self.used.fetch_sub(old - new, Ordering::SeqCst);
            return Ok(());
        }
        let grow = new - old;
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + grow <= self.max_bytes).then_some(used + grow)
            })
            .map(|_| ())
            .map_err(|_| Errno::NOSPC)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}
