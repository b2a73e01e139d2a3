//! The proxy, end to end over real gRPC: a clientd daemon whose cluster is another, real clientd
//! daemon (its `local/...` cache), reached over a UNIX socket. Instance `up.example.com/local/x`
//! on the proxy is instance `local/x` upstream.

mod common;

use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::clientd::v1 as pb;
use common::{
    metrics, pseudo_random, sha256, three_level_tree, upstream_calls, write_name, write_requests,
    Clients, Daemon,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

const PROXIED: &str = "up.example.com/local/x";
const UPSTREAM: &str = "local/x";

/// An upstream daemon and a proxy daemon routing `up.example.com` to it.
fn pair(dir: &Path, extra: &[&str]) -> (Daemon, Daemon) {
    let upstream = Daemon::start(&dir.join("up"), None, &[]);
    let cluster = format!("up.example.com=unix:{}", upstream.socket.display());
    let mut args = vec!["--cluster", cluster.as_str()];
    args.extend_from_slice(extra);
    let proxy = Daemon::start(&dir.join("proxy"), None, &args);
    (upstream, proxy)
}

async fn stats(daemon: &Daemon) -> BTreeMap<String, u64> {
    let response = pb::stats_client::StatsClient::new(daemon.channel().await)
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    response
        .counters
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect()
}

/// Where a daemon's local CAS keeps `digest`.
fn cas_file(daemon: &Daemon, digest: &Digest) -> std::path::PathBuf {
    let hash = digest.hash_hex();
    daemon
        .home
        .join("cache/clientd/cas/entries/sha256")
        .join(&hash[..2])
        .join(digest.file_name())
}

#[tokio::test]
async fn reads_fetch_once_into_the_local_cas_and_survive_the_cluster_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let data = pseudo_random(1, 3 << 20);
    let digest = sha256(&data);
    upstream
        .clients()
        .await
        .write(UPSTREAM, &data, 1 << 20)
        .await
        .unwrap();

    // Four readers at once share one fetch.
    let readers = (0..4).map(|_| {
        let channel = proxy.channel();
        async move {
            let mut clients = Clients::new(channel.await);
            clients.read(PROXIED, &digest, 0, 0).await
        }
    });
    for result in futures::future::join_all(readers).await {
        assert!(result.unwrap() == data, "proxied read returned other bytes");
    }
    let counters = stats(&proxy).await;
    assert_eq!(counters["upstream_fetches"], 1, "{counters:?}");
    assert_eq!(counters["upstream_fetch_bytes"], data.len() as u64);
    assert_eq!(
        counters["shared_fetches"] + counters["local_hits"],
        3,
        "{counters:?}"
    );

    // Ranged reads and batch reads are served locally; so is everything once upstream is gone.
    upstream.stop();
    let mut clients = proxy.clients().await;
    let middle = clients.read(PROXIED, &digest, 1000, 10).await.unwrap();
    assert_eq!(middle, &data[1000..1010]);
    let response = clients
        .cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            instance_name: PROXIED.into(),
            digests: vec![digest.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    assert!(response.responses[0].data == data);
    assert_eq!(stats(&proxy).await["upstream_fetches"], 1);

    // `clientd stats` prints the same counters.
    let output = common::cli(&proxy.home, &["stats"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("upstream_fetches 1\n"), "{text}");
    assert!(text.contains("cluster up.example.com unix:"), "{text}");
}

#[tokio::test]
async fn uploads_reach_the_cluster_and_the_local_cas() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let mut clients = proxy.clients().await;
    let large = pseudo_random(2, 6 << 20); // above the batch limit: ByteStream upstream
    let small: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(10 + i, 1000)).collect();
    assert_eq!(
        clients.write(PROXIED, &large, 1 << 20).await.unwrap(),
        large.len() as i64
    );
    let blobs: Vec<(Digest, Vec<u8>)> = small.iter().map(|d| (sha256(d), d.clone())).collect();
    assert_eq!(clients.batch_update(PROXIED, &blobs).await, vec![0, 0, 0]);
    // 4 MiB in one call to clientd (its own limit): split into calls under the cluster's 4 MiB
    // batch limit, which counts each entry's framing too.
    let big_batch: Vec<(Digest, Vec<u8>)> = (0..4)
        .map(|i| pseudo_random(20 + i, 1 << 20))
        .map(|d| (sha256(&d), d))
        .collect();
    assert_eq!(clients.batch_update(PROXIED, &big_batch).await, vec![0; 4]);

    let mut all: Vec<Digest> = blobs.iter().chain(&big_batch).map(|(d, _)| *d).collect();
    all.push(sha256(&large));
    let mut up = upstream.clients().await;
    assert!(up.find_missing(UPSTREAM, &all).await.is_empty());
    // Local copies of all: reading them fetches nothing (the small ones are packed, the
    // others have files).
    for (digest, data) in blobs.iter().chain(&big_batch) {
        assert!(clients.read(PROXIED, digest, 0, 0).await.unwrap() == *data);
    }
    assert!(cas_file(&proxy, &sha256(&large)).exists());
    let counters = stats(&proxy).await;
    assert_eq!(counters["upstream_fetches"], 0, "{counters:?}");
    // 1 ByteStream write, 3 small blobs, 4 large ones.
    assert_eq!(counters["upstream_writes"], 8, "{counters:?}");

    // Known present now: FindMissingBlobs is answered without asking the cluster.
    let before = stats(&proxy).await;
    assert!(clients.find_missing(PROXIED, &all).await.is_empty());
    let after = stats(&proxy).await;
    assert_eq!(
        after["find_missing_local"] - before["find_missing_local"],
        all.len() as u64
    );
    assert_eq!(
        after["find_missing_upstream"],
        before["find_missing_upstream"]
    );
}

