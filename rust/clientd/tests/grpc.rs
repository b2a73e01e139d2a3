//! The gRPC front, end to end: a real daemon, a real tonic client, the UNIX socket.

mod common;

use clientd_digest::{Digest, DigestFunction};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream as bs;
use common::*;
use prost::Message;
use std::os::unix::fs::PermissionsExt;
use tonic::Code;

#[tokio::test]
async fn capabilities_tell_the_truth_and_unknown_instances_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let request = re::GetCapabilitiesRequest {
        instance_name: "local/p".into(),
    };
    let caps = c.caps.get_capabilities(request).await.unwrap().into_inner();
    let cache = caps.cache_capabilities.unwrap();
    for f in DigestFunction::ALL {
        assert!(cache.digest_functions.contains(&f.to_proto()), "{f}");
    }
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert!(!caps.execution_capabilities.unwrap().exec_enabled);

    let request = re::GetCapabilitiesRequest {
        instance_name: "cluster.example.com/x".into(),
    };
    let err = c.caps.get_capabilities(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"local\""), "{}", err.message());
    let missing = c.find_missing("local", &[sha256(b"x")]).await;
    assert_eq!(missing.len(), 1);
}

#[tokio::test]
async fn batch_update_stores_good_entries_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let good = b"good".to_vec();
    let other = b"other".to_vec();
    let blobs = vec![
        (sha256(&good), good.clone()),
        (sha256(b"what the digest says"), b"something else".to_vec()),
        (sha256(&other), other.clone()),
    ];
    let codes = c.batch_update("local/p", &blobs).await;
    assert_eq!(codes, vec![0, Code::InvalidArgument as i32, 0]);
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert_eq!(c.find_missing("local/p", &digests).await, vec![digests[1]]);
    // The local CAS is shared by every local instance.
    assert_eq!(c.find_missing("local/q", &digests).await, vec![digests[1]]);

    let request = re::BatchReadBlobsRequest {
        instance_name: "local".into(),
        digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let responses = c
        .cas
        .batch_read_blobs(request)
        .await
        .unwrap()
        .into_inner()
        .responses;
    let codes: Vec<i32> = responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, Code::NotFound as i32, 0]);
    assert_eq!(responses[0].data.as_ref(), good.as_slice());
    assert_eq!(responses[2].data.as_ref(), other.as_slice());

    // The empty blob always exists.
    assert!(c.find_missing("local", &[sha256(b"")]).await.is_empty());
}

#[tokio::test]
async fn other_digest_functions_are_verified_with_their_own_hash() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let data = b"blake3 data".to_vec();
    let digest = DigestFunction::Blake3.digest_of(&data);
    let request = re::BatchUpdateBlobsRequest {
        instance_name: "local".into(),
        requests: vec![re::batch_update_blobs_request::Request {
            digest: Some(digest.to_proto()),
            data: data.clone().into(),
            ..Default::default()
        }],
        digest_function: DigestFunction::Blake3.to_proto(),
    };
    let response = c
        .cas
        .batch_update_blobs(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    assert_eq!(c.read("local", &digest, 0, 0).await.unwrap(), data);
    // The same hex under SHA-256 is a different (absent) blob.
    let as_sha256 = Digest::parse(
        Some(DigestFunction::Sha256),
        &digest.hash_hex(),
        digest.size(),
    )
    .unwrap();
    assert_eq!(c.find_missing("local", &[as_sha256]).await.len(), 1);
}

