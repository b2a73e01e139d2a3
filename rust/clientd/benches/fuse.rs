//! Benchmark of the file system, as ratios to the disk itself, measured in the same run:
//! - sequential read of a 1 GiB blob through `cas/`: first read with cold caches (the local CAS
//!   file's pages dropped, the FUSE file never read) vs. reading the same bytes from a cold file on
//!   the same disk; second read (warm) vs. a warm read of that file;
//! - `stat` of 100,000 distinct `cas/` paths: lookups per second.
//!
//! Run: `cargo bench -p clientd --bench fuse` (BENCH_BYTES overrides the 1 GiB, BENCH_STATS the
//! 100,000). Needs /dev/fuse and fusermount3.

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use clientd_digest::Digest;
use clientd_proto::google::bytestream as bs;
use common::*;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Empties the page cache: all of it as root (`/proc/sys/vm/drop_caches`), else the file's
/// pages (posix_fadvise, which leaves some of them on some kernels: the run says which it used).
fn drop_cache(path: &Path) -> &'static str {
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

/// Reads a whole file sequentially in 1 MiB calls.
fn read_all(path: &Path) -> (usize, Duration) {
    let start = Instant::now();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
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

fn gib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / (1u64 << 30) as f64
}

#[tokio::main]
async fn main() {
    let size = env_number("BENCH_BYTES", 1 << 30);
    let stats = env_number("BENCH_STATS", 100_000);
    let dir = tempfile::tempdir_in(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").into()),
    )
    .unwrap();
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let daemon = Daemon::start(&home, None, &["--mount", mnt.to_str().unwrap()]);
    wait_for_mount(&mnt);

    // One large blob, uploaded; the same bytes in a plain file on the same disk.
    let data = Bytes::from(pseudo_random(42, size));
    let digest = sha256(&data);
    let baseline = dir.path().join("baseline");
    std::fs::write(&baseline, &data).unwrap();
    let mut clients = daemon.clients().await;
    let name = write_name("local/bench", &digest);
    const CHUNK: usize = 1 << 20;
    let requests = (0..size)
        .step_by(CHUNK)
        .map(move |offset| bs::WriteRequest {
            resource_name: name.clone(),
            write_offset: offset as i64,
            finish_write: offset + CHUNK >= size,
            data: data.slice(offset..(offset + CHUNK).min(size)),
        });
    clients
        .bytestream
        .write(futures::stream::iter(requests))
        .await
        .unwrap();
    let hash = digest.hash_hex();
    let cas_file = home
        .join("cache/clientd/cas/entries/sha256")
        .join(&hash[..2])
        .join(digest.file_name());
    let through_fuse = mnt
        .join("cas/local/bench/blobs/sha256/file")
        .join(digest.file_name());

    let how = drop_cache(&baseline);
    let (n, disk_cold) = read_all(&baseline);
    assert_eq!(n, size);
    let (_, disk_warm) = read_all(&baseline);
    drop_cache(&cas_file);
    let (n, fuse_cold) = read_all(&through_fuse);
    assert_eq!(n, size);
    let (_, fuse_warm) = read_all(&through_fuse);

    // Metadata: distinct small blobs, each stat'ed once through cas/.
    let digests: Vec<Digest> = {
        let mut all = Vec::with_capacity(stats);
        let blobs: Vec<(Digest, Vec<u8>)> = (0..stats)
            .map(|i| format!("blob {i}").into_bytes())
            .map(|b| (sha256(&b), b))
            .collect();
        for batch in blobs.chunks(2000) {
            clients.batch_update("local/bench", batch).await;
            all.extend(batch.iter().map(|(d, _)| *d));
        }
        all
    };
    let files = mnt.join("cas/local/bench/blobs/sha256/file");
    let start = Instant::now();
    for digest in &digests {
        std::fs::metadata(files.join(digest.file_name())).unwrap();
    }
    let stat_time = start.elapsed();

    let mib = size >> 20;
    println!(
        "sequential read of {mib} MiB through cas/ vs. a file on the same disk (cold: {how}):"
    );
    println!(
        "  cold: disk {:.2} GiB/s, cas/ {:.2} GiB/s, ratio {:.2} (target >= 0.70)",
        gib_per_s(size, disk_cold),
        gib_per_s(size, fuse_cold),
        disk_cold.as_secs_f64() / fuse_cold.as_secs_f64()
    );
    println!(
        "  warm: disk {:.2} GiB/s, cas/ {:.2} GiB/s, ratio {:.2} (target >= 0.90)",
        gib_per_s(size, disk_warm),
        gib_per_s(size, fuse_warm),
        disk_warm.as_secs_f64() / fuse_warm.as_secs_f64()
    );
    println!(
        "stat of {stats} distinct cas/ paths: {:.0} per second ({:.1} us each)",
        stats as f64 / stat_time.as_secs_f64(),
        stat_time.as_secs_f64() * 1e6 / stats as f64
    );
    assert!(daemon.stop().success());
}
