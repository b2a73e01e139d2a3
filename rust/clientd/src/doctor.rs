//! `clientd doctor`: checks, in the order one depends on the next, that the daemon, its file
//! system, Bazel and the clusters work together, and says what to do about each failure. The
//! exit status is 0 only when no check failed (warnings do not count).

use crate::bazelrc;
use crate::config::Config;
use crate::daemon;
use crate::server::cluster_options;
use clientd_digest::{DigestFunction, InstanceName};
use clientd_proto::clientd::v1 as pb;
use clientd_upstream::{Cluster, RetryPolicy};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

/// The longest path a UNIX socket address holds (sun_path, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long a cluster gets to answer Capabilities.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);

enum Outcome {
    Ok(String),
    Warn(String),
    Fail { problem: String, fix: String },
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail {
        problem: problem.into(),
        fix: fix.into(),
    }
}

#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn show(&mut self, check: &str, outcome: Outcome) {
        match outcome {
            Outcome::Ok(detail) => println!("ok    {check}: {detail}"),
            Outcome::Warn(detail) => println!("warn  {check}: {detail}"),
            Outcome::Fail { problem, fix } => {
                self.failures += 1;
                println!("FAIL  {check}: {problem}\n      fix: {fix}");
            }
        }
    }
}

/// Runs every check and prints the report; true when none failed.
pub fn run(config: &Config) -> Result<bool, String> {
    let runtime = crate::runtime()?;
    let mut report = Report::default();
    let info = runtime.block_on(daemon::server_info(config));
    report.show("daemon", check_daemon(config, info.as_ref()));
    let mount = match &info {
        Some(info) => (!info.mount_path.is_empty()).then(|| PathBuf::from(&info.mount_path)),
        None => config
            .mount
            .enabled
            .then(|| config.mount_path().to_path_buf()),
    };
    report.show("mount", check_mount(mount.as_deref(), info.is_some()));
    report.show("fusermount3", check_fusermount(mount.is_some()));
    report.show("bazel", check_bazel(config));
    let clusters: Vec<(String, String)> = match &info {
        Some(info) => info
            .clusters
            .iter()
            .map(|c| (c.prefix.clone(), c.endpoint.clone()))
            .collect(),
        None => config
            .clusters
            .iter()
            .map(|(prefix, c)| (prefix.clone(), c.endpoint.clone()))
            .collect(),
    };
    if clusters.is_empty() {
        report.show(
            "clusters",
            Outcome::Ok("none configured (local cache only)".into()),
        );
    }
    for (prefix, endpoint) in clusters {
        let outcome = runtime.block_on(check_cluster(config, &prefix, &endpoint));
        report.show(&format!("cluster {prefix}"), outcome);
    }
    report.show("disk", check_disk(config));
    match report.failures {
        0 => println!("\nall checks passed"),
        n => println!("\n{n} check(s) failed"),
    }
    Ok(report.failures == 0)
}

fn check_daemon(config: &Config, info: Option<&pb::GetServerInfoResponse>) -> Outcome {
    let socket = config.unix_socket();
    let length = socket.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return fail(
            format!(
                "the socket path {} is {length} bytes; a UNIX socket address holds at most \
                 {MAX_SOCKET_PATH}",
                socket.display()
            ),
            "set grpc.unix_socket (or cache_dir) to a shorter path in the configuration",
        );
    }
    match info {
        Some(info) => {
            let tcp = match info.tcp_listeners.is_empty() {
                true => String::new(),
                false => format!(" and grpc://{}", info.tcp_listeners.join(", grpc://")),
            };
            Outcome::Ok(format!("answers on unix:{}{tcp}", info.unix_socket))
        }
        None if socket.exists() => fail(
            format!(
                "no daemon answers on unix:{} (the socket file is left from a daemon that did \
                 not exit cleanly, or another user's)",
                socket.display()
            ),
            "start it: `clientd serve`, or `systemctl --user restart clientd`",
        ),
        None => fail(
            format!("no daemon is running (no socket at {})", socket.display()),
            "start it: `clientd serve`, or `systemctl --user enable --now clientd`",
        ),
    }
}

fn check_mount(mount: Option<&Path>, running: bool) -> Outcome {
    let Some(path) = mount else {
        return Outcome::Ok("not used (mount.enabled is false, or --no-mount)".into());
    };
    if !clientd_fuse::is_mounted(path) {
        let fix = match running {
            true => "the daemon's mount is gone: restart it (`systemctl --user restart clientd`)",
            false => "start the daemon; it mounts the file system",
        };
        return fail(format!("nothing is mounted at {}", path.display()), fix);
    }
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Outcome::Ok(format!("{} ({})", path.display(), names.join(", ")))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => fail(
            format!(
                "{} is a stale mount: the daemon that mounted it is gone ({e})",
                path.display()
            ),
            "`clientd unmount`, then start the daemon (it also cleans up a stale mount itself)",
        ),
        Err(e) => fail(
            format!("{} is mounted but cannot be read: {e}", path.display()),
            "restart the daemon; if this persists, `clientd unmount` first",
        ),
    }
}

