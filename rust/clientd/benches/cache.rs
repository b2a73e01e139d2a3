//! Benchmark of the local cache over the UNIX socket, as ratios to the disk itself, measured in
//! the same run (these machines are shared and noisy):
//! - ByteStream upload and download of 1 GiB vs. writing (with fsync, as the CAS does) and reading
//!   the same bytes to and from a file on the same disk. Reads are timed cold (page cache emptied:
//!   the disk's throughput, the target) and warm (page cache to memory, for information). The
//!   client uses HTTP/2's default 16 KiB frames for what it receives, as grpc-java (Bazel) and
//!   grpc-go do.
//!
//! - A build's outputs uploaded as Bazel 4.2.3 sends them: ByteStream with one WriteRequest per
//!   16 KiB, two uploads at a time (Bazel's two job slots on 2 cores), blobs from 16 KiB to 4 MiB
//!   spread as in `tests/bench/warm_build.sh`'s workspace; vs. the disk storing the same blobs as
//!   the CAS does (a new file each, written in 16 KiB pieces, fsync, rename), two at a time. Also
//!   the daemon's CPU time per MiB and its threads' context switches per blob: what handing the
//!   bytes from the runtime to blocking threads costs.
//!
//! Small blobs (BatchUpdateBlobs, BatchReadBlobs, FindMissingBlobs) are `benches/small_blobs.rs`.
//!
//! Run: `cargo bench -p clientd --bench cache` (BENCH_BYTES overrides the 1 GiB, BENCH_OUTPUTS
//! the 200 outputs).

#[path = "../tests/common/mod.rs"]
mod common;
mod disk;

use bytes::Bytes;
use clientd_digest::Digest;
use common::*;
use disk::{drop_cache, gib_per_s, read_all, CHUNK};
use futures::StreamExt;
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
    bazel_uploads(&daemon, dir.path()).await;

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

/// The request size of Bazel's ByteStream uploads (its Chunker's fixed default).
const BAZEL_CHUNK: usize = 16 << 10;

/// Rounds of the Bazel-shaped uploads, after one not counted.
const UPLOAD_ROUNDS: usize = 3;

/// One round's outputs: `n` blobs log-spaced from 16 KiB to 4 MiB, different in every round.
fn outputs(n: usize, round: usize) -> Vec<(Digest, Vec<Bytes>)> {
    (0..n)
        .map(|i| {
            let size = (16384.0 * 256f64.powf(i as f64 / (n - 1).max(1) as f64)) as usize;
            let data = Bytes::from(pseudo_random((round * n + i) as u64 + 1, size));
            (sha256(&data), chunked(&data, BAZEL_CHUNK))
        })
        .collect()
}

/// Stores the blobs as the CAS does, on two threads: a new file each, written a chunk at a time,
/// synced, renamed into place.
fn disk_outputs(dir: &Path, blobs: &[(Digest, Vec<Bytes>)]) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (half, part) in blobs.chunks(blobs.len().div_ceil(2)).enumerate() {
            scope.spawn(move || {
                for (i, (_, chunks)) in part.iter().enumerate() {
                    let temp = dir.join(format!("temp-{half}"));
                    let mut f = std::fs::File::create(&temp).unwrap();
                    for chunk in chunks {
                        f.write_all(chunk).unwrap();
                    }
                    f.sync_data().unwrap();
                    std::fs::rename(&temp, dir.join(format!("blob-{half}-{i}"))).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

/// The daemon's CPU time (user and system, all threads) and its threads' context switches so
/// far. Switches of threads that have exited are not counted: none do during a round (tokio keeps
/// idle blocking threads for 10 s).
fn daemon_usage(pid: i32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // exited meanwhile
        };
        switches += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    (Duration::from_millis(ticks * 1000 / hz), switches)
}

async fn bazel_uploads(daemon: &Daemon, dir: &Path) {
    let n = env_number("BENCH_OUTPUTS", 200);
    let disk_dir = dir.join("outputs");
    // One channel, as Bazel's: its uploads share one connection.
    let client = daemon.clients().await;
    let (mut disk_total, mut clientd_total, mut mib) = (Duration::ZERO, Duration::ZERO, 0.0);
    let (mut cpu, mut switches) = (Duration::ZERO, 0);
    println!(
        "Bazel's uploads: {n} outputs of 16 KiB to 4 MiB in 16 KiB WriteRequests, 2 at a time"
    );
    for round in 0..=UPLOAD_ROUNDS {
        let blobs = outputs(n, round);
        let bytes: usize = blobs.iter().map(|(d, _)| d.size() as usize).sum();
        std::fs::create_dir_all(&disk_dir).unwrap();
        let disk_first = round % 2 == 0;
        let mut disk = Duration::ZERO;
        if disk_first {
            disk = disk_outputs(&disk_dir, &blobs);
        }
        let before = daemon_usage(daemon.pid());
        let start = Instant::now();
        futures::stream::iter(blobs.iter())
            .map(|(digest, chunks)| {
                let mut c = client.clone();
                async move { c.upload_chunks("local/bench", digest, chunks).await }
            })
            .buffer_unordered(2)
            .collect::<Vec<()>>()
            .await;
        let clientd = start.elapsed();
        let after = daemon_usage(daemon.pid());
        if !disk_first {
            disk = disk_outputs(&disk_dir, &blobs);
        }
        std::fs::remove_dir_all(&disk_dir).unwrap();
        println!(
            "{} {round}: {} MiB; disk {:.3} s, clientd {:.3} s; daemon CPU {:.2} ms/MiB, {:.1} switches/blob",
            if round == 0 { "warm-up" } else { "round" },
            bytes >> 20,
            disk.as_secs_f64(),
            clientd.as_secs_f64(),
            (after.0 - before.0).as_secs_f64() * 1000.0 / (bytes as f64 / (1 << 20) as f64),
            (after.1 - before.1) as f64 / n as f64,
        );
        if round > 0 {
            disk_total += disk;
            clientd_total += clientd;
            mib += bytes as f64 / (1 << 20) as f64;
            cpu += after.0 - before.0;
            switches += after.1 - before.1;
        }
    }
    println!(
        "over {UPLOAD_ROUNDS} rounds: clientd's time / the disk's {:.2}; daemon CPU {:.2} ms/MiB, {:.1} switches/blob",
        clientd_total.as_secs_f64() / disk_total.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / mib,
        switches as f64 / (UPLOAD_ROUNDS * n) as f64,
    );
}
