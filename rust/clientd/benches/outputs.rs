//! Benchmark of the Output Service on a 100,000-file output path:
//! - StageArtifacts throughput (artifacts per second, batches of 1,000);
//! - BatchStat throughput (paths per second, batches of 10,000);
//! - the daemon's resident memory per staged file;
//! - the time to restore the output path after a restart.
//!
//! Run: `cargo bench -p clientd --bench outputs` (BENCH_FILES overrides the 100,000).
//! Targets: over 100,000 staged artifacts and over 200,000 stats per second.

#[path = "../tests/common/mod.rs"]
mod common;

use clientd_digest::Digest;
use clientd_proto::bazel_output_service as pb;
use common::*;
use pb::bazel_output_service_client::BazelOutputServiceClient;
use std::time::{Duration, Instant};

const BASE: &str = "fedcba9876543210fedcba9876543210";

#[tokio::main]
async fn main() {
    let files: usize = env_number("BENCH_FILES", 100_000);
    let dir = bench_dir();
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home, None, &[]);
    let mut clients = daemon.clients().await;
    let digests: Vec<Digest> = {
        let blobs: Vec<(Digest, Vec<u8>)> = (0..files)
            .map(|i| format!("output {i}").into_bytes())
            .map(|b| (sha256(&b), b))
            .collect();
        for batch in blobs.chunks(5000) {
            clients.batch_update("local/bench", batch).await;
        }
        blobs.into_iter().map(|(d, _)| d).collect()
    };
    let path = |i: usize| format!("k8-opt/bin/dir{}/sub{}/file{i}.o", i % 300, i % 7);
    let mut service = BazelOutputServiceClient::new(daemon.channel().await)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    service
        .start_build(start_build_request(BASE, "b1", "local/bench"))
        .await
        .unwrap();

    let rss_before = daemon.rss_bytes();
    let start = Instant::now();
    for chunk in (0..files).collect::<Vec<_>>().chunks(1000) {
        let codes = stage_files(
            &mut service,
            "b1",
            chunk.iter().map(|&i| (path(i), digests[i])),
        )
        .await;
        assert!(codes.iter().all(|&c| c == 0));
    }
    let stage_time = start.elapsed();
    let rss_after = daemon.rss_bytes();

    let paths: Vec<String> = (0..files).map(path).collect();
    let start = Instant::now();
    for chunk in paths.chunks(10_000) {
        let response = service
            .batch_stat(pb::BatchStatRequest {
                build_id: "b1".into(),
                paths: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.responses.iter().all(|r| r.stat.is_some()));
    }
    let stat_time = start.elapsed();
    service
        .finalize_build(pb::FinalizeBuildRequest {
            build_id: "b1".into(),
            build_successful: true,
        })
        .await
        .unwrap();
    drop(service);
    assert!(daemon.stop().success());

    let start = Instant::now();
    let daemon = Daemon::start(&home, None, &[]);
    let restore_time = start.elapsed();
    let restored = daemon
        .log()
        .lines()
        .find(|l| l.contains("restored"))
        .unwrap_or_default()
        .to_string();
    // Every file and every directory above it comes back.
    let mut dirs = std::collections::HashSet::new();
    for p in &paths {
        let mut parent = std::path::Path::new(p).parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            parent = d.parent();
        }
    }
    let expected = format!("restored {} entries", files + dirs.len());
    assert!(restored.contains(&expected), "{restored}");

    let per_second = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "StageArtifacts: {files} artifacts in {stage_time:.2?}: {:.0} per second (target > 100,000)",
        per_second(files, stage_time)
    );
    println!(
        "BatchStat: {files} paths in {stat_time:.2?}: {:.0} per second (target > 200,000)",
        per_second(files, stat_time)
    );
    println!(
        "memory: {:.0} bytes of RSS per staged file ({} MiB for {files})",
        (rss_after.saturating_sub(rss_before)) as f64 / files as f64,
        (rss_after.saturating_sub(rss_before)) >> 20
    );
    println!(
        "restart until serving, with the output path restored: {restore_time:.2?} ({restored})"
    );
    assert!(daemon.stop().success());
}