#[tokio::test]
async fn sha256tree_blobs_are_verified_and_served_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let tree = DigestFunction::Sha256Tree;
    let function = tree.to_proto();
    // ByteStream: a blob of many chunks, named blobs/sha256tree/..., verified on commit.
    let big = pseudo_random(7, (3 << 20) + 5);
    let digest = tree.digest_of(&big);
    let name = write_name("local/t", &digest);
    assert!(name.contains("/blobs/sha256tree/"), "{name}");
    c.bytestream
        .write(futures::stream::iter(write_requests(
            &name,
            &big,
            0,
            64 << 10,
            true,
        )))
        .await
        .unwrap();
    assert_eq!(c.read("local/t", &digest, 0, 0).await.unwrap(), big);
    assert_eq!(
        c.read("local/t", &digest, 5000, 3).await.unwrap(),
        big[5000..5003]
    );
    // The SHA-256 of the same bytes under the sha256tree name does not verify.
    let wrong = Digest::parse(Some(tree), &sha256(&big).hash_hex(), digest.size()).unwrap();
    let name = write_name("local/t", &wrong);
    let err = c
        .bytestream
        .write(futures::stream::iter(write_requests(
            &name,
            &big,
            0,
            1 << 20,
            true,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hashes to"), "{err:?}");
    // Batch calls with digest_function SHA256TREE: a one-leaf blob (plain SHA-256 bytes, but
    // its own namespace) and a two-level one.
    let small = b"one leaf".to_vec();
    let medium = pseudo_random(8, 5000);
    let blobs = [
        (tree.digest_of(&small), small),
        (tree.digest_of(&medium), medium),
    ];
    assert_eq!(
        c.batch_update_in("local/t", Some(tree), &blobs).await,
        [0, 0]
    );
    let find = |function: i32| re::FindMissingBlobsRequest {
        instance_name: "local/t".into(),
        blob_digests: blobs
            .iter()
            .map(|(d, _)| d.to_proto())
            .chain([digest.to_proto()])
            .collect(),
        digest_function: function,
    };
    let missing = c
        .cas
        .find_missing_blobs(find(function))
        .await
        .unwrap()
        .into_inner();
    assert!(missing.missing_blob_digests.is_empty(), "{missing:?}");
    // Without the function the 64-digit hashes mean SHA-256: other blobs, absent.
    let missing = c
        .cas
        .find_missing_blobs(find(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing_blob_digests.len(), 3);
    let read = re::BatchReadBlobsRequest {
        instance_name: "local/t".into(),
        digests: blobs.iter().map(|(d, _)| d.to_proto()).collect(),
        digest_function: function,
        ..Default::default()
    };
    let response = c.cas.batch_read_blobs(read).await.unwrap().into_inner();
    for (got, (_, data)) in response.responses.iter().zip(&blobs) {
        assert_eq!(got.data.as_ref(), data.as_slice());
    }
}

#[tokio::test]
async fn bytestream_round_trip_with_offsets_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let data = pseudo_random(1, 10 << 20);
    let digest = sha256(&data);
    assert_eq!(
        c.write("local/p", &data, 64 << 10).await.unwrap(),
        data.len() as i64
    );
    assert_eq!(c.read("local/p", &digest, 0, 0).await.unwrap(), data);
    assert_eq!(
        c.read("local/p", &digest, 1000, 10).await.unwrap(),
        data[1000..1010]
    );
    assert_eq!(
        c.read("local/p", &digest, data.len() as i64, 0)
            .await
            .unwrap(),
        b""
    );
    let err = c
        .read("local/p", &digest, data.len() as i64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = c
        .read("local/p", &sha256(b"absent"), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Writing a blob that exists finishes at once with the full size.
    assert_eq!(
        c.write("local/p", &data, 1 << 20).await.unwrap(),
        data.len() as i64
    );
}

#[tokio::test]
async fn malformed_resource_names_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let hash = sha256(b"").hash_hex();
    let cases = [
        (format!("local/blobs/{hash}"), "a size"),
        (format!("local/blobs/{hash}/x"), "size"),
        (format!("local/actions/blobs/{hash}/0"), "reserved"),
        ("local/blobs/ABC/3".to_string(), "cannot infer"),
        (format!("local//blobs/{hash}/0"), "empty path segment"),
        (
            format!("local/compressed-blobs/zstd/{hash}/0"),
            "not supported",
        ),
        (
            format!("nowhere/blobs/{hash}/0"),
            "matches no configured prefix",
        ),
    ];
    for (name, why) in cases {
        let request = bs::ReadRequest {
            resource_name: name.clone(),
            ..Default::default()
        };
        let err = match c.bytestream.read(request).await {
            Err(e) => e,
            Ok(stream) => stream.into_inner().message().await.unwrap_err(),
        };
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{name}: {}",
            err.message()
        );
        assert!(err.message().contains(why), "{name}: {}", err.message());
    }
    let name = format!("local/uploads/x/blobs/{hash}/1");
    let requests = write_requests(&name, b"", 0, 1, true);
    let err = c
        .bytestream
        .write(futures::stream::iter(requests))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_writes_fail_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let data = pseudo_random(2, 3 << 20);
    let digest = sha256(&data);
    // Wrong hash: same size, different bytes.
    let mut tampered = data.clone();
    tampered[12345] ^= 1;
    let name = write_name("local", &digest);
    let err = c
        .bytestream
        .write(futures::stream::iter(write_requests(
            &name,
            &tampered,
            0,
            1 << 20,
            true,
        )))
        .await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hashes to"), "{}", err.message());
    // Wrong size: too many bytes, and too few.
    let mut longer = data.clone();
    longer.push(0);
    let name = write_name("local", &digest);
    let err = c
        .bytestream
        .write(futures::stream::iter(write_requests(
            &name,
            &longer,
            0,
            1 << 20,
            true,
        )))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
    let name = write_name("local", &digest);
    let short = &data[..data.len() - 1];
    let err = c
        .bytestream
        .write(futures::stream::iter(write_requests(
            &name,
            short,
            0,
            1 << 20,
            true,
        )))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.find_missing("local", &[digest]).await, vec![digest]);
    // An aborted write's temporary file is removed when its writer thread winds down.
    let tmp = dir.path().join("cache/clientd/cas/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "temporary files left behind"
    );
}

#[tokio::test]
async fn interrupted_writes_resume_from_the_committed_size() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let data = pseudo_random(3, 4 << 20);
    let digest = sha256(&data);
    let name = write_name("local/p", &digest);
    let half = data.len() / 2;
    let first = write_requests(&name, &data[..half], 0, 1 << 20, false);
    let err = c
        .bytestream
        .write(futures::stream::iter(first))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let status = c
        .bytestream
        .query_write_status(bs::QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.committed_size, status.complete),
        (half as i64, false)
    );
    assert_eq!(c.find_missing("local/p", &[digest]).await, vec![digest]);
    // The resumed Write's stream stays open after its first chunk: QueryWriteStatus answers at
    // once meanwhile (the Write holds the upload for its whole stream) with what has arrived.
    let rest = write_requests(&name, &data, half, 1 << 20, true);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(rest[0].clone()).unwrap();
    let mut writer = c.bytestream.clone();
    let write = tokio::spawn(async move { writer.write(rx).await });
    let probe = || {
        let mut query = c.bytestream.clone();
        let name = name.clone();
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                query.query_write_status(bs::QueryWriteStatusRequest {
                    resource_name: name,
                }),
            )
            .await
            .expect("QueryWriteStatus waited for the Write")
            .unwrap()
            .into_inner()
        }
    };
    let want = (half + rest[0].data.len()) as i64;
    let mut status = probe().await;
    for _ in 0..100 {
        if status.committed_size == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = probe().await;
    }
    assert_eq!((status.committed_size, status.complete), (want, false));
    for request in &rest[1..] {
        tx.unbounded_send(request.clone()).unwrap();
    }
    drop(tx);
    let done = write.await.unwrap().unwrap().into_inner();
    assert_eq!(done.committed_size, data.len() as i64);
    assert_eq!(c.read("local/p", &digest, 0, 0).await.unwrap(), data);
    let status = c
        .bytestream
        .query_write_status(bs::QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.committed_size, status.complete),
        (data.len() as i64, true)
    );
}

