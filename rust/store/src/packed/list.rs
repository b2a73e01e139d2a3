//! A segment's index entries in memory: its index file mapped read-only, so that a start takes
//! in a million entries without copying 48 MB into fresh pages (reading them cost a third of the
//! start-up), and the pages stay the kernel's to drop and read again; or, once entries are
//! appended (the segment being written, or a tail found past where its index file ended), bytes
//! of its own.
//!
//! Only this process writes index files, and never one it has mapped: a segment is appended to
//! only in the run that created it, and an index file that lagged is replaced by a new file
//! (rename), which leaves the mapped one as it was. Truncating a mapped index file from outside
//! would make reading it fault (SIGBUS), as for any mapped file.

use super::format::encode_entry;
use clientd_digest::Digest;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::Path;

pub(super) enum List {
    Owned(Vec<u8>),
    Mapped(Mapping),
}

/// A file's first `len` bytes, mapped read-only.
pub(super) struct Mapping {
    at: *const u8,
    mapped: usize,
    len: usize,
}

// The mapping is read-only and owned by one Mapping, which unmaps it when dropped.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `at` and `mapped` are what mmap returned, unmapped once.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.mapped) };
    }
}

impl Default for List {
    fn default() -> Self {
        List::Owned(Vec::new())
    }
}

impl List {
    /// The index file at `path`, mapped (its pages read in at once); empty if it is.
    pub fn open(path: &Path) -> io::Result<List> {
        let file = File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(List::default());
        }
        // SAFETY: a fresh read-only private mapping of an open file; see the module doc for why
        // the file is not truncated under it.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(List::Mapped(Mapping {
            at: at as *const u8,
            mapped: len,
            len,
        }))
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        match self {
            List::Owned(bytes) => bytes.truncate(len),
            List::Mapped(mapping) => mapping.len = mapping.len.min(len),
        }
    }

    /// Appends an entry (copying a mapped list into bytes of its own first).
    pub fn push_entry(&mut self, digest: &Digest, data_at: u64) {
        if let List::Mapped(_) = self {
            *self = List::Owned(self.to_vec());
        }
        let List::Owned(bytes) = self else {
            unreachable!("owned above")
        };
        encode_entry(digest, data_at, bytes);
    }
}

impl Deref for List {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            List::Owned(bytes) => bytes,
            // SAFETY: the mapping holds `mapped` >= `len` readable bytes until it is dropped.
            List::Mapped(mapping) => unsafe { std::slice::from_raw_parts(mapping.at, mapping.len) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientd_digest::DigestFunction;

    #[test]
    fn a_mapped_file_reads_as_its_bytes_and_is_copied_once_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.idx");
        let digest = DigestFunction::Sha256.digest_of(b"blob");
        let mut bytes = Vec::new();
        encode_entry(&digest, 44, &mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let mut list = List::open(&path).unwrap();
        assert!(matches!(list, List::Mapped(_)));
        assert_eq!(&list[..], &bytes[..]);
        list.truncate(10);
        assert_eq!(&list[..], &bytes[..10]);
        list.truncate(bytes.len());
        list.push_entry(&digest, 90);
        assert!(matches!(list, List::Owned(_)));
        assert_eq!(&list[..10], &bytes[..10]);
        assert_eq!(list.len(), 10 + bytes.len());
        std::fs::write(&path, b"").unwrap();
        assert!(List::open(&path).unwrap().is_empty());
    }
}
