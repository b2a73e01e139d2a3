//! The Bazel Remote Output Service, driven the way Bazel 7.2+ drives it (Bazel itself cannot run
//! here): StartBuild, StageArtifacts from several tasks at once, reads through the mount, local
//! outputs written in the mount, FinalizeBuild; a daemon restart; StartBuild and BatchStat of
//! everything; Clean. The cluster is a second, real clientd daemon, so what is fetched is counted.

mod common;

use clientd_digest::Digest;
use clientd_proto::bazel_output_service as pb;
use clientd_proto::bazel_output_service_rev2 as rev2;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::clientd::v1 as stats_pb;
use clientd_proto::prost_types::Any;
use common::{
    damage_packed_blob, file_locator, rev2_any, sha256, stage_files, wait_for_mount, Daemon,
    Unmount,
};
use pb::bazel_output_service_client::BazelOutputServiceClient;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const INSTANCE: &str = "up.example.com/local/x";
const BASE: &str = "0123456789abcdef0123456789abcdef";
const EXECROOT_OUT: &str = "/home/u/.cache/bazel/execroot/ws/bazel-out";
const FILES: usize = 10_000;

const SHA256: re::digest_function::Value = re::digest_function::Value::Sha256;

fn start_request(build_id: &str, mnt: &Path) -> pb::StartBuildRequest {
    start_request_for(build_id, mnt, INSTANCE, SHA256)
}

/// A StartBuild as Bazel sends it, for a build of `instance_name` with `function`.
fn start_request_for(
    build_id: &str,
    mnt: &Path,
    instance_name: &str,
    function: re::digest_function::Value,
) -> pb::StartBuildRequest {
    pb::StartBuildRequest {
        version: 1,
        output_base_id: BASE.into(),
        build_id: build_id.into(),
        args: Some(rev2_any(
            "StartBuildArgs",
            &rev2::StartBuildArgs {
                remote_cache: "unix:///unused".into(),
                instance_name: instance_name.into(),
                digest_function: function as i32,
            },
        )),
        output_path_prefix: mnt.join("outputs").to_string_lossy().into_owned(),
        output_path_aliases: HashMap::from([(EXECROOT_OUT.to_string(), ".".to_string())]),
    }
}

fn path_of(i: usize) -> String {
    format!("k8-fastbuild/bin/pkg{}/file{i}.txt", i % 100)
}

fn content_of(i: usize) -> Vec<u8> {
    format!("artifact {i}\n").into_bytes()
}

