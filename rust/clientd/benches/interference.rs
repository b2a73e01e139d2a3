//! Benchmark of the daemon's latency for small calls while heavy work runs next to them: nothing
//! may block the runtime's threads or hold a global lock across system calls for long.
//! - Probes: FindMissingBlobs of one digest, and a ByteStream read of a 100-byte blob, one after
//!   the other for the whole phase; p50 and p99 of each.
//! - Phases: idle; then, at the same time, a 1 GiB ByteStream upload, StageArtifacts and BatchStat
//!   of 100,000 files (BENCH_FILES) in the Output Service, and `find` over the mount's outputs/.
//!
//! Run: `cargo bench -p clientd --bench interference`. Needs /dev/fuse and fusermount3.
//! Target: p99 under 5 ms for both probes under load.

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use clientd_digest::Digest;
use clientd_proto::bazel_output_service as pb;
use common::*;
use pb::bazel_output_service_client::BazelOutputServiceClient;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCE: &str = "local/bench";
const BASE: &str = "0123456789abcdef0123456789abcdef";

/// Latencies of the two probes, run in turn until `stop` is set (at least `min` rounds).
async fn probe(
    c: &mut Clients,
    small: &Digest,
    stop: &AtomicBool,
    min: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut find, mut read) = (Vec::new(), Vec::new());
    while find.len() < min || !stop.load(Ordering::Acquire) {
        let start = Instant::now();
        c.find_missing(INSTANCE, std::slice::from_ref(small)).await;
        find.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(c.download(INSTANCE, small).await, small.size());
        read.push(start.elapsed());
    }
    (find, read)
}

/// Starts [`probe`] on a thread and a runtime of its own, so that what it times is the daemon,
/// not this process's threads busy sending the load.
fn probing(
    socket: PathBuf,
    small: Digest,
    stop: Arc<AtomicBool>,
    min: usize,
) -> tokio::task::JoinHandle<(Vec<Duration>, Vec<Duration>)> {
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut c = Clients::new(unix_channel(socket).await);
            probe(&mut c, &small, &stop, min).await
        })
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap())
}

fn percentiles(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        times.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let files: usize = env_number("BENCH_FILES", 100_000);
    let dir = bench_dir();
    let home = dir.path().join("home");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let daemon = Daemon::start(&home, None, &["--mount", mnt.to_str().unwrap()]);
    wait_for_mount(&mnt);
    let _unmount = Unmount(mnt.clone());

    let mut c = daemon.clients().await;
    let small_data = vec![7u8; 100];
    let small = sha256(&small_data);
    c.batch_update(INSTANCE, &[(small, small_data)]).await;
    // The outputs to stage: distinct small blobs, uploaded before the load phase.
    let outputs: Vec<(Digest, Vec<u8>)> = (0..files)
        .map(|i| format!("output {i}").into_bytes())
        .map(|b| (sha256(&b), b))
        .collect();
    for batch in outputs.chunks(5000) {
        c.batch_update(INSTANCE, batch).await;
    }

    let idle = probing(
        daemon.socket.clone(),
        small,
        Arc::new(AtomicBool::new(true)),
        2000,
    );
    let (find_idle, read_idle) = idle.await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let large = Bytes::from(pseudo_random(3, 1 << 30));
    let large_digest = sha256(&large);
    let mut uploader = daemon.clients().await;
    let upload = tokio::spawn(async move {
        let start = Instant::now();
        uploader
            .upload_chunks(INSTANCE, &large_digest, &chunked(&large, 1 << 20))
            .await;
        start.elapsed()
    });
    let mut service = BazelOutputServiceClient::new(daemon.channel().await)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let outputs_dir = mnt.join("outputs").join(BASE);
    let staging = tokio::spawn(async move {
        let start = Instant::now();
        service
            .start_build(start_build_request(BASE, "b1", INSTANCE))
            .await
            .unwrap();
        let path = |i: usize| format!("bin/dir{}/file{i}", i % 300);
        for (n, chunk) in outputs.chunks(1000).enumerate() {
            let files = chunk
                .iter()
                .enumerate()
                .map(|(j, (d, _))| (path(n * 1000 + j), *d));
            let codes = stage_files(&mut service, "b1", files).await;
            assert!(codes.iter().all(|&code| code == 0));
        }
        let paths: Vec<String> = (0..outputs.len()).map(path).collect();
        for chunk in paths.chunks(10_000) {
            service
                .batch_stat(pb::BatchStatRequest {
                    build_id: "b1".into(),
                    paths: chunk.to_vec(),
                })
                .await
                .unwrap();
        }
        start.elapsed()
    });
    let finder = std::thread::spawn(move || {
        let start = Instant::now();
        let mut found = 0;
        // Walks what is staged so far, again and again, while the staging runs.
        for _ in 0..5 {
            let out = std::process::Command::new("find")
                .arg(&outputs_dir)
                .output()
                .unwrap();
            found = out.stdout.iter().filter(|&&b| b == b'\n').count();
        }
        (start.elapsed(), found)
    });
    let probing = probing(daemon.socket.clone(), small, stop.clone(), 0);
    let upload_time = upload.await.unwrap();
    let staging_time = staging.await.unwrap();
    let (find_time, found) = tokio::task::spawn_blocking(move || finder.join().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::Release);
    let (find_load, read_load) = probing.await.unwrap();

    println!("idle:");
    println!("  FindMissingBlobs(1):    {}", percentiles(find_idle));
    println!("  ByteStream read 100 B:  {}", percentiles(read_idle));
    println!(
        "under load (1 GiB upload in {:.1} s; staging + BatchStat of {files} files in {:.1} s; \
         5 x find over outputs/ in {:.1} s, {found} entries the last time):",
        upload_time.as_secs_f64(),
        staging_time.as_secs_f64(),
        find_time.as_secs_f64()
    );
    println!(
        "  FindMissingBlobs(1):    {} (target p99 < 5 ms)",
        percentiles(find_load)
    );
    println!(
        "  ByteStream read 100 B:  {} (target p99 < 5 ms)",
        percentiles(read_load)
    );
}