#[tokio::test]
async fn find_missing_asks_the_cluster_once_per_present_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let present = pseudo_random(3, 100);
    upstream
        .clients()
        .await
        .write(UPSTREAM, &present, 100)
        .await
        .unwrap();
    let absent = sha256(b"never uploaded");
    let query = [sha256(&present), absent];
    let mut clients = proxy.clients().await;
    for _ in 0..3 {
        assert_eq!(clients.find_missing(PROXIED, &query).await, vec![absent]);
    }
    let counters = stats(&proxy).await;
    // The present blob is asked about once; the absent one every time.
    assert_eq!(counters["find_missing_upstream"], 4, "{counters:?}");
    assert_eq!(counters["find_missing_local"], 2, "{counters:?}");
}

#[tokio::test]
async fn routing_strips_the_prefix_and_unknown_prefixes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, proxy) = pair(dir.path(), &[]);
    let mut clients = proxy.clients().await;
    let request = |instance: &str| re::FindMissingBlobsRequest {
        instance_name: instance.into(),
        blob_digests: vec![sha256(b"x").to_proto()],
        ..Default::default()
    };
    // `up.example.com` alone is the upstream's empty instance name, which it refuses.
    let err = clients
        .cas
        .find_missing_blobs(request("up.example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("instance name \"\""), "{err:?}");
    let err = clients
        .cas
        .find_missing_blobs(request("nowhere.example.com/x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("\"local\"") && err.message().contains("\"up.example.com\""),
        "{err:?}"
    );
    // Local instances cannot execute; cluster ones are forwarded (this cluster cannot either).
    let mut execution = re::execution_client::ExecutionClient::new(proxy.channel().await);
    let execute = |instance: &str| re::ExecuteRequest {
        instance_name: instance.into(),
        action_digest: Some(sha256(b"action").to_proto()),
        ..Default::default()
    };
    let err = execution.execute(execute("local/x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = execution.execute(execute(PROXIED)).await.unwrap_err();
    assert!(err.message().contains("cluster up.example.com"), "{err:?}");
    let caps = clients
        .caps
        .get_capabilities(re::GetCapabilitiesRequest {
            instance_name: PROXIED.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let exec = caps.execution_capabilities.unwrap();
    assert!(!exec.exec_enabled);
    assert_eq!(
        caps.cache_capabilities.unwrap().max_batch_total_size_bytes,
        4 << 20
    );
}

#[tokio::test]
async fn a_dead_cluster_is_unavailable_quickly_and_local_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("nobody-listens.sock");
    let cluster = format!("dead.example.com=unix:{}", dead.display());
    let proxy = Daemon::start(&dir.path().join("proxy"), None, &["--cluster", &cluster]);
    let mut clients = proxy.clients().await;
    let start = Instant::now();
    let err = clients
        .cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            instance_name: "dead.example.com/x".into(),
            blob_digests: vec![sha256(b"x").to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let message = err.message();
    assert!(
        message.contains("cluster dead.example.com (unix:") && message.contains("nobody-listens"),
        "{message}"
    );
    assert!(message.contains("after 4 attempts"), "{message}");
    let data = b"local still works".to_vec();
    clients.write("local/x", &data, 100).await.unwrap();
    assert_eq!(
        clients.read("local/x", &sha256(&data), 0, 0).await.unwrap(),
        data
    );
}

/// A cluster that hangs (SIGSTOP: as a frozen server or a dropped VPN behaves): the first call
/// fails within `request_timeout_seconds` (not at the client's own deadline) and marks it down;
/// then calls fail at once while what is local is still served, action results whose outputs are
/// local included (offline mode); once it answers again, a probe brings it back.
#[tokio::test]
async fn a_hung_cluster_is_marked_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let config = format!(
        r#"{{"clusters": {{"up.example.com": {{"endpoint": "unix:{}", "request_timeout_seconds": 2}}}},
            "existence_cache": {{"ttl_seconds": 1}}}}"#,
        upstream.socket.display()
    );
    let proxy = Daemon::start(&dir.path().join("proxy"), Some(&config), &[]);
    let mut clients = proxy.clients().await;
    let local = pseudo_random(40, 1000);
    clients.write(PROXIED, &local, 1000).await.unwrap();
    let action = sha256(b"an action built before the VPN dropped");
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(sha256(&local).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    clients
        .ac
        .update_action_result(re::UpdateActionResultRequest {
            instance_name: PROXIED.into(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let uncached = pseudo_random(41, 1000);
    upstream
        .clients()
        .await
        .write(UPSTREAM, &uncached, 1000)
        .await
        .unwrap();
    // Past the existence-cache TTL: every answer about the cluster's contents is stale.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let timed = |start: Instant, most: Duration| {
        let took = start.elapsed();
        assert!(took < most, "took {took:?}");
    };
    upstream.pause();
    // The first call waits out the request timeout: DEADLINE_EXCEEDED naming the cluster.
    let start = Instant::now();
    let err = clients
        .cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            instance_name: PROXIED.into(),
            blob_digests: vec![sha256(b"never seen").to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    timed(start, Duration::from_secs(6));
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("cluster up.example.com"), "{err:?}");
    // Now it is down: what needs it fails at once, UNAVAILABLE.
    let start = Instant::now();
    let err = clients
        .read(PROXIED, &sha256(&uncached), 0, 0)
        .await
        .unwrap_err();
    timed(start, Duration::from_secs(2));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("is down"), "{err:?}");
    // Larger than one request, so a streamed upload; made before the clock starts.
    let upload = pseudo_random(42, 2 << 20);
    let start = Instant::now();
    let err = clients.write(PROXIED, &upload, 1 << 20).await.unwrap_err();
    timed(start, Duration::from_secs(2));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let state = cluster_state(&proxy).await;
    assert!(state.starts_with("down for"), "{state}");
    // What is local is still served: blobs, and the action result whose outputs are local.
    assert_eq!(
        clients.read(PROXIED, &sha256(&local), 0, 0).await.unwrap(),
        local
    );
    let start = Instant::now();
    let offline = clients
        .ac
        .get_action_result(re::GetActionResultRequest {
            instance_name: PROXIED.into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    timed(start, Duration::from_secs(2));
    assert_eq!(offline, result);
    assert_eq!(stats(&proxy).await["action_results_offline"], 1);

    upstream.resume();
    let start = Instant::now();
    while !cluster_state(&proxy).await.starts_with("up") {
        assert!(start.elapsed() < Duration::from_secs(10), "still down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        clients
            .read(PROXIED, &sha256(&uncached), 0, 0)
            .await
            .unwrap(),
        uncached
    );
}

/// A streamed fetch from the cluster that stalls (the cluster SIGSTOPped mid-stream) or breaks
/// (the cluster killed mid-stream) fails with UNAVAILABLE, the code clients retry, and leaves no
/// blob behind.
#[tokio::test]
async fn a_fetch_that_stalls_or_breaks_mid_stream_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let no_sync = r#"{"cas": {"sync_writes": false}}"#;
    let upstream = Daemon::start(&dir.path().join("up"), Some(no_sync), &[]);
    let config = format!(
        r#"{{"clusters": {{"up.example.com": {{"endpoint": "unix:{}", "request_timeout_seconds": 2}}}},
            "cas": {{"sync_writes": false}}}}"#,
        upstream.socket.display()
    );
    let proxy = Daemon::start(&dir.path().join("proxy"), Some(&config), &[]);
    // Large enough that a fetch is seen under way (its temporary file has bytes) before it ends.
    let blobs: Vec<Vec<u8>> = (0..2).map(|i| pseudo_random(50 + i, 64 << 20)).collect();
    let mut up = upstream.clients().await;
    for blob in &blobs {
        up.write(UPSTREAM, blob, 1 << 20).await.unwrap();
    }
    let tmp = proxy.home.join("cache/clientd/cas/tmp");
    for (blob, fault) in blobs.iter().zip(["SIGSTOP", "SIGKILL"]) {
        let digest = sha256(blob);
        let mut clients = proxy.clients().await;
        let read = tokio::spawn(async move { clients.read(PROXIED, &digest, 0, 0).await });
        // Wait until the fetch is under way: its temporary file has bytes.
        let start = Instant::now();
        while !std::fs::read_dir(&tmp)
            .unwrap()
            .any(|e| e.unwrap().metadata().unwrap().len() > 0)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no fetch started"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match fault {
            "SIGSTOP" => upstream.pause(),
            _ => upstream.signal(libc::SIGKILL),
        }
        let start = Instant::now();
        let err = read.await.unwrap().unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(err.code(), Code::Unavailable, "{fault}: {err:?}");
        assert!(
            !cas_file(&proxy, &digest).exists(),
            "{fault}: a partial blob was kept"
        );
        if fault == "SIGSTOP" {
            // Let it go on, and wait for the proxy's probe to find it answering again.
            upstream.resume();
            let start = Instant::now();
            while !cluster_state(&proxy).await.starts_with("up") {
                assert!(start.elapsed() < Duration::from_secs(10), "still down");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The proxy's only cluster's state, as `clientd stats` shows it.
async fn cluster_state(daemon: &Daemon) -> String {
    let response = pb::stats_client::StatsClient::new(daemon.channel().await)
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    response.clusters[0].state.clone()
}

#[tokio::test]
async fn a_corrupt_blob_from_the_cluster_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let data = pseudo_random(4, 200_000);
    let digest = sha256(&data);
    upstream
        .clients()
        .await
        .write(UPSTREAM, &data, 1 << 20)
        .await
        .unwrap();
    // Damage the upstream's copy behind its back: same size, other bytes.
    let file = cas_file(&upstream, &digest);
    let mut damaged = data.clone();
    damaged[100_000] ^= 1;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&file, &damaged).unwrap();

    let err = proxy
        .clients()
        .await
        .read(PROXIED, &digest, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("corrupt"), "{err:?}");
    assert!(!cas_file(&proxy, &digest).exists());
    assert_eq!(stats(&proxy).await["upstream_fetches"], 0);
}

#[tokio::test]
async fn an_interrupted_upload_leaves_no_blob_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let data = pseudo_random(5, 6 << 20);
    let digest = sha256(&data);
    let name = write_name(PROXIED, &digest);
    // Half the blob, then the client goes away without finishing.
    let half = write_requests(&name, &data[..3 << 20], 0, 1 << 20, false);
    let mut clients = proxy.clients().await;
    let _ = clients.bytestream.write(futures::stream::iter(half)).await;
    drop(clients);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!cas_file(&proxy, &digest).exists());
    let missing = upstream
        .clients()
        .await
        .find_missing(UPSTREAM, &[digest])
        .await;
    assert_eq!(missing, vec![digest]);
}

#[tokio::test]
async fn action_results_are_reused_while_their_outputs_are_local() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let output = pseudo_random(6, 5000);
    let output_digest = sha256(&output);
    let action = sha256(b"an action");
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(output_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut up = upstream.clients().await;
    up.write(UPSTREAM, &output, 5000).await.unwrap();
    up.ac
        .update_action_result(re::UpdateActionResultRequest {
            instance_name: UPSTREAM.into(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut clients = proxy.clients().await;
    let get = re::GetActionResultRequest {
        instance_name: PROXIED.into(),
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    // The output is not local yet: both answers come from the cluster.
    for _ in 0..2 {
        let got = clients.ac.get_action_result(get.clone()).await.unwrap();
        assert_eq!(got.into_inner(), result);
    }
    assert_eq!(stats(&proxy).await["action_results_local"], 0);
    // Once the output is read (and so local), the result is answered locally, even with the
    // cluster gone.
    clients.read(PROXIED, &output_digest, 0, 0).await.unwrap();
    upstream.stop();
    let got = clients.ac.get_action_result(get.clone()).await.unwrap();
    assert_eq!(got.into_inner(), result);
    assert_eq!(stats(&proxy).await["action_results_local"], 1);
}

/// `request` with Bazel's RequestMetadata header naming `invocation`.
fn in_invocation<T>(invocation: &str, message: T) -> tonic::Request<T> {
    use prost::Message;
    let metadata = re::RequestMetadata {
        tool_invocation_id: invocation.into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    request
}

/// What the record says invocation `id` read: (served, fetched).
async fn bytes_read(daemon: &Daemon, id: &str) -> (u64, u64) {
    let response = pb::stats_client::StatsClient::new(daemon.channel().await)
        .explain(pb::ExplainRequest {
            invocation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (response.bytes_served, response.bytes_fetched)
}

#[tokio::test]
async fn each_invocation_s_bytes_are_counted_by_source() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy) = pair(dir.path(), &[]);
    let (big, small) = (pseudo_random(7, 3 << 20), pseudo_random(8, 100));
    let mut up = upstream.clients().await;
    up.write(UPSTREAM, &big, 1 << 20).await.unwrap();
    up.write(UPSTREAM, &small, 100).await.unwrap();
    let mut clients = proxy.clients().await;
    let read = |invocation: &str| {
        in_invocation(
            invocation,
            clientd_proto::google::bytestream::ReadRequest {
                resource_name: format!("{PROXIED}/blobs/{}", sha256(&big).resource_tail()),
                ..Default::default()
            },
        )
    };
    let batch = |invocation: &str| {
        in_invocation(
            invocation,
            re::BatchReadBlobsRequest {
                instance_name: PROXIED.into(),
                digests: vec![sha256(&small).to_proto()],
                ..Default::default()
            },
        )
    };
    // Invocation one fetches both blobs from the cluster (a stream, and a batch).
    let mut stream = clients
        .bytestream
        .read(read("one"))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    clients.cas.batch_read_blobs(batch("one")).await.unwrap();
    let total = (big.len() + small.len()) as u64;
    assert_eq!(bytes_read(&proxy, "one").await, (total, total));
    // Invocation two reads them from the local CAS; a stream it abandons counts what it got.
    clients.cas.batch_read_blobs(batch("two")).await.unwrap();
    let mut stream = clients
        .bytestream
        .read(read("two"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().data.len() as u64;
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (served, fetched) = bytes_read(&proxy, "two").await;
        assert_eq!(fetched, 0);
        if served >= small.len() as u64 + first {
            break;
        }
        assert!(Instant::now() < deadline, "served {served}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A read that names no invocation is not recorded anywhere.
    clients.read(PROXIED, &sha256(&big), 0, 0).await.unwrap();
    assert_eq!(bytes_read(&proxy, "one").await, (total, total));
}

#[tokio::test]
async fn a_scrubbed_execute_whose_inputs_are_missing_is_forwarded_unscrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scrub.txtpb");
    std::fs::write(&config, "rules { matcher { mnemonic: \"Genrule\" } }\n").unwrap();
    let (_upstream, proxy) = pair(
        dir.path(),
        &["--scrubbing-config", config.to_str().unwrap()],
    );
    // The Action is in the CAS, its Command is not.
    let action = prost::Message::encode_to_vec(&re::Action {
        command_digest: Some(sha256(b"no such command").to_proto()),
        input_root_digest: Some(sha256(b"").to_proto()),
        ..Default::default()
    });
    let digest = sha256(&action);
    let mut clients = proxy.clients().await;
    assert_eq!(
        clients.batch_update(PROXIED, &[(digest, action)]).await,
        [0]
    );
    let mut execution = re::execution_client::ExecutionClient::new(proxy.channel().await);
    let execute = |mnemonic: &str| {
        let mut request = tonic::Request::new(re::ExecuteRequest {
            instance_name: PROXIED.into(),
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        });
        let metadata = re::RequestMetadata {
            action_mnemonic: mnemonic.into(),
            target_id: "//app:stamped".into(),
            ..Default::default()
        };
        request.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            tonic::metadata::MetadataValue::from_bytes(&prost::Message::encode_to_vec(&metadata)),
        );
        request
    };
    // Forwarded: the answer is the cluster's (a local cache upstream, which cannot execute).
    let err = execution.execute(execute("Genrule")).await.unwrap_err();
    assert!(err.message().contains("cannot execute"), "{err:?}");
    let counters = stats(&proxy).await;
    assert_eq!(counters["scrub_failures"], 1, "{counters:?}");
    assert_eq!(counters["scrubbed_misses"], 0, "{counters:?}");
    let log = proxy.log();
    assert!(
        log.contains(
            "matches scrubbing rule 1 but is forwarded unscrubbed: cannot read the Command"
        ),
        "{log}"
    );
    // An action no rule matches is not looked at.
    let err = execution.execute(execute("CppCompile")).await.unwrap_err();
    assert!(err.message().contains("cannot execute"), "{err:?}");
    assert_eq!(stats(&proxy).await["scrub_failures"], 1);
}

/// [`pair`], the proxy with an HTTP listener (its address is the third value) for `/metrics`.
fn pair_with_metrics(dir: &Path) -> (Daemon, Daemon, String) {
    let addr = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().to_string()
    };
    let (upstream, proxy) = pair(dir, &["--http-listen", &addr]);
    (upstream, proxy, addr)
}

/// Stores `blobs` in the cluster daemon, by BatchUpdateBlobs.
async fn store_in(upstream: &Daemon, blobs: &[(Digest, Vec<u8>)]) {
    let stored = upstream.clients().await.batch_update(UPSTREAM, blobs).await;
    assert!(stored.iter().all(|&code| code == 0), "{stored:?}");
}

#[tokio::test]
async fn a_batch_read_reaches_the_cluster_in_batch_reads_not_a_call_per_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy, addr) = pair_with_metrics(dir.path());
    let blobs: Vec<(Digest, Vec<u8>)> = (0..300)
        .map(|i| {
            let data = pseudo_random(1000 + i, 100 + i as usize);
            (sha256(&data), data)
        })
        .collect();
    store_in(&upstream, &blobs).await;
    let absent = sha256(b"in no store");
    let mut digests: Vec<re::Digest> = blobs.iter().map(|(d, _)| d.to_proto()).collect();
    digests.push(absent.to_proto());

    let mut clients = proxy.clients().await;
    for round in ["fetched", "local"] {
        let responses = clients
            .cas
            .batch_read_blobs(re::BatchReadBlobsRequest {
                instance_name: PROXIED.into(),
                digests: digests.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .responses;
        assert_eq!(responses.len(), blobs.len() + 1, "{round}");
        for (response, (digest, data)) in responses.iter().zip(&blobs) {
            assert_eq!(
                response.digest.as_ref(),
                Some(&digest.to_proto()),
                "{round}"
            );
            assert_eq!(response.status.as_ref().map_or(0, |s| s.code), 0, "{round}");
            assert!(response.data == *data, "{round}: {digest} has other bytes");
        }
        let last = responses.last().unwrap().status.as_ref().unwrap();
        assert_eq!(last.code, Code::NotFound as i32, "{round}");

        let page = metrics(&addr);
        // 300 blobs of about 250 bytes fit in one batch; the absent one is asked for once more
        // in the second round.
        let batches = upstream_calls(&page, "BatchReadBlobs");
        match round {
            "fetched" => assert_eq!(batches, 1, "{page}"),
            _ => assert_eq!(batches, 2, "only the absent blob again: {page}"),
        }
        assert_eq!(upstream_calls(&page, "ByteStream.Read"), 0, "{page}");
        assert!(!page.contains(" of blob"), "a series per blob: {page}");
    }
    assert_eq!(stats(&proxy).await["upstream_fetches"], 300);
}

#[tokio::test]
async fn get_tree_through_a_cluster_reads_each_level_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, proxy, addr) = pair_with_metrics(dir.path());
    // A root with 200 subdirectories, each with one of its own: three levels, 401 directories.
    let (root, blobs) = three_level_tree("", 200);
    store_in(&upstream, &blobs).await;

    let directories = proxy.clients().await.tree_directories(PROXIED, &root).await;
    assert_eq!(directories, 401);
    let page = metrics(&addr);
    // The root, the middle level, the leaves: a call per level, not per directory; and no
    // question first whether the root exists.
    assert_eq!(upstream_calls(&page, "BatchReadBlobs"), 3, "{page}");
    assert_eq!(upstream_calls(&page, "ByteStream.Read"), 0, "{page}");
    assert_eq!(upstream_calls(&page, "FindMissingBlobs"), 0, "{page}");
}