fn action_result_with(file: &Digest) -> re::ActionResult {
    re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(file.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn action_cache_namespaces_and_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let output = b"output".to_vec();
    let output_digest = sha256(&output);
    c.batch_update("local", &[(output_digest, output)]).await;
    let action = sha256(b"action");
    let result = action_result_with(&output_digest);
    let update = re::UpdateActionResultRequest {
        instance_name: "local/a".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    };
    c.ac.update_action_result(update).await.unwrap();
    let get = |instance: &str, action: &Digest| re::GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    let got =
        c.ac.get_action_result(get("local/a", &action))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(got, result);
    let err =
        c.ac.get_action_result(get("local/b", &action))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A result whose output is not in the CAS is a miss, so Bazel runs the action again.
    let incomplete = sha256(b"incomplete action");
    let update = re::UpdateActionResultRequest {
        instance_name: "local/a".into(),
        action_digest: Some(incomplete.to_proto()),
        action_result: Some(action_result_with(&sha256(b"never uploaded"))),
        ..Default::default()
    };
    c.ac.update_action_result(update).await.unwrap();
    let err =
        c.ac.get_action_result(get("local/a", &incomplete))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn get_tree_walks_the_tree_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    let leaf = re::Directory::default().encode_to_vec();
    let node = |name: &str, d: &Digest| re::DirectoryNode {
        name: name.into(),
        digest: Some(d.to_proto()),
    };
    let middle = re::Directory {
        directories: vec![node("leaf", &sha256(&leaf))],
        ..Default::default()
    };
    let middle = middle.encode_to_vec();
    // The root names the leaf twice (directly and via middle); it is sent once.
    let root = re::Directory {
        directories: vec![node("a", &sha256(&middle)), node("b", &sha256(&leaf))],
        ..Default::default()
    }
    .encode_to_vec();
    let blobs: Vec<(Digest, Vec<u8>)> = [&root, &middle, &leaf]
        .iter()
        .map(|b| (sha256(b), b.to_vec()))
        .collect();
    c.batch_update("local", &blobs).await;
    let request = |page_size, page_token: &str| re::GetTreeRequest {
        instance_name: "local".into(),
        root_digest: Some(sha256(&root).to_proto()),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    let mut stream = c.cas.get_tree(request(0, "")).await.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        all.extend(page.directories);
    }
    assert_eq!(all.len(), 3);
    let mut stream = c.cas.get_tree(request(1, "")).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.directories.len(), 1);
    assert_eq!(first.next_page_token, "1");
    let mut stream = c.cas.get_tree(request(5, "1")).await.unwrap().into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap().directories.len(),
        2
    );
    let missing = re::GetTreeRequest {
        root_digest: Some(sha256(b"nope").to_proto()),
        ..request(0, "")
    };
    assert_eq!(
        c.cas.get_tree(missing).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Three quarters of `cas.max_size_bytes` hold blobs with files of their own (the rest is for
/// packed small blobs): of 1.4 MB, 1.05 MB.
#[tokio::test]
async fn eviction_at_the_configured_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"cas": {"max_size_bytes": 1400000, "sync_writes": false}}"#;
    let daemon = Daemon::start(dir.path(), Some(config), &[]);
    let mut c = daemon.clients().await;
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(10 + i, 400_000)).collect();
    for blob in &blobs {
        c.write("local", blob, 1 << 16).await.unwrap();
    }
    let digests: Vec<Digest> = blobs.iter().map(|b| sha256(b)).collect();
    assert_eq!(c.find_missing("local", &digests).await, vec![digests[0]]);
    let err = c
        .write("local", &pseudo_random(20, 1_050_001), 1 << 16)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

