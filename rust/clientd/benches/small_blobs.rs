//! Benchmark of small blobs in the local cache over the UNIX socket, each figure next to a
//! baseline measured in the same run (these machines are shared and noisy):
//! - BatchUpdateBlobs of 20,000 distinct blobs of 100 B to 4 KiB, 1,000 per call, against writing
//!   the same blobs to files with an fsync each (what the CAS promises: every acknowledged blob
//!   survives power loss), file by file and with one writer per core;
//! - the disk space the cache then occupies (allocated blocks, as `du` counts them), against the
//!   blobs' bytes;
//! - BatchReadBlobs of 1,000 of them in one call, against opening and reading the same blobs
//!   written as a file each (warm: both from the page cache), alternating which goes first;
//! - FindMissingBlobs for 10,000 digests, half of them present;
//! - one call at a time, as each of Bazel's job slots makes them on a cache hit: GetActionResult
//!   of a stored result, then ByteStream reads of a 100-byte output (packed) and a 64 KiB one (a
//!   file of its own) (medians of 1,000): the round trip of a call through this client and the
//!   daemon, to set against the time Bazel's profile gives its own calls ("check cache hit",
//!   "download outputs");
//! - start-up with BENCH_STARTUP_BLOBS (100,000) blobs in the cache, once packed (as small blobs
//!   are stored) and once as a file each (as earlier versions stored them): the time from
//!   starting the daemon to its answers for a blob it has and for one it lacks, and to
//!   FindMissingBlobs reporting every blob present;
//!   and the memory the daemon then occupies beyond that of one with an empty cache.
//!
//! Run: `cargo bench -p clientd --bench small_blobs` (BENCH_DIR: where the cache lives).

#[path = "../tests/common/mod.rs"]
mod common;

use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROUNDS: usize = 4;
const BLOBS_PER_ROUND: usize = 20_000;
const PER_CALL: usize = 1_000;

/// Blobs of round `round`: distinct across rounds, 100 B to 4 KiB.
fn blobs(round: usize) -> Vec<(Digest, Vec<u8>)> {
    let data = pseudo_random(round as u64 + 7, BLOBS_PER_ROUND * 4096);
    (0..BLOBS_PER_ROUND)
        .map(|i| {
            let len = 100 + (i * 7919) % 3997;
            let mut blob = data[i * 4096..i * 4096 + len].to_vec();
            blob[..8].copy_from_slice(&((round * BLOBS_PER_ROUND + i) as u64).to_le_bytes());
            (sha256(&blob), blob)
        })
        .collect()
}

