//! Writable trees: `scratch/`, and the output paths under `outputs/`. Directories and symlinks
//! live in memory; regular files are numbered files in a pool directory on disk, bounded in total
//! size. Entries may also be cas/ nodes (hard links, staged outputs), which take no pool space.
//! scratch/'s pool is emptied at every start; an output path's pool persists with its saved state.

use crate::attr::{Errno, VfsResult};
use clientd_digest::Digest;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
        /// Where regular files created in this directory are stored.
        pool: Arc<Pool>,
    },
    /// A regular file; its link count is the table's count of directory entries naming it.
    File {
        file: Arc<PoolFile>,
        meta: Meta,
        /// The content's digest once computed, until the file changes.
        digest: Option<Digest>,
    },
    Symlink {
        target: OsString,
        meta: Meta,
    },
}

/// One regular file's storage in a pool, by number. No descriptor is kept open: a tree may have
/// a million files. The pool file is removed when the node is unlinked for good ([`remove`]).
///
/// Its length is kept here, not asked of the disk: `getattr` reads it under the inode table's
/// lock, which every file system call takes, so it must not cost a system call. Every change of
/// length goes through [`OpenFile`], which holds `len` while it writes.
///
/// [`remove`]: PoolFile::remove
pub struct PoolFile {
    pub id: u64,
    pub pool: Arc<Pool>,
    /// The file's length. Read-locked by writes within it (they run in parallel), write-locked
    /// by writes that extend the file and by truncation, so it always matches the disk.
    len: RwLock<u64>,
}

impl PoolFile {
    fn path(&self) -> PathBuf {
        self.pool.dir.join(self.id.to_string())
    }

    pub fn open(self: &Arc<Self>, write: bool) -> VfsResult<OpenFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.path())
            .map_err(|e| Errno::from_io(&e))?;
        Ok(OpenFile {
            file,
            node: self.clone(),
        })
    }

    pub fn size(&self) -> u64 {
        *self.len.read().unwrap()
    }

    /// Deletes the storage and returns its space to the pool. Open descriptors keep working.
    pub fn remove(&self) {
        self.pool.used.fetch_sub(self.size(), Ordering::SeqCst);
        let _ = std::fs::remove_file(self.path());
    }
}

/// An open pool file.
pub struct OpenFile {
    pub file: File,
    node: Arc<PoolFile>,
}

impl OpenFile {
    pub fn node(&self) -> &Arc<PoolFile> {
        &self.node
    }

    /// Resizes the file, within the pool's bound.
    pub fn set_len(&self, size: u64) -> VfsResult<()> {
        let mut len = self.node.len.write().unwrap();
        self.node.pool.reserve(*len, size)?;
        if let Err(e) = self.file.set_len(size) {
            self.settle(&mut len, size);
            return Err(Errno::from_io(&e));
        }
        *len = size;
        Ok(())
    }

