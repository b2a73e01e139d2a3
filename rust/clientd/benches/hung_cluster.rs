//! Benchmark of a cluster that hangs (its daemon SIGSTOPped, as a frozen server or a dropped VPN
//! behaves), through a proxy daemon with `request_timeout_seconds: 2`. Per round:
//! - the first call that needs the cluster: how long until it fails, as a ratio to the timeout;
//! - the calls after it, once the cluster is known down: how long each takes to fail (goal: well
//!   under 2 s), as a ratio to a healthy call's round trip measured in the same round;
//! - after SIGCONT: how long until a call succeeds again (the probe runs every second).
//!
//! Run: `cargo bench -p clientd --bench hung_cluster` (BENCH_ROUNDS overrides the 3 rounds).

#[path = "../tests/common/mod.rs"]
mod common;

use clientd_proto::build::bazel::remote::execution::v2 as re;
use common::*;
use std::time::{Duration, Instant};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(2);
const FAST_CALLS: usize = 20;

/// FindMissingBlobs of a digest nobody has, through the proxy: the cluster must answer it.
async fn ask(clients: &mut Clients, round: usize, i: usize) -> (Result<(), Code>, Duration) {
    let digest = sha256(format!("never uploaded {round} {i}").as_bytes());
    let start = Instant::now();
    let result = clients
        .cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            instance_name: "up.example.com/local/x".into(),
            blob_digests: vec![digest.to_proto()],
            ..Default::default()
        })
        .await;
    (result.map(|_| ()).map_err(|s| s.code()), start.elapsed())
}

#[tokio::main]
async fn main() {
    let rounds: usize = env_number("BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let config = format!(
        r#"{{"clusters": {{"up.example.com": {{"endpoint": "unix:{}", "request_timeout_seconds": {}}}}}}}"#,
        upstream.socket.display(),
        TIMEOUT.as_secs()
    );
    let proxy = Daemon::start(&dir.path().join("proxy"), Some(&config), &[]);
    let mut clients = proxy.clients().await;
    println!(
        "request_timeout_seconds {}; {rounds} rounds",
        TIMEOUT.as_secs()
    );
    let (mut firsts, mut fasts, mut healthy, mut recoveries) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let mut up = Vec::new();
        for i in 0..FAST_CALLS {
            let (result, took) = ask(&mut clients, round, 1000 + i).await;
            assert_eq!(result, Ok(()));
            up.push(took);
        }
        let healthy_round = median(up);

        upstream.pause();
        let (result, first) = ask(&mut clients, round, 0).await;
        assert_eq!(result, Err(Code::DeadlineExceeded));
        let mut down = Vec::new();
        for i in 1..=FAST_CALLS {
            let (result, took) = ask(&mut clients, round, i).await;
            assert_eq!(result, Err(Code::Unavailable));
            down.push(took);
        }
        let fast = median(down);

        upstream.resume();
        let start = Instant::now();
        let mut i = 100;
        while ask(&mut clients, round, i).await.0.is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
            i += 1;
        }
        let recovery = start.elapsed();
        println!(
            "round {round}: first failure {first:.2?}, then {fast:.2?} per call (healthy \
             {healthy_round:.2?}), up again {recovery:.2?} after SIGCONT"
        );
        firsts.push(first);
        fasts.push(fast);
        healthy.push(healthy_round);
        recoveries.push(recovery);
    }
    let (first, fast, ok, back) = (
        median(firsts),
        median(fasts),
        median(healthy),
        median(recoveries),
    );
    println!("medians over {rounds} rounds:");
    println!(
        "  first failure: {first:.2?} = {:.2} x request_timeout (goal: bounded by it)",
        first.as_secs_f64() / TIMEOUT.as_secs_f64()
    );
    println!(
        "  failure once known down: {fast:.2?} (goal < 2 s) = {:.1} x a healthy call ({ok:.2?})",
        fast.as_secs_f64() / ok.as_secs_f64()
    );
    println!("  first success after SIGCONT: {back:.2?} (probe interval 1 s)");
}