/// Writes each blob to its own file and fsyncs it, from `writers` threads.
fn disk_writes(dir: &Path, blobs: &[(Digest, Vec<u8>)], writers: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in blobs.chunks(blobs.len().div_ceil(writers)) {
            s.spawn(move || {
                for (digest, data) in part {
                    let mut f = std::fs::File::create(dir.join(digest.hash_hex())).unwrap();
                    f.write_all(data).unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
    });
    start.elapsed()
}

async fn upload(c: &mut Clients, blobs: &[(Digest, Vec<u8>)]) -> Duration {
    let start = Instant::now();
    for call in blobs.chunks(PER_CALL) {
        let codes = c.batch_update("local/bench", call).await;
        assert!(codes.iter().all(|&code| code == 0), "{codes:?}");
    }
    start.elapsed()
}

async fn batch_read(c: &mut Clients, digests: &[Digest]) -> Duration {
    let request = re::BatchReadBlobsRequest {
        instance_name: "local/bench".into(),
        digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let start = Instant::now();
    let response = c.cas.batch_read_blobs(request).await.unwrap().into_inner();
    let elapsed = start.elapsed();
    assert_eq!(response.responses.len(), digests.len());
    assert!(response
        .responses
        .iter()
        .all(|r| r.status.as_ref().unwrap().code == 0));
    elapsed
}

/// Bytes allocated on disk for the files under `dir` (what `du` counts for them).
fn allocated(dir: &Path) -> u64 {
    files_below(dir)
        .iter()
        .map(|meta| meta.blocks() * 512)
        .sum()
}

fn file_reads(dir: &Path, digests: &[Digest]) -> Duration {
    let start = Instant::now();
    let mut buffer = Vec::new();
    for digest in digests {
        buffer.clear();
        std::fs::File::open(dir.join(digest.hash_hex()))
            .unwrap()
            .read_to_end(&mut buffer)
            .unwrap();
        assert_eq!(buffer.len() as u64, digest.size());
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let dir = bench_dir();
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home, None, &[]);
    let mut c = daemon.clients().await;
    let writers = std::thread::available_parallelism().map_or(2, |n| n.get());

    // BatchUpdateBlobs against fsynced files, rounds alternating which goes first.
    let (mut clientd, mut serial, mut parallel) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut present = Vec::new();
    let mut logical = 0;
    for round in 0..ROUNDS {
        let blobs = blobs(round);
        let baseline = dir.path().join(format!("files-{round}"));
        std::fs::create_dir(&baseline).unwrap();
        let (u, s, p) = if round % 2 == 0 {
            let u = upload(&mut c, &blobs).await;
            let s = disk_writes(&baseline, &blobs[..BLOBS_PER_ROUND / 2], 1);
            let p = disk_writes(&baseline, &blobs[BLOBS_PER_ROUND / 2..], writers);
            (u, s, p)
        } else {
            let s = disk_writes(&baseline, &blobs[..BLOBS_PER_ROUND / 2], 1);
            let p = disk_writes(&baseline, &blobs[BLOBS_PER_ROUND / 2..], writers);
            (upload(&mut c, &blobs).await, s, p)
        };
        let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
        println!(
            "round {round}: BatchUpdateBlobs {:.0} blobs/s; files with an fsync each: {:.0} blobs/s \
             (1 writer), {:.0} blobs/s ({writers} writers)",
            rate(BLOBS_PER_ROUND, u),
            rate(BLOBS_PER_ROUND / 2, s),
            rate(BLOBS_PER_ROUND / 2, p),
        );
        clientd += u;
        serial += s;
        parallel += p;
        std::fs::remove_dir_all(&baseline).unwrap();
        logical += blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        present.extend(blobs.into_iter().take(2 * PER_CALL));
    }
    let on_disk = allocated(&home.join("cache/clientd/cas"));

    // BatchReadBlobs of 1,000 blobs against reading them from a file each, warm, alternating.
    let as_files = dir.path().join("as-files");
    std::fs::create_dir(&as_files).unwrap();
    for (digest, data) in &present[..PER_CALL] {
        std::fs::write(as_files.join(digest.hash_hex()), data).unwrap();
    }
    let present: Vec<Digest> = present.into_iter().map(|(d, _)| d).collect();
    let digests = &present[..PER_CALL];
    file_reads(&as_files, digests);
    batch_read(&mut c, digests).await;
    let (mut reads, mut files) = (Vec::new(), Vec::new());
    for round in 0..20 {
        if round % 2 == 0 {
            reads.push(batch_read(&mut c, digests).await);
            files.push(file_reads(&as_files, digests));
        } else {
            files.push(file_reads(&as_files, digests));
            reads.push(batch_read(&mut c, digests).await);
        }
    }
    let (reads, files) = (median(reads), median(files));

    // FindMissingBlobs over 10,000 digests, half of them present.
    let mut digests: Vec<Digest> = present.iter().cycle().take(5000).copied().collect();
    digests.sort();
    digests.dedup();
    let n_present = digests.len();
    digests
        .extend((0..10_000 - n_present as u32).map(|i| sha256(format!("absent {i}").as_bytes())));
    let request = re::FindMissingBlobsRequest {
        instance_name: "local/bench".into(),
        blob_digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let response = c.cas.find_missing_blobs(request.clone()).await.unwrap();
        times.push(start.elapsed());
        assert_eq!(
            response.into_inner().missing_blob_digests.len(),
            10_000 - n_present
        );
    }

    let (get, read, read_file) = per_call(&mut c, &present[0]).await;

    drop(c);
    drop(daemon);
    let packed_startup = startup(Layout::Packed).await;
    let files_startup = startup(Layout::Files).await;

    let n = (ROUNDS * BLOBS_PER_ROUND) as f64;
    let half = (ROUNDS * BLOBS_PER_ROUND / 2) as f64;
    println!("over {ROUNDS} rounds:");
    println!(
        "  BatchUpdateBlobs: {:.0} blobs/s (target >= 20,000); files with an fsync each: {:.0} \
         blobs/s (1 writer), {:.0} blobs/s ({writers} writers)",
        n / clientd.as_secs_f64(),
        half / serial.as_secs_f64(),
        half / parallel.as_secs_f64(),
    );
    println!(
        "  disk: the cache occupies {:.1} MB for {:.1} MB of blobs: {:.2} x (target <= 1.5)",
        on_disk as f64 / 1e6,
        logical as f64 / 1e6,
        on_disk as f64 / logical as f64
    );
    println!(
        "  BatchReadBlobs of 1,000 blobs: {:.1} ms, opening and reading them as files {:.1} ms: \
         {:.2} x (target <= 1.5; medians of 20)",
        reads.as_secs_f64() * 1e3,
        files.as_secs_f64() * 1e3,
        reads.as_secs_f64() / files.as_secs_f64(),
    );
    println!(
        "  FindMissingBlobs(10,000 digests, {n_present} present): {:.2} ms (median of 30; target < 10 ms)",
        median(times).as_secs_f64() * 1e3
    );
    println!(
        "  one call at a time: GetActionResult {:.0} us, ByteStream read of 100 B {:.0} us, of 64 KiB \
         {:.0} us (medians of 1,000)",
        get.as_secs_f64() * 1e6,
        read.as_secs_f64() * 1e6,
        read_file.as_secs_f64() * 1e6,
    );
    for (what, s) in [("packed", packed_startup), ("a file each", files_startup)] {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  start-up with {} blobs ({what}): answers for a blob it has after {:.0} ms, for one \
             it lacks after {:.0} ms (target < 100 ms), all of them found after {:.0} ms; the \
             daemon then occupies {:.0} MB more than with an empty cache, {:.0} B a blob",
            s.blobs,
            ms(s.present),
            ms(s.absent),
            ms(s.all),
            s.memory as f64 / 1e6,
            s.memory as f64 / s.blobs as f64,
        );
    }
}

/// Medians of 1,000 GetActionResult calls for a stored result naming `output`, and of as many
/// ByteStream reads of `output` and of a 64 KiB blob, one call at a time.
async fn per_call(c: &mut Clients, output: &Digest) -> (Duration, Duration, Duration) {
    let large = pseudo_random(64, 64 << 10);
    let large_digest = sha256(&large);
    c.batch_update("local/bench", &[(large_digest, large)])
        .await;
    let action = sha256(b"bench action");
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(output.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let update = re::UpdateActionResultRequest {
        instance_name: "local/bench".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result),
        ..Default::default()
    };
    c.ac.update_action_result(update).await.unwrap();
    let get = re::GetActionResultRequest {
        instance_name: "local/bench".into(),
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    let (mut gets, mut reads, mut file_reads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..1000 {
        let start = Instant::now();
        c.ac.get_action_result(get.clone()).await.unwrap();
        gets.push(start.elapsed());
        let start = Instant::now();
        let data = c.read("local/bench", output, 0, 0).await.unwrap();
        reads.push(start.elapsed());
        assert_eq!(data.len() as u64, output.size());
        let start = Instant::now();
        let data = c.read("local/bench", &large_digest, 0, 0).await.unwrap();
        file_reads.push(start.elapsed());
        assert_eq!(data.len(), 64 << 10);
    }
    (median(gets), median(reads), median(file_reads))
}

enum Layout {
    /// Uploaded through a daemon, which packs them.
    Packed,
    /// Written as a file each into the CAS directory, as earlier versions stored them.
    Files,
}

/// A daemon started on a cache that holds many blobs.
struct Startup {
    blobs: usize,
    /// From starting the daemon to its answer for one blob it has, then for one it lacks (which
    /// it can give only once it knows every blob it has).
    present: Duration,
    absent: Duration,
    /// Until FindMissingBlobs has found every blob.
    all: Duration,
    /// The memory it then occupies beyond that of a daemon with an empty cache.
    memory: u64,
}

async fn startup(layout: Layout) -> Startup {
    let n: usize = env_number("BENCH_STARTUP_BLOBS", 100_000);
    let dir = bench_dir();
    let home = dir.path().join("home");
    let blobs: Vec<(Digest, Vec<u8>)> = (0..n as u64)
        .map(|i| i.to_le_bytes().to_vec())
        .map(|data| (sha256(&data), data))
        .collect();
    match layout {
        Layout::Packed => {
            let daemon = Daemon::start(&home, None, &[]);
            let mut c = daemon.clients().await;
            upload(&mut c, &blobs).await;
            drop(c);
            assert!(daemon.stop().success());
        }
        Layout::Files => {
            for (digest, data) in &blobs {
                let path: PathBuf = cas_file(&home, digest);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
        }
    }
    let digests: Vec<Digest> = blobs.into_iter().map(|(d, _)| d).collect();
    let idle = Daemon::start(&dir.path().join("empty"), None, &[]);
    idle.clients()
        .await
        .find_missing("local/bench", &digests[..1])
        .await;
    let idle_rss = idle.rss_bytes();
    drop(idle);
    let start = Instant::now();
    let daemon = Daemon::start(&home, None, &[]);
    let mut c = daemon.clients().await;
    assert!(c
        .find_missing("local/bench", &digests[..1])
        .await
        .is_empty());
    let present = start.elapsed();
    let absent = [sha256(b"absent")];
    assert_eq!(c.find_missing("local/bench", &absent).await.len(), 1);
    let absent = start.elapsed();
    for chunk in digests.chunks(10_000) {
        assert!(c.find_missing("local/bench", chunk).await.is_empty());
    }
    Startup {
        blobs: n,
        present,
        absent,
        all: start.elapsed(),
        memory: daemon.rss_bytes().saturating_sub(idle_rss),
    }
}
