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
mod disk;

use bytes::Bytes;
use clientd_digest::Digest;
use common::*;
use disk::{drop_cache, gib_per_s, read_all};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let size = env_number("BENCH_BYTES", 1 << 30);
    let stats = env_number("BENCH_STATS", 100_000);
    let dir = bench_dir();
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
    clients
        .upload_chunks("local/bench", &digest, &chunked(&data, 1 << 20))
        .await;
    let cas_file = cas_file(&home, &digest);
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
