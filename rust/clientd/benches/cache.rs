//! Benchmark of the local cache over the UNIX socket, as ratios to the disk itself, measured in
//! the same run (these machines are shared and noisy):
//! - ByteStream upload and download of 1 GiB vs. writing (with fsync, as the CAS does) and reading
//!   the same bytes to and from a file on the same disk;
//! - FindMissingBlobs for 10,000 digests (half present).
//!
//! Run: `cargo bench -p clientd --bench cache` (BENCH_BYTES overrides the 1 GiB).

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream as bs;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn gib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / (1u64 << 30) as f64
}

#[tokio::main]
async fn main() {
    let size: usize = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let dir = tempfile::tempdir_in(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").into()),
    )
    .unwrap();
    let data = Bytes::from(pseudo_random(42, size));
    let digest = sha256(&data);
    const CHUNK: usize = 1 << 20;

    // Baseline: the disk.
    let file = dir.path().join("baseline");
    let start = Instant::now();
    let mut f = std::fs::File::create(&file).unwrap();
    for piece in data.chunks(CHUNK) {
        f.write_all(piece).unwrap();
    }
    f.sync_data().unwrap();
    let disk_write = start.elapsed();
    drop(f);
    let start = Instant::now();
    let mut f = std::fs::File::open(&file).unwrap();
    let mut buf = vec![0u8; CHUNK];
    while f.read(&mut buf).unwrap() > 0 {}
    let disk_read = start.elapsed();
    std::fs::remove_file(&file).unwrap();

    // clientd.
    let daemon = Daemon::start(&dir.path().join("home"), None, &[]);
    let mut c = daemon.clients().await;
    let name = write_name("local/bench", &digest);
    let requests = (0..size)
        .step_by(CHUNK)
        .map(move |offset| bs::WriteRequest {
            resource_name: name.clone(),
            write_offset: offset as i64,
            finish_write: offset + CHUNK >= size,
            data: data.slice(offset..(offset + CHUNK).min(size)),
        });
    let start = Instant::now();
    c.bytestream
        .write(futures::stream::iter(requests))
        .await
        .unwrap();
    let upload = start.elapsed();
    // Like the baseline's reads into one reused buffer, the chunks are consumed as they arrive
    // (collecting 1 GiB would time the client's page faults, not the download).
    let start = Instant::now();
    let request = bs::ReadRequest {
        resource_name: format!("local/bench/blobs/{}", digest.resource_tail()),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = c.bytestream.read(request).await.unwrap().into_inner();
    let mut received = 0;
    while let Some(message) = stream.message().await.unwrap() {
        received += message.data.len();
    }
    let download = start.elapsed();
    assert_eq!(received, size);

    // FindMissingBlobs over 10,000 digests, half of them present.
    let small: Vec<(Digest, Vec<u8>)> = (0..5000u32)
        .map(|i| i.to_le_bytes().to_vec())
        .map(|d| (sha256(&d), d))
        .collect();
    let start = Instant::now();
    for batch in small.chunks(1000) {
        c.batch_update("local/bench", batch).await;
    }
    let small_writes = start.elapsed();
    let mut digests: Vec<Digest> = small.iter().map(|(d, _)| *d).collect();
    digests.extend((0..5000u32).map(|i| sha256(format!("absent {i}").as_bytes())));
    let request = re::FindMissingBlobsRequest {
        instance_name: "local/bench".into(),
        blob_digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let response = c
            .cas
            .find_missing_blobs(request.clone())
            .await
            .unwrap()
            .into_inner();
        times.push(start.elapsed());
        assert_eq!(response.missing_blob_digests.len(), 5000);
    }
    times.sort();
    let median = times[times.len() / 2];

    println!(
        "BatchUpdateBlobs of 5,000 small blobs (1,000 per call): {:.0} blobs/s",
        5000.0 / small_writes.as_secs_f64()
    );
    println!("bytes: {size}");
    println!(
        "disk write+fsync: {:.2} GiB/s, disk read: {:.2} GiB/s",
        gib_per_s(size, disk_write),
        gib_per_s(size, disk_read)
    );
    println!(
        "ByteStream upload: {:.2} GiB/s, download: {:.2} GiB/s",
        gib_per_s(size, upload),
        gib_per_s(size, download)
    );
    println!(
        "upload / disk write ratio: {:.2}",
        disk_write.as_secs_f64() / upload.as_secs_f64()
    );
    println!(
        "download / disk read ratio: {:.2}",
        disk_read.as_secs_f64() / download.as_secs_f64()
    );
    println!(
        "FindMissingBlobs(10,000 digests) median of 30: {:.2} ms (target < 10 ms)",
        median.as_secs_f64() * 1e3
    );
}