/// `name` in PATH, if it is there.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn check_fusermount(needed: bool) -> Outcome {
    match (in_path("fusermount3"), needed) {
        (Some(path), _) => Outcome::Ok(path.display().to_string()),
        (None, false) => Outcome::Ok("not found, and not needed (no mount)".into()),
        (None, true) => fail(
            "fusermount3 is not in PATH: the daemon cannot mount its file system",
            "install it (`apt-get install fuse3`), or run without the mount (`--no-mount`)",
        ),
    }
}

fn check_bazel(config: &Config) -> Outcome {
    if in_path("bazel").is_none() {
        return fail(
            "no `bazel` in PATH",
            "install Bazel (or Bazelisk as `bazel`), then `clientd bazelrc` writes its flags",
        );
    }
    let version = match bazelrc::bazel_version(None) {
        Ok(version) => version,
        Err(e) => return Outcome::Warn(e),
    };
    match bazelrc::render(config, &bazelrc::BazelrcArgs::for_version(version)) {
        Ok(text) => {
            let flags: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            Outcome::Ok(format!(
                "Bazel {version}; `clientd bazelrc --output clientd.bazelrc` writes:\n        {}",
                flags.join("\n        ")
            ))
        }
        Err(e) => fail(
            format!("Bazel {version}: `clientd bazelrc` cannot write its flags: {e}"),
            "see `clientd bazelrc --help`",
        ),
    }
}

async fn check_cluster(config: &Config, prefix: &str, endpoint: &str) -> Outcome {
    let cluster_config = config
        .clusters
        .get(prefix)
        .cloned()
        .unwrap_or_else(|| crate::config::ClusterConfig::new(endpoint.to_string()));
    let mut options = match cluster_options(prefix, &cluster_config) {
        Ok(options) => options,
        Err(e) => return fail(e, "fix the cluster's endpoint in the configuration"),
    };
    // One attempt, bounded: the doctor reports, it does not wait out retries.
    options.retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    options.connect_timeout = options.connect_timeout.min(CLUSTER_TIMEOUT);
    options.request_timeout = CLUSTER_TIMEOUT;
    let cluster = match Cluster::new(options) {
        Ok(cluster) => cluster,
        Err(e) => return fail(e.to_string(), "fix the cluster's configuration"),
    };
    let start = Instant::now();
    let answer = cluster.capabilities(&InstanceName::default()).await;
    let latency = start.elapsed().as_millis();
    match answer {
        Ok(capabilities) => {
            let functions: Vec<String> = capabilities
                .cache_capabilities
                .map(|c| c.digest_functions)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| DigestFunction::from_proto(f).ok().flatten())
                .map(|f| f.name().to_string())
                .collect();
            let execution = capabilities
                .execution_capabilities
                .is_some_and(|e| e.exec_enabled);
            Outcome::Ok(format!(
                "{endpoint} answers Capabilities in {latency} ms; digest functions clientd can \
                 use: {}; remote execution: {}",
                functions.join(", "),
                if execution { "yes" } else { "no" }
            ))
        }
        // It answered, and only the empty instance name (a probe) was not to its liking.
        Err(status) if matches!(status.code(), Code::InvalidArgument | Code::NotFound) => {
            Outcome::Ok(format!(
                "{endpoint} answers in {latency} ms (it refused the probe's empty instance name: {})",
                status.message()
            ))
        }
        Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
            fail(
                format!(
                    "{endpoint} refuses the credentials ({:?}: {})",
                    status.code(),
                    status.message()
                ),
                format!(
                    "set the header it wants in clusters.\"{prefix}\".headers in the \
                     configuration; an `authorization` header Bazel sends (--remote_header, a \
                     credential helper) is forwarded too, but this check cannot send it"
                ),
            )
        }
        Err(status) => fail(
            format!(
                "{endpoint} does not answer ({:?} after {latency} ms: {})",
                status.code(),
                status.message()
            ),
            format!(
                "check the endpoint and the network (VPN?); builds under {prefix}/ fail until \
                 it answers"
            ),
        ),
    }
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Bytes available to this user on the file system of `path`.
fn available(path: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn check_disk(config: &Config) -> Outcome {
    let dir = config.cache_dir();
    // The file system the cache directory is on (or will be, before the first start).
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let Some(free) = available(existing) else {
        return Outcome::Warn(format!(
            "cannot tell the free space of {}",
            existing.display()
        ));
    };
    // The caches fill up to their bounds by themselves; what is in them already counts.
    let bounds = config.cas.max_size_bytes() + config.action_cache.max_size_bytes();
    let used = disk_usage(&dir.join("cas")) + disk_usage(&dir.join("ac"));
    let detail = format!(
        "{} free for {}; the caches use {} of their {} bound (cas.max_size_bytes + \
         action_cache.max_size_bytes)",
        gib(free),
        dir.display(),
        gib(used),
        gib(bounds)
    );
    if free + used >= bounds {
        Outcome::Ok(detail)
    } else {
        fail(
            format!("{detail}: the disk fills up before the caches reach their bounds"),
            format!(
                "lower cas.max_size_bytes to at most {} bytes, or free {} on that disk",
                (free + used).saturating_sub(config.action_cache.max_size_bytes()),
                gib(bounds - free - used)
            ),
        )
    }
}