/// Bytes of uploads in progress count against `cas.max_size_bytes`: a Write whose declared
/// size cannot fit is refused before any byte is stored, and interrupted uploads give their room
/// to a new one that needs it, so the bound holds on disk.
#[tokio::test]
async fn uploads_in_progress_count_against_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"cas": {"max_size_bytes": 16000000, "sync_writes": false}}"#;
    let daemon = Daemon::start(dir.path(), Some(config), &[]);
    let mut c = daemon.clients().await;
    let on_disk = || -> u64 {
        files_below(&dir.path().join("cache/clientd/cas"))
            .iter()
            .map(|meta| meta.len())
            .sum()
    };

    // Declares 64 MiB: refused at the first message.
    let big = pseudo_random(30, 64 << 20);
    let name = write_name("local/b", &sha256(&big));
    let first = write_requests(&name, &big[..1 << 20], 0, 1 << 20, false);
    let err = c
        .bytestream
        .write(futures::stream::iter(first))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert_eq!(on_disk(), 0);

    // Two 7 MB uploads interrupted half-way hold 14 MB of the 16; a third needs 7.
    for seed in [31, 32] {
        let data = pseudo_random(seed, 7_000_000);
        let name = write_name("local/b", &sha256(&data));
        let half = write_requests(&name, &data[..3_500_000], 0, 1 << 20, false);
        let err = c
            .bytestream
            .write(futures::stream::iter(half))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    let third = pseudo_random(33, 7_000_000);
    c.write("local/b", &third, 1 << 20).await.unwrap();
    assert_eq!(
        c.read("local/b", &sha256(&third), 0, 0).await.unwrap(),
        third
    );
    let mut used = on_disk();
    for _ in 0..100 {
        if used <= 16_000_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        used = on_disk();
    }
    assert!(used <= 16_000_000, "{used} bytes on disk");
}

#[tokio::test]
async fn socket_is_private_restart_keeps_blobs_and_sigterm_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let data = pseudo_random(4, 100_000);
    daemon
        .clients()
        .await
        .write("local", &data, 1 << 16)
        .await
        .unwrap();
    // A second daemon on the same cache directory refuses to start.
    let second = common::command(dir.path(), None, &["--tcp-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already using"));
    let socket = daemon.socket.clone();
    assert!(daemon.stop().success());
    assert!(!socket.exists(), "socket not removed at shutdown");
    let daemon = Daemon::start(dir.path(), None, &[]);
    let mut c = daemon.clients().await;
    assert_eq!(c.read("local", &sha256(&data), 0, 0).await.unwrap(), data);
}

#[tokio::test]
async fn tcp_listener_serves_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), None, &["--tcp-listen", "127.0.0.1:0"]);
    let line = wait_for_line(&daemon.stderr, "serving on grpc://");
    let url = line.split("grpc://").nth(1).unwrap().trim().to_string();
    let data = b"over tcp".to_vec();
    daemon
        .clients()
        .await
        .batch_update("local", &[(sha256(&data), data.clone())])
        .await;
    let channel = tonic::transport::Endpoint::try_from(format!("http://{url}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tcp = Clients::new(channel);
    assert_eq!(tcp.read("local", &sha256(&data), 0, 0).await.unwrap(), data);
}

#[test]
fn bad_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::command(dir.path(), Some(r#"{"cas": {"max_size_bytse": 1}}"#), &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("max_size_bytse"),
        "{stderr}"
    );
    let out = common::command(dir.path(), None, &["--tcp-listen", "0.0.0.0:8980"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