    /// Writes at `offset`, within the pool's bound.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> VfsResult<u32> {
        use std::os::unix::fs::FileExt;
        let end = offset + data.len() as u64;
        let write = || {
            self.file
                .write_all_at(data, offset)
                .map_err(|e| Errno::from_io(&e))
        };
        {
            let len = self.node.len.read().unwrap();
            if end <= *len {
                write()?;
                return Ok(data.len() as u32);
            }
        }
        let mut len = self.node.len.write().unwrap();
        let new = (*len).max(end);
        self.node.pool.reserve(*len, new)?;
        if let Err(e) = write() {
            self.settle(&mut len, new);
            return Err(e);
        }
        *len = new;
        Ok(data.len() as u32)
    }

    /// After a failed change of length, for which `reserved` bytes were reserved: counts what
    /// the file really holds (a write may have been partly done), or keeps the reservation if
    /// even that cannot be told.
    fn settle(&self, len: &mut u64, reserved: u64) {
        let real = self.file.metadata().map_or(reserved, |m| m.len());
        let _ = self.node.pool.reserve(reserved, real);
        *len = real;
    }

    pub fn read_at(&self, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        read_at(&self.file, offset, size)
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

/// A directory of numbered files and the bound on their total size.
pub struct Pool {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    next: AtomicU64,
}

impl Pool {
    /// Empties (or creates) `dir`: for scratch/, which starts empty on every start.
    pub fn open_empty(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Pool>> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Pool::open_persistent(dir, max_bytes)
    }

    /// Opens (or creates) `dir`, keeping its files: for output paths, which survive restarts.
    /// Files no saved state refers to are removed by [`Pool::retain`].
    pub fn open_persistent(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Pool>> {
        std::fs::create_dir_all(dir)?;
        let (mut used, mut next) = (0, 0);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                used += entry.metadata()?.len();
                next = next.max(id + 1);
            }
        }
        Ok(Arc::new(Pool {
            dir: dir.to_path_buf(),
            max_bytes,
            used: AtomicU64::new(used),
            next: AtomicU64::new(next),
        }))
    }

    /// A new empty file, open for reading and writing.
    pub fn create(self: &Arc<Self>) -> VfsResult<OpenFile> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let node = Arc::new(PoolFile {
            id,
            pool: self.clone(),
            len: RwLock::new(0),
        });
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(node.path())
            .map_err(|e| Errno::from_io(&e))?;
        Ok(OpenFile { file, node })
    }

    /// An existing file of this pool, as saved state refers to it.
    pub fn adopt(self: &Arc<Self>, id: u64) -> Option<Arc<PoolFile>> {
        let path = self.dir.join(id.to_string());
        let len = std::fs::metadata(path).ok().filter(|m| m.is_file())?.len();
        Some(Arc::new(PoolFile {
            id,
            pool: self.clone(),
            len: RwLock::new(len),
        }))
    }

    /// Removes every file whose number `keep` rejects (left over from work never saved).
    pub fn retain(&self, keep: impl Fn(u64) -> bool) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            if !id.is_some_and(&keep) {
                self.used
                    .fetch_sub(entry.metadata()?.len().min(self.used()), Ordering::SeqCst);
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes the pool's directory and everything in it.
    pub fn destroy(&self) -> std::io::Result<()> {
        self.used.store(0, Ordering::SeqCst);
        std::fs::remove_dir_all(&self.dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk(file: &PoolFile) -> u64 {
        std::fs::metadata(file.path()).unwrap().len()
    }

    #[test]
    fn lengths_are_kept_in_step_with_the_disk_and_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open_empty(dir.path(), 100).unwrap();
        let open = pool.create().unwrap();
        let file = open.node().clone();
        open.write_at(10, b"0123456789").unwrap();
        open.write_at(0, b"abc").unwrap();
        assert_eq!((file.size(), on_disk(&file), pool.used()), (20, 20, 20));
        assert_eq!(open.write_at(95, b"0123456789"), Err(Errno::NOSPC));
        assert_eq!(open.set_len(101), Err(Errno::NOSPC));
        assert_eq!((file.size(), on_disk(&file), pool.used()), (20, 20, 20));
        open.set_len(5).unwrap();
        assert_eq!((file.size(), on_disk(&file), pool.used()), (5, 5, 5));
        file.remove();
        assert_eq!(pool.used(), 0);
        let adopted = Pool::open_persistent(dir.path(), 100).unwrap();
        assert_eq!(adopted.used(), 0);
    }

    /// Writers of one file, some within it and some extending it, in parallel: the length and
    /// the pool's count end as the disk has it.
    #[test]
    fn parallel_writers_leave_length_and_pool_as_the_disk_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open_empty(dir.path(), 1 << 20).unwrap();
        let open = Arc::new(pool.create().unwrap());
        std::thread::scope(|scope| {
            for writer in 0..4u64 {
                let open = open.clone();
                scope.spawn(move || {
                    for i in 0..200u64 {
                        open.write_at((i * 4 + writer) * 100, &[writer as u8; 150])
                            .unwrap();
                        if i % 50 == 49 {
                            open.set_len(i * 300).unwrap();
                        }
                    }
                });
            }
        });
        let file = open.node();
        assert_eq!(file.size(), on_disk(file));
        assert_eq!(pool.used(), on_disk(file));
        let adopted = Pool::open_persistent(dir.path(), 1 << 20).unwrap();
        assert_eq!(adopted.adopt(file.id).unwrap().size(), on_disk(file));
    }
}
