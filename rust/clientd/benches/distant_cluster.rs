//! Benchmark of reads through a cluster a round trip away: what batching the cluster calls saves
//! in time. A proxy daemon reaches its cluster (a second daemon) through a relay that holds every
//! chunk for BENCH_DELAY_MS (10) in each direction, so the cluster is twice that away. Per round,
//! each side going first in turn, with blobs the proxy has not seen:
//! - BatchReadBlobs of BENCH_BLOBS (300) blobs of about 1 KiB, in one call;
//! - the same number of other such blobs read by one ByteStream Read each, 16 at a time: what a
//!   client without batch reads does, and what the daemon did for a batch read before it sent
//!   BatchReadBlobs to clusters;
//! - GetTree of a tree of 2 x BENCH_WIDTH + 1 directories (401) in three levels.
//!
//! It prints the times, the round trip (a FindMissingBlobs the cluster must answer), and the calls
//! the proxy made to the cluster (from its `/metrics`). `BENCH_CLIENTD=/path/to/clientd` runs
//! another build's daemons, to compare with a build from before a change.
//!
//! Run: `cargo bench -p clientd --bench distant_cluster` (BENCH_ROUNDS overrides the 3 rounds).

#[path = "../tests/common/mod.rs"]
mod common;

use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream as bs;
use common::*;
use futures::{StreamExt, TryStreamExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PROXIED: &str = "up.example.com/local/x";
const UPSTREAM: &str = "local/x";
/// ByteStream reads in flight at once, as the daemon's per-blob batch read had.
const READS_IN_FLIGHT: usize = 16;

/// Relays connections from `listen` to `target` (UNIX sockets), holding every chunk for `delay`
/// in each direction, in order: the target as if it were `2 x delay` away.
fn delaying_relay(listen: PathBuf, target: PathBuf, delay: Duration) {
    let listener = tokio::net::UnixListener::bind(&listen).unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::UnixStream::connect(&target).await.unwrap();
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(delayed(in_read, out_write, delay));
            tokio::spawn(delayed(out_read, in_write, delay));
        }
    });
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn delayed(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin + Send + 'static,
    delay: Duration,
) {
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buffer).await {
        if chunks
            .send((Instant::now() + delay, buffer[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}

/// `count` blobs of about 1 KiB that no other round or kind shares.
fn blobs(round: usize, kind: u64, count: usize) -> Vec<(Digest, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let data = pseudo_random((round as u64) << 32 | kind << 24 | i as u64, 1000 + i % 100);
            (sha256(&data), data)
        })
        .collect()
}

async fn batch_read(clients: &mut Clients, blobs: &[(Digest, Vec<u8>)]) -> Duration {
    let start = Instant::now();
    let response = clients
        .cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            instance_name: PROXIED.into(),
            digests: blobs.iter().map(|(d, _)| d.to_proto()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let took = start.elapsed();
    assert!(response
        .responses
        .iter()
        .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0)));
    took
}

async fn read_each(clients: &Clients, blobs: &[(Digest, Vec<u8>)]) -> Duration {
    let start = Instant::now();
    let sizes: Vec<usize> = futures::stream::iter(blobs)
        .map(|(digest, _)| {
            let mut bytestream = clients.bytestream.clone();
            async move {
                let request = bs::ReadRequest {
                    resource_name: format!("{PROXIED}/blobs/{}", digest.resource_tail()),
                    ..Default::default()
                };
                let chunks: Vec<bs::ReadResponse> = bytestream
                    .read(request)
                    .await?
                    .into_inner()
                    .try_collect()
                    .await?;
                Ok::<usize, tonic::Status>(chunks.iter().map(|c| c.data.len()).sum())
            }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        blobs.iter().map(|(_, b)| b.len()).sum()
    );
    took
}

async fn get_tree(clients: &mut Clients, root: &Digest, directories: usize) -> Duration {
    let start = Instant::now();
    let seen = clients.tree_directories(PROXIED, root).await;
    let took = start.elapsed();
    assert_eq!(seen, directories);
    took
}

/// The proxy's cluster calls since `before`, by method.
fn calls_since(before: &str, after: &str) -> String {
    ["BatchReadBlobs", "ByteStream.Read", "FindMissingBlobs"]
        .iter()
        .map(|m| {
            let n = upstream_calls(after, m) - upstream_calls(before, m);
            format!("{n} {m}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let delay = Duration::from_millis(env_number("BENCH_DELAY_MS", 10) as u64);
    let rounds = env_number("BENCH_ROUNDS", 3);
    let count = env_number("BENCH_BLOBS", 300);
    let width = env_number("BENCH_WIDTH", 200);
    let dir = bench_dir();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let relay = dir.path().join("relay");
    delaying_relay(relay.clone(), upstream.socket.clone(), delay);
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let cluster = format!("up.example.com=unix:{}", relay.display());
    let proxy = Daemon::start(
        &dir.path().join("proxy"),
        None,
        &["--cluster", &cluster, "--http-listen", &http],
    );
    let mut up = upstream.clients().await;
    let mut clients = proxy.clients().await;

    // The round trip to the cluster: FindMissingBlobs of digests it has never seen.
    let mut trips = Vec::new();
    for i in 0..5 {
        let absent = sha256(format!("absent {i}").as_bytes());
        let start = Instant::now();
        clients.find_missing(PROXIED, &[absent]).await;
        trips.push(start.elapsed());
    }
    println!(
        "cluster {} ms away each way; a FindMissingBlobs through the proxy: {:.1?}; {rounds} rounds",
        delay.as_millis(),
        median(trips)
    );

    let (mut batches, mut singles, mut trees) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let (batched, single) = (blobs(round, 1, count), blobs(round, 2, count));
        let (root, tree) = three_level_tree(&format!("r{round}-"), width);
        for set in [&batched, &single, &tree] {
            for chunk in set.chunks(1000) {
                assert!(up
                    .batch_update(UPSTREAM, chunk)
                    .await
                    .iter()
                    .all(|&c| c == 0));
            }
        }
        let before = metrics(&http);
        let (batch, each) = if round % 2 == 0 {
            let batch = batch_read(&mut clients, &batched).await;
            (batch, read_each(&clients, &single).await)
        } else {
            let each = read_each(&clients, &single).await;
            (batch_read(&mut clients, &batched).await, each)
        };
        let walked = get_tree(&mut clients, &root, tree.len()).await;
        println!(
            "round {round}: BatchReadBlobs of {count}: {batch:.2?}; {count} ByteStream reads: \
             {each:.2?}; GetTree of {} directories: {walked:.2?} (cluster calls: {})",
            tree.len(),
            calls_since(&before, &metrics(&http))
        );
        batches.push(batch);
        singles.push(each);
        trees.push(walked);
    }
    let (batch, each, tree) = (median(batches), median(singles), median(trees));
    println!("medians over {rounds} rounds:");
    println!(
        "  BatchReadBlobs of {count}: {batch:.2?}, {:.1} x faster than a ByteStream read each \
         ({each:.2?})",
        each.as_secs_f64() / batch.as_secs_f64()
    );
    println!(
        "  GetTree of {} directories: {tree:.2?} ({:.1} round trips)",
        2 * width + 1,
        tree.as_secs_f64() / (2 * delay).as_secs_f64()
    );
}
