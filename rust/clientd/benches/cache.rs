//! Benchmark of the local cache over the UNIX socket, as ratios to the disk itself, measured in
//! the same run (these machines are shared and noisy):
//! - ByteStream upload and download of 1 GiB vs. writing (with fsync, as the CAS does) and reading
//!   the same bytes to and from a file on the same disk. Reads are timed cold (page cache emptied:
//!   the disk's throughput, the target) and warm (page cache to memory, for information). The
//!   client uses HTTP/2's default 16 KiB frames for what it receives, as grpc-java (Bazel) and
//!   grpc-go do.
//!
//! Small blobs (BatchUpdateBlobs, BatchReadBlobs, FindMissingBlobs) are `benches/small_blobs.rs`.
//!
//! Run: `cargo bench -p clientd --bench cache` (BENCH_BYTES overrides the 1 GiB).

#[path = "../tests/common/mod.rs"]
mod common;
mod disk;

use bytes::Bytes;
use clientd_digest::Digest;
use common::*;
use disk::{drop_cache, gib_per_s, read_all, CHUNK};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds of the large-blob measurements. Each round uploads a different blob (its first chunk
/// differs). Every write and cold read starts from an emptied page cache, and the disk and
/// clientd alternate which goes first: on these virtual machines a gigabyte's write runs up to
/// four times slower or faster depending on what the memory was last used for, so a fixed order
/// would charge that to one side. A first round, not counted, warms both sides up.
const ROUNDS: usize = 4;

/// The blob of one round, in the chunks both sides write.
fn round_chunks(data: &Bytes, round: usize) -> Vec<Bytes> {
    let mut chunks = chunked(data, CHUNK);
    let mut first = chunks[0].to_vec();
    first[0] = first[0].wrapping_add(round as u8 + 1);
    chunks[0] = Bytes::from(first);
    chunks
}

/// Times of one side's round: write (with fsync), cold read (from the disk), warm read.
struct Times {
    write: Duration,
    cold: Duration,
    warm: Duration,
}

/// Writing the chunks to a file and syncing it, as the CAS does; then reading it back.
fn disk_round(dir: &Path, chunks: &[Bytes]) -> Times {
    let file = dir.join("baseline");
    drop_cache(dir);
    let start = Instant::now();
    let mut f = std::fs::File::create(&file).unwrap();
    for chunk in chunks {
        f.write_all(chunk).unwrap();
    }
    f.sync_data().unwrap();
    let write = start.elapsed();
    drop(f);
    drop_cache(&file);
    let (_, cold) = read_all(&file);
    let (_, warm) = read_all(&file);
    std::fs::remove_file(&file).unwrap();
    Times { write, cold, warm }
}

/// A ByteStream upload of the chunks, then downloads of the blob with its file's pages dropped
/// and kept.
async fn clientd_round(c: &mut Clients, home: &Path, chunks: &[Bytes]) -> Times {
    let digest = sha256_of_chunks(chunks);
    drop_cache(home);
    let start = Instant::now();
    c.upload_chunks("local/bench", &digest, chunks).await;
    let write = start.elapsed();
    drop_cache(&cas_file(home, &digest));
    let cold = timed_download(c, &digest).await;
    let warm = timed_download(c, &digest).await;
    Times { write, cold, warm }
}

async fn timed_download(c: &mut Clients, digest: &Digest) -> Duration {
    let start = Instant::now();
    assert_eq!(c.download("local/bench", digest).await, digest.size());
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let size: usize = env_number("BENCH_BYTES", 1 << 30);
    let dir = bench_dir();
    let data = Bytes::from(pseudo_random(42, size));
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home, None, &[]);
    let mut c = daemon.clients().await;

    println!(
        "bytes: {size}; page cache emptied by {}",
        drop_cache(dir.path())
    );
    let mut totals = Vec::new();
    for round in 0..=ROUNDS {
        let chunks = round_chunks(&data, round);
        let disk_first = round % 2 == 0;
        let (disk, clientd) = if disk_first {
            let disk = disk_round(dir.path(), &chunks);
            (disk, clientd_round(&mut c, &home, &chunks).await)
        } else {
            let clientd = clientd_round(&mut c, &home, &chunks).await;
            (disk_round(dir.path(), &chunks), clientd)
        };
        let rate = |t: Duration| gib_per_s(size, t);
        println!(
            "{} {round} ({} first), GiB/s disk | clientd: write+fsync {:.2} | upload {:.2}, \
             cold read {:.2} | download {:.2}, warm read {:.2} | download {:.2}",
            if round == 0 { "warm-up" } else { "round" },
            if disk_first { "disk" } else { "clientd" },
            rate(disk.write),
            rate(clientd.write),
            rate(disk.cold),
            rate(clientd.cold),
            rate(disk.warm),
            rate(clientd.warm),
        );
        if round > 0 {
            totals.push((disk, clientd));
        }
    }

    // Ratios of the total times: each side's throughput over all rounds, both orders included.
    let ratio = |time: fn(&Times) -> Duration| {
        let total = |side: fn(&(Times, Times)) -> &Times| {
            totals
                .iter()
                .map(|t| time(side(t)).as_secs_f64())
                .sum::<f64>()
        };
        total(|t| &t.0) / total(|t| &t.1)
    };
    println!("over {ROUNDS} rounds, clientd's throughput / the disk's:");
    println!(
        "  upload / write+fsync: {:.2} (target >= 0.5)",
        ratio(|t| t.write)
    );
    println!(
        "  download / cold read (from the disk): {:.2} (target >= 0.5)",
        ratio(|t| t.cold)
    );
    println!(
        "  download / warm read (page cache to memory): {:.2}",
        ratio(|t| t.warm)
    );
}
