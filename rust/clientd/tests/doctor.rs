//! `clientd doctor` against a healthy daemon (mounted, a real clientd as its cluster), and against
//! each failure it names: no daemon, a stale mount after a crash, fusermount3 and Bazel missing
//! from PATH, a cluster that does not answer, one that refuses the credentials, a disk too small
//! for the configured bounds.

mod common;

use clientd_proto::build::bazel::remote::execution::v2 as re;
use common::{cli, wait_for_mount, Daemon, Unmount};
use std::path::Path;
use tonic::{Request, Response, Status};

/// Runs `clientd doctor [--config FILE]` with PATH set to `path` (None: this process's PATH);
/// its exit status and standard output.
fn doctor(home: &Path, config: Option<&Path>, path: Option<&Path>) -> (bool, String) {
    let mut command = cli(home, &["doctor"]);
    command.env_remove("RUST_LOG");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}{stderr}"))
}

fn has_line(report: &str, start: &str) -> bool {
    report.lines().any(|line| line.starts_with(start))
}

#[test]
fn a_healthy_daemon_passes_and_missing_tools_fail() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Daemon::start(&dir.path().join("up"), None, &[]);
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let _unmount = Unmount(mnt.clone());
    let cluster = format!("up.example.com=unix:{}", upstream.socket.display());
    // A small bound, so that the disk check passes on any test machine.
    let config_text = r#"{"cas": {"max_size_bytes": 1073741824}}"#;
    let daemon = Daemon::start(
        &home,
        Some(config_text),
        &["--mount", mnt.to_str().unwrap(), "--cluster", &cluster],
    );
    wait_for_mount(&mnt);
    let config = home.join("config.json");
    let (passed, report) = doctor(&home, Some(&config), None);
    assert!(passed, "{report}");
    for line in [
        "ok    daemon: answers on unix:",
        "ok    mount: ",
        "ok    fusermount3: ",
        "ok    cluster up.example.com: unix:",
        "ok    disk: ",
    ] {
        assert!(has_line(&report, line), "no line {line:?} in:\n{report}");
    }
    assert!(report.contains("(cas, outputs, scratch)"), "{report}");
    assert!(report.contains("all checks passed"), "{report}");
    // Debian's Bazel names no version: a warning, not a failure. A stamped Bazel gets its flags.
    assert!(
        has_line(&report, "warn  bazel: ") || has_line(&report, "ok    bazel: Bazel "),
        "{report}"
    );

    // Without fusermount3 and Bazel in PATH.
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let (passed, report) = doctor(&home, Some(&config), Some(&empty));
    assert!(!passed, "{report}");
    assert!(
        has_line(&report, "FAIL  fusermount3: fusermount3 is not in PATH"),
        "{report}"
    );
    assert!(
        report.contains("fix: install it (`apt-get install fuse3`)"),
        "{report}"
    );
    assert!(
        has_line(&report, "FAIL  bazel: no `bazel` in PATH"),
        "{report}"
    );
    assert!(report.contains("2 check(s) failed"), "{report}");
    drop(daemon);
}

#[test]
fn a_crash_leaves_a_stale_mount_that_doctor_names_and_unmount_removes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = home.join("mnt");
    let _unmount = Unmount(mnt.clone());
    let config = home.join("config.json");
    let text = format!(r#"{{"mount": {{"path": "{}"}}}}"#, mnt.display());
    let daemon = Daemon::start(&home, Some(&text), &["--mount", mnt.to_str().unwrap()]);
    wait_for_mount(&mnt);
    daemon.kill9();
    let (passed, report) = doctor(&home, Some(&config), None);
    assert!(!passed, "{report}");
    assert!(
        has_line(&report, "FAIL  daemon: no daemon answers"),
        "{report}"
    );
    assert!(report.contains("the socket file is left"), "{report}");
    assert!(has_line(&report, "FAIL  mount: "), "{report}");
    assert!(report.contains("is a stale mount"), "{report}");
    assert!(report.contains("fix: `clientd unmount`"), "{report}");
    // `clientd unmount` removes it; a second time there is nothing to do.
    for _ in 0..2 {
        let output = cli(&home, &["unmount", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let (_, report) = doctor(&home, Some(&config), None);
    assert!(report.contains("nothing is mounted at"), "{report}");
}

/// A cluster that refuses every call's credentials.
struct Refusing;

#[tonic::async_trait]
impl re::capabilities_server::Capabilities for Refusing {
    async fn get_capabilities(
        &self,
        _: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        Err(Status::unauthenticated("token expired"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_daemon_dead_and_refusing_clusters_and_a_small_disk_fail() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(re::capabilities_server::CapabilitiesServer::new(Refusing))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("config.json");
    // Port 1 on loopback: nothing listens there. A CAS bound of 1 PiB: no disk has that.
    let text = format!(
        r#"{{"cas": {{"max_size_bytes": 1125899906842624}},
             "clusters": {{"dead.example.com": {{"endpoint": "grpc://127.0.0.1:1"}},
                           "refusing.example.com": {{"endpoint": "grpc://{refusing}"}}}}}}"#
    );
    std::fs::write(&config, text).unwrap();
    let home2 = home.clone();
    let (passed, report) = tokio::task::spawn_blocking(move || doctor(&home2, Some(&config), None))
        .await
        .unwrap();
    assert!(!passed, "{report}");
    assert!(
        has_line(&report, "FAIL  daemon: no daemon is running"),
        "{report}"
    );
    assert!(
        report.contains("fix: start it: `clientd serve`"),
        "{report}"
    );
    assert!(
        has_line(&report, "FAIL  mount: nothing is mounted at"),
        "{report}"
    );
    assert!(
        has_line(
            &report,
            "FAIL  cluster dead.example.com: grpc://127.0.0.1:1 does not answer"
        ),
        "{report}"
    );
    assert!(
        has_line(&report, "FAIL  cluster refusing.example.com: "),
        "{report}"
    );
    assert!(
        report.contains("refuses the credentials (Unauthenticated: "),
        "{report}"
    );
    assert!(report.contains("token expired"), "{report}");
    assert!(has_line(&report, "FAIL  disk: "), "{report}");
    assert!(
        report.contains("fix: lower cas.max_size_bytes to at most"),
        "{report}"
    );
}