async fn counters(daemon: &Daemon) -> BTreeMap<String, u64> {
    stats_pb::stats_client::StatsClient::new(daemon.channel().await)
        .get_stats(stats_pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect()
}

fn start_proxy(home: &Path, upstream: &Daemon) -> (Daemon, PathBuf) {
    let mnt = home.join("mnt");
    let cluster = format!("up.example.com=unix:{}", upstream.socket.display());
    let daemon = Daemon::start(
        home,
        None,
        &["--cluster", &cluster, "--mount", mnt.to_str().unwrap()],
    );
    wait_for_mount(&mnt);
    (daemon, mnt)
}

async fn client(daemon: &Daemon) -> BazelOutputServiceClient<Channel> {
    BazelOutputServiceClient::new(daemon.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn codes(response: &pb::StageArtifactsResponse) -> Vec<i32> {
    response
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect()
}

#[tokio::test]
async fn bazel_call_sequence_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let mut up = upstream.clients().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..FILES)
        .map(|i| (sha256(&content_of(i)), content_of(i)))
        .collect();
    for batch in blobs.chunks(2000) {
        up.batch_update("local/x", batch).await;
    }
    // A tree artifact: dir/{a.txt, sub/b.txt}.
    let (a, b) = (b"tree a\n".to_vec(), b"tree b\n".to_vec());
    let sub = re::Directory {
        files: vec![re::FileNode {
            name: "b.txt".into(),
            digest: Some(sha256(&b).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = re::Directory {
        files: vec![re::FileNode {
            name: "a.txt".into(),
            digest: Some(sha256(&a).to_proto()),
            ..Default::default()
        }],
        directories: vec![re::DirectoryNode {
            name: "sub".into(),
            digest: Some(sha256(&sub.encode_to_vec()).to_proto()),
        }],
        ..Default::default()
    };
    let root_digest = sha256(&root.encode_to_vec());
    let tree = re::Tree {
        root: Some(root),
        children: vec![sub],
    }
    .encode_to_vec();
    let tree_digest = sha256(&tree);
    up.batch_update(
        "local/x",
        &[
            (sha256(&a), a.clone()),
            (sha256(&b), b.clone()),
            (tree_digest, tree),
        ],
    )
    .await;

    let (proxy, mnt) = start_proxy(&dir.path().join("proxy"), &upstream);
    let _unmount = Unmount(mnt.clone());
    let mut service = client(&proxy).await;

    // Unknown versions and bad args are refused.
    let mut bad = start_request("b0", &mnt);
    bad.version = 2;
    assert_eq!(
        service.start_build(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut bad = start_request("b0", &mnt);
    bad.args = Some(rev2_any(
        "FileArtifactLocator",
        &rev2::FileArtifactLocator::default(),
    ));
    assert_eq!(
        service.start_build(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let started = service
        .start_build(start_request("b1", &mnt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.output_path_suffix, BASE);
    // A new, empty output path: the contents are not a previous build's.
    assert_eq!(started.initial_output_path_contents, None);

    // 10,000 artifacts in batches of 1,000 from ten tasks at once.
    let stage_start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|t| {
            let mut service = service.clone();
            let blobs = blobs.clone();
            tokio::spawn(async move {
                let files = (t * 1000..(t + 1) * 1000).map(|i| (path_of(i), blobs[i].0));
                stage_files(&mut service, "b1", files).await
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().iter().all(|&c| c == 0));
    }
    let stage_time = stage_start.elapsed();
    let artifact = |path: &str, locator: Any| pb::stage_artifacts_request::Artifact {
        path: path.into(),
        locator: Some(locator),
    };
    let tree_locator = rev2_any(
        "TreeArtifactLocator",
        &rev2::TreeArtifactLocator {
            tree_digest: Some(tree_digest.to_proto()),
            root_directory_digest: Some(root_digest.to_proto()),
        },
    );
    let wrong_root = rev2_any(
        "TreeArtifactLocator",
        &rev2::TreeArtifactLocator {
            tree_digest: Some(tree_digest.to_proto()),
            root_directory_digest: Some(sha256(b"x").to_proto()),
        },
    );
    let response = service
        .stage_artifacts(pb::StageArtifactsRequest {
            build_id: "b1".into(),
            artifacts: vec![
                artifact("k8-fastbuild/bin/tree", tree_locator),
                artifact(
                    "k8-fastbuild/bin/missing",
                    file_locator(&sha256(b"nowhere")),
                ),
                artifact("../escape", file_locator(&blobs[0].0)),
                artifact(
                    "k8-fastbuild/bin/odd",
                    Any {
                        type_url: "type.googleapis.com/foo.Bar".into(),
                        value: vec![],
                    },
                ),
                artifact("k8-fastbuild/bin/badtree", wrong_root),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let c = |code: Code| code as i32;
    assert_eq!(
        codes(&response),
        vec![
            0,
            c(Code::NotFound),
            c(Code::InvalidArgument),
            c(Code::InvalidArgument),
            c(Code::InvalidArgument)
        ]
    );
    service
        .finalize_artifacts(pb::FinalizeArtifactsRequest {
            build_id: "b1".into(),
            artifacts: vec![],
        })
        .await
        .unwrap();

    // Reads through the mount; a local action's outputs written in the mount.
    let out = mnt.join("outputs").join(BASE);
    for i in [3, 14, 15, 92, 65] {
        assert_eq!(std::fs::read(out.join(path_of(i))).unwrap(), content_of(i));
    }
    assert_eq!(
        std::fs::read(out.join("k8-fastbuild/bin/tree/sub/b.txt")).unwrap(),
        b
    );
    // Re-staging a path the kernel has cached shows the new content at once.
    for i in [0, 1] {
        let restage = vec![artifact(
            "k8-fastbuild/bin/restaged",
            file_locator(&blobs[i].0),
        )];
        let response = service
            .stage_artifacts(pb::StageArtifactsRequest {
                build_id: "b1".into(),
                artifacts: restage,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(codes(&response), vec![0]);
        let read = std::fs::read(out.join("k8-fastbuild/bin/restaged")).unwrap();
        assert_eq!(read, content_of(i));
    }
    std::fs::create_dir_all(out.join("k8-fastbuild/bin/local")).unwrap();
    std::fs::write(
        out.join("k8-fastbuild/bin/local/out.txt"),
        "written locally\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        format!("{EXECROOT_OUT}/k8-fastbuild/bin/pkg1"),
        out.join("k8-fastbuild/bin/abs-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("pkg2", out.join("k8-fastbuild/bin/rel-link")).unwrap();
    // An absolute link through the output path itself (output_path_prefix/suffix), no alias.
    std::os::unix::fs::symlink(
        out.join("k8-fastbuild/bin/pkg3"),
        out.join("k8-fastbuild/bin/prefix-link"),
    )
    .unwrap();
    service
        .finalize_build(pb::FinalizeBuildRequest {
            build_id: "b1".into(),
            build_successful: true,
        })
        .await
        .unwrap();
    service
        .finalize_build(pb::FinalizeBuildRequest {
            build_id: "b1".into(),
            build_successful: true,
        })
        .await
        .expect("FinalizeBuild is idempotent");
    let fetched = counters(&proxy).await["upstream_fetches"];
    assert_eq!(
        fetched,
        1 + 5 + 1 + 2,
        "the tree message, five files, one tree file: nothing else"
    );

    // Restart both; one staged blob disappears from the cluster meanwhile.
    assert!(proxy.stop().success());
    drop(up);
    assert!(upstream.stop().success());
    let gone = 7;
    damage_packed_blob(&dir.path().join("up"), &blobs[gone].1);
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let (proxy, mnt) = start_proxy(&dir.path().join("proxy"), &upstream);
    let mut service = client(&proxy).await;
    let out = mnt.join("outputs").join(BASE);
    // A build the restarted daemon never saw (Bazel kept going across the restart): finalizing
    // its artifacts and the build succeeds, as bb_clientd does, instead of failing Bazel.
    service
        .finalize_artifacts(pb::FinalizeArtifactsRequest {
            build_id: "started before the restart".into(),
            artifacts: vec![],
        })
        .await
        .expect("FinalizeArtifacts of an unknown build");
    service
        .finalize_build(pb::FinalizeBuildRequest {
            build_id: "started before the restart".into(),
            build_successful: true,
        })
        .await
        .expect("FinalizeBuild of an unknown build");
    let started = service
        .start_build(start_request("b2", &mnt))
        .await
        .unwrap()
        .into_inner();
    // clientd does not track every change to an output path (no dirty bits), so, as the
    // protocol says, it claims nothing about the contents; the file whose blob is gone from the
    // cluster has been removed.
    assert_eq!(started.initial_output_path_contents, None);
    assert!(!out.join(path_of(gone)).exists());
    assert!(out.join(path_of(gone + 1)).exists());

    // BatchStat of everything: same tree, same digests, nothing fetched.
    let mut paths: Vec<String> = (0..FILES).map(path_of).collect();
    paths.extend(
        [
            "k8-fastbuild/bin/tree",
            "k8-fastbuild/bin/tree/sub/b.txt",
            "k8-fastbuild/bin/local/out.txt",
            "k8-fastbuild/bin/abs-link",
            "k8-fastbuild/bin/abs-link/file1.txt",
            "k8-fastbuild/bin/rel-link/file2.txt",
            "k8-fastbuild/bin/prefix-link/file3.txt",
            "k8-fastbuild/bin/nothing",
        ]
        .map(String::from),
    );
    let stat_start = Instant::now();
    let stats = service
        .batch_stat(pb::BatchStatRequest {
            build_id: "b2".into(),
            paths: paths.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    let stat_time = stat_start.elapsed();
    use pb::batch_stat_response::stat::Type;
    let digest_of = |stat: &Option<pb::batch_stat_response::Stat>| match stat
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        Some(Type::File(file)) => {
            let locator = file.locator.as_ref().expect("a locator");
            let digest = rev2::FileArtifactLocator::decode(&locator.value[..])
                .unwrap()
                .digest
                .unwrap();
            Some(Digest::from_proto(None, &digest).unwrap())
        }
        _ => None,
    };
    for i in 0..FILES {
        let expected = (i != gone).then_some(blobs[i].0);
        assert_eq!(digest_of(&stats[i].stat), expected, "{}", path_of(i));
    }
    let extra = &stats[FILES..];
    assert!(matches!(
        extra[0].stat.as_ref().unwrap().r#type,
        Some(Type::Directory(_))
    ));
    assert_eq!(digest_of(&extra[1].stat), Some(sha256(&b)));
    assert_eq!(
        digest_of(&extra[2].stat),
        Some(sha256(b"written locally\n"))
    );
    assert!(
        matches!(&extra[3].stat.as_ref().unwrap().r#type, Some(Type::Symlink(s)) if s.target.ends_with("bin/pkg1"))
    );
    assert_eq!(
        digest_of(&extra[4].stat),
        Some(blobs[1].0),
        "through an absolute symlink, via the alias"
    );
    assert_eq!(
        digest_of(&extra[5].stat),
        Some(blobs[2].0),
        "through a relative symlink"
    );
    assert_eq!(
        digest_of(&extra[6].stat),
        Some(blobs[3].0),
        "through an absolute symlink into the output path, via output_path_prefix"
    );
    assert!(extra[7].stat.is_none());
    assert_eq!(
        counters(&proxy).await["upstream_fetches"],
        0,
        "BatchStat reads nothing"
    );

    // The restored tree reads back through the mount.
    assert_eq!(std::fs::read(out.join(path_of(3))).unwrap(), content_of(3));
    assert_eq!(
        std::fs::read_to_string(out.join("k8-fastbuild/bin/local/out.txt")).unwrap(),
        "written locally\n"
    );
    assert!(!out.join(path_of(gone)).exists());

    // A local file's digest is kept until the file changes, then computed anew.
    let local = "k8-fastbuild/bin/local/out.txt".to_string();
    let stat_local = |service: &mut BazelOutputServiceClient<Channel>| {
        let request = pb::BatchStatRequest {
            build_id: "b2".into(),
            paths: vec![local.clone()],
        };
        let mut service = service.clone();
        async move {
            let response = service.batch_stat(request).await.unwrap().into_inner();
            digest_of(&response.responses[0].stat)
        }
    };
    assert_eq!(
        stat_local(&mut service).await,
        Some(sha256(b"written locally\n"))
    );
    std::fs::write(out.join(&local), "rewritten\n").unwrap();
    assert_eq!(stat_local(&mut service).await, Some(sha256(b"rewritten\n")));
    println!(
        "staged {FILES} artifacts in {stage_time:?} ({:.0}/s); BatchStat of {} paths in {stat_time:?} ({:.0}/s)",
        FILES as f64 / stage_time.as_secs_f64(),
        paths.len(),
        paths.len() as f64 / stat_time.as_secs_f64()
    );

    // A new StartBuild for the same output base finalizes the unfinished one; Clean removes it all.
    service
        .start_build(start_request("b3", &mnt))
        .await
        .unwrap();
    let err = service
        .stage_artifacts(pb::StageArtifactsRequest {
            build_id: "b2".into(),
            artifacts: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    service
        .clean(pb::CleanRequest {
            output_base_id: BASE.into(),
        })
        .await
        .unwrap();
    assert!(!out.exists());
    assert!(!dir
        .path()
        .join("proxy/cache/clientd/outputs")
        .join(BASE)
        .exists());
    assert!(proxy.stop().success());
}

/// Files staged for one instance name (or digest function) are gone when a build of another
/// starts: BatchStat would otherwise answer with digests that build cannot use.
#[tokio::test]
async fn files_staged_for_another_instance_or_function_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let daemon = Daemon::start(&home, None, &["--mount", mnt.to_str().unwrap()]);
    wait_for_mount(&mnt);
    let data = b"staged for local/x".to_vec();
    let digest = sha256(&data);
    daemon
        .clients()
        .await
        .batch_update("local/x", &[(digest, data)])
        .await;
    let mut service = client(&daemon).await;
    let start = |build_id: &str, instance_name: &str, function| {
        start_request_for(build_id, &mnt, instance_name, function)
    };
    let out = mnt.join("outputs").join(BASE).join("k8/bin/a");
    for (build, instance, function) in [
        ("same", "local/x", SHA256),
        ("other instance", "local/y", SHA256),
        (
            "other function",
            "local/x",
            re::digest_function::Value::Blake3,
        ),
    ] {
        service
            .start_build(start(&format!("{build} 1"), "local/x", SHA256))
            .await
            .unwrap();
        let staged = stage_files(
            &mut service,
            &format!("{build} 1"),
            [("k8/bin/a".to_string(), digest)],
        )
        .await;
        assert_eq!(staged, vec![0]);
        service
            .start_build(start(&format!("{build} 2"), instance, function))
            .await
            .unwrap();
        assert_eq!(out.exists(), build == "same", "{build}");
    }
    drop(service);
    assert!(daemon.stop().success());
}

/// A build with digest function SHA256TREE: staged files are found and read under that function,
/// and BatchStat hashes a file written in the mount with it.
#[tokio::test]
async fn a_sha256tree_build_stages_reads_and_stats_with_its_function() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let _unmount = Unmount(mnt.clone());
    let daemon = Daemon::start(&home, None, &["--mount", mnt.to_str().unwrap()]);
    wait_for_mount(&mnt);
    let tree = clientd_digest::DigestFunction::Sha256Tree;
    let data = common::pseudo_random(3, 5000);
    let digest = daemon
        .clients()
        .await
        .upload_as("local/x", tree, &data)
        .await;
    let mut service = client(&daemon).await;
    let function = re::digest_function::Value::Sha256tree;
    service
        .start_build(start_request_for("t", &mnt, "local/x", function))
        .await
        .unwrap();
    let staged = stage_files(&mut service, "t", [("k8/bin/a".to_string(), digest)]).await;
    assert_eq!(staged, vec![0]);
    let out = mnt.join("outputs").join(BASE).join("k8/bin");
    assert!(std::fs::read(out.join("a")).unwrap() == data);
    // A file a local action writes, 3 chunks and a bit.
    let local = common::pseudo_random(4, 3 * 1024 + 1);
    std::fs::write(out.join("local.bin"), &local).unwrap();
    let stats = service
        .batch_stat(pb::BatchStatRequest {
            build_id: "t".into(),
            paths: vec!["k8/bin/a".into(), "k8/bin/local.bin".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    use pb::batch_stat_response::stat::Type;
    let hashes: Vec<String> = stats
        .iter()
        .map(|s| match s.stat.as_ref().and_then(|s| s.r#type.as_ref()) {
            Some(Type::File(file)) => {
                let locator = file.locator.as_ref().expect("a locator");
                let locator = rev2::FileArtifactLocator::decode(&locator.value[..]).unwrap();
                locator.digest.unwrap().hash
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        hashes,
        [digest.hash_hex(), tree.digest_of(&local).hash_hex()]
    );
    drop(service);
    assert!(daemon.stop().success());
}

/// A TreeArtifactLocator naming a Tree larger than `outputs.max_tree_size_bytes` is refused with
/// RESOURCE_EXHAUSTED before the tree is read (it would be read into memory and expanded at once).
#[tokio::test]
async fn a_tree_over_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let config = r#"{"outputs": {"max_tree_size_bytes": 200}, "mount": {"enabled": false}}"#;
    let daemon = Daemon::start(&home, Some(config), &[]);
    let root = re::Directory {
        files: (0..20)
            .map(|i| re::FileNode {
                name: format!("file-with-a-long-name-{i}.txt"),
                digest: Some(sha256(b"x").to_proto()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let tree = re::Tree {
        root: Some(root),
        children: vec![],
    }
    .encode_to_vec();
    assert!(tree.len() > 200);
    let tree_digest = sha256(&tree);
    daemon
        .clients()
        .await
        .batch_update("local/x", &[(tree_digest, tree)])
        .await;
    let mut service = client(&daemon).await;
    service
        .start_build(start_request_for("b", &mnt, "local/x", SHA256))
        .await
        .unwrap();
    let response = service
        .stage_artifacts(pb::StageArtifactsRequest {
            build_id: "b".into(),
            artifacts: vec![pb::stage_artifacts_request::Artifact {
                path: "k8/bin/tree".into(),
                locator: Some(rev2_any(
                    "TreeArtifactLocator",
                    &rev2::TreeArtifactLocator {
                        tree_digest: Some(tree_digest.to_proto()),
                        root_directory_digest: None,
                    },
                )),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let status = response.responses[0].status.as_ref().unwrap();
    assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    assert!(status.message.contains("max_tree_size_bytes"), "{status:?}");
    drop(service);
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn output_paths_not_saved_within_the_age_limit_are_dropped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = b"kept for a while".to_vec();
    let digest = sha256(&data);
    let mnt = home.join("mnt");
    let daemon = Daemon::start(&home, None, &[]);
    daemon
        .clients()
        .await
        .batch_update("local/x", &[(digest, data)])
        .await;
    let mut service = client(&daemon).await;
    let mut start = start_request_for("old", &mnt, "local/x", SHA256);
    service.start_build(start.clone()).await.unwrap();
    let artifacts = vec![pb::stage_artifacts_request::Artifact {
        path: "k8/bin/a".into(),
        locator: Some(file_locator(&digest)),
    }];
    let staged = service
        .stage_artifacts(pb::StageArtifactsRequest {
            build_id: "old".into(),
            artifacts,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codes(&staged), vec![0]);
    service
        .finalize_build(pb::FinalizeBuildRequest {
            build_id: "old".into(),
            build_successful: true,
        })
        .await
        .unwrap();
    drop(service);
    assert!(daemon.stop().success());

    // Eight days pass (the default limit is seven).
    let state = home.join("cache/clientd/outputs").join(BASE).join("state");
    let eight_days_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&state)
        .unwrap()
        .set_modified(eight_days_ago)
        .unwrap();
    let daemon = Daemon::start(&home, None, &[]);
    assert!(
        daemon.log().contains("no state saved within"),
        "{}",
        daemon.log()
    );
    assert!(!state.exists());
    let mut service = client(&daemon).await;
    start.build_id = "new".into();
    service.start_build(start).await.unwrap();
    let stat = service
        .batch_stat(pb::BatchStatRequest {
            build_id: "new".into(),
            paths: vec!["k8/bin/a".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stat.responses[0].stat.is_none(), "the old tree is gone");
    drop(service);
    assert!(daemon.stop().success());
}
