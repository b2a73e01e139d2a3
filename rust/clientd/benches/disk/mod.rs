//! The disk side of the benchmarks' ratios: reading and writing a plain file on the same disk,
//! and emptying the page cache so that a "cold" read reaches the disk.
#![allow(dead_code)] // each benchmark uses a different part of this module

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sequential reads and writes go in pieces of this size, as the daemon's do.
pub const CHUNK: usize = 1 << 20;

pub fn gib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / (1u64 << 30) as f64
}

/// Empties the page cache: all of it as root (`/proc/sys/vm/drop_caches`), else the file's
/// pages (posix_fadvise, which leaves some of them on some kernels: the run says which it used).
pub fn drop_cache(path: &Path) -> &'static str {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok() {
        return "drop_caches";
    }
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid open descriptor; advice only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    "posix_fadvise"
}

/// Reads a whole file sequentially in CHUNK-sized calls into one reused buffer.
pub fn read_all(path: &Path) -> (usize, Duration) {
    let start = Instant::now();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    (total, start.elapsed())
}
