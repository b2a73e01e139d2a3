//! Opening and reading files only when the kernel can do it without waiting for the disk, so a
//! small read is served on the runtime's thread. Handing it to a blocking thread costs two thread
//! switches, more than the read itself when the bytes are in the page cache. When these fail, the
//! caller asks a blocking thread, which may wait.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;

/// Opens `path` read-only if every step of its lookup is in the kernel's caches (`openat2` with
/// `RESOLVE_CACHED`, Linux 5.12 and later). `WouldBlock` when the lookup would have to read a
/// directory from the disk (or the kernel is older); `NotFound` when the path is known absent.
pub fn open_cached(path: &Path) -> io::Result<File> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: a NUL-terminated path and an open_how of the size passed, both outliving the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                io::Error::new(io::ErrorKind::WouldBlock, e)
            }
            _ => e,
        });
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// `len` bytes from `offset` of `file` if they are all in the page cache; None (having waited
/// for nothing) if they are not, or the kernel cannot tell.
pub fn read_cached(file: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; the descriptor is open.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    (n >= 0 && n as usize == buf.len()).then_some(buf)
}

/// Asks the kernel to drop `path`'s pages from the page cache (the file is synced or clean, so
/// it can), for tests of what happens when the bytes are not there.
#[cfg(test)]
pub(crate) fn drop_cached(path: &Path) {
    let file = File::open(path).unwrap();
    // SAFETY: advice on an open descriptor.
    let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_just_written_opens_and_reads_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello, page cache").unwrap();
        let file = open_cached(&path).expect("just created: its lookup is cached");
        assert_eq!(read_cached(&file, 7, 5).as_deref(), Some(&b"page "[..]));
        assert_eq!(read_cached(&file, 0, 100), None, "short read");
        let absent = open_cached(&dir.path().join("absent")).unwrap_err();
        assert!(
            matches!(
                absent.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::WouldBlock
            ),
            "{absent:?}"
        );
    }
}
