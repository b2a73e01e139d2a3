//! The `--config=clientd` fragment: every line under `build:clientd` (or `common:clientd` where
//! Bazel ignores flags a command does not take, 7.0 and later), only flags the user's Bazel knows.

use crate::version::BazelVersion;
use clientd_digest::InstanceName;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How Bazel reaches the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Unix(PathBuf),
    /// A loopback listener, for Bazel builds that cannot use UNIX sockets.
    Tcp(SocketAddr),
}

impl Connection {
    /// Where Bazel's gRPC clients reach the daemon.
    fn uri(&self) -> String {
        match self {
            Connection::Unix(path) => format!("unix:{}", path.display()),
            Connection::Tcp(addr) => format!("grpc://{addr}"),
        }
    }

    /// The flags for Bazel's HTTP cache client and `instance_name` (the URL's path: Bazel sends
    /// no instance name over HTTP).
    fn http_cache(&self, instance_name: &InstanceName) -> Vec<String> {
        match self {
            Connection::Unix(path) => vec![
                format!("--remote_cache=http://localhost/{instance_name}"),
                format!("--remote_proxy=unix:{}", path.display()),
            ],
            Connection::Tcp(addr) => vec![format!("--remote_cache=http://{addr}/{instance_name}")],
        }
    }
}

/// What the fragment is for: the user's Bazel, the running daemon's configuration, the instance.
#[derive(Debug, Clone)]
pub struct FragmentOptions {
    pub bazel: BazelVersion,
    /// How Bazel reaches every service, the Output Service included (the daemon serves all of
    /// them on each listener).
    pub connection: Connection,
    /// The cache through Bazel's HTTP cache client rather than gRPC (the daemon serves both on
    /// each listener): Bazel 4's HTTP client costs it less CPU per action. Local instances only,
    /// and no activity record (HTTP requests carry no request metadata).
    pub http_cache: bool,
    /// `local/<name>` or `<cluster prefix>/<instance>`.
    pub instance_name: InstanceName,
    /// For an instance name routed to a cluster: the cluster's `host:port` and the instance name
    /// it sees, for bytestream:// URIs that stay valid on other machines.
    pub cluster: Option<(String, String)>,
    /// `--remote_executor` (actions run on the cluster) rather than `--remote_cache`.
    pub remote_execution: bool,
    /// The mount point, if the daemon mounts its file system.
    pub mount: Option<PathBuf>,
    /// Use the Output Service where Bazel has it (7.2 and later).
    pub output_service: bool,
    /// `--experimental_remote_scrubbing_config` (Bazel 7.0+, cache-only builds).
    pub scrubbing_config: Option<PathBuf>,
    /// The scrubbing configuration the daemon applies on Execute, if any.
    pub daemon_scrubbing: Option<PathBuf>,
    pub digest_function: String,
}

const OUTPUT_SERVICE: (u32, u32) = (7, 2);
const SCRUBBING: (u32, u32) = (7, 0);
const COMMON_IGNORES_UNKNOWN: (u32, u32) = (7, 0);
const BYTESTREAM_URI_PREFIX: (u32, u32) = (4, 1);

/// Why a combination of options cannot work; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error(
        "instance {0:?} is the local cache, which cannot execute actions: use --cache-only, or an \
         instance name under a configured cluster"
    )]
    LocalCannotExecute(InstanceName),
    #[error(
        "with remote execution Bazel runs the actions --experimental_remote_scrubbing_config \
         matches locally (7.1 and later; 7.0 refuses the combination): give the file to the \
         daemon instead (`clientd serve --scrubbing-config FILE`, or scrubbing_config in its \
         configuration), which scrubs on Execute for any Bazel. --scrubbing-config here is for \
         --cache-only builds"
    )]
    ScrubbingWithExecution,
    #[error("--experimental_remote_scrubbing_config needs Bazel 7.0 or later; this is Bazel {0}")]
    ScrubbingNeedsBazel7(BazelVersion),
    #[error(
        "--http: instance {0:?} is a cluster's; Bazel's HTTP cache protocol is served for the \
         local cache only (local/<name>), as it names blobs and actions by hash alone"
    )]
    HttpForCluster(InstanceName),
}

/// The fragment's text, or why the combination cannot work.
pub fn fragment(options: &FragmentOptions) -> Result<String, FragmentError> {
    let bazel = options.bazel;
    let at_least = |(major, minor): (u32, u32)| bazel.at_least(major, minor);
    if options.remote_execution && options.instance_name.is_local() {
        return Err(FragmentError::LocalCannotExecute(
            options.instance_name.clone(),
        ));
    }
    if options.scrubbing_config.is_some() && options.remote_execution {
        return Err(FragmentError::ScrubbingWithExecution);
    }
    if options.scrubbing_config.is_some() && !at_least(SCRUBBING) {
        return Err(FragmentError::ScrubbingNeedsBazel7(bazel));
    }
    let command = if at_least(COMMON_IGNORES_UNKNOWN) {
        "common"
    } else {
        "build"
    };
    let mut flags: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let service = options.connection.uri();
    if options.http_cache {
        if options.remote_execution || !options.instance_name.is_local() {
            return Err(FragmentError::HttpForCluster(options.instance_name.clone()));
        }
        flags.extend(options.connection.http_cache(&options.instance_name));
    } else {
        if options.remote_execution {
            flags.push(format!("--remote_executor={service}"));
        } else {
            flags.push(format!("--remote_cache={service}"));
        }
        flags.push(format!("--remote_instance_name={}", options.instance_name));
    }
    match &options.mount {
        Some(mount) if options.output_service && at_least(OUTPUT_SERVICE) => {
            flags.push(format!("--experimental_remote_output_service={service}"));
            flags.push(format!(
                "--experimental_remote_output_service_output_path_prefix={}",
                mount.join("outputs").display()
            ));
        }
        // Without the Output Service, outputs of remote actions become symlinks into cas/.
        Some(mount) if options.remote_execution => {
            flags.push(format!(
                "--remote_download_symlink_template={}/cas/{}/blobs/{}/executable/{{hash}}-{{size_bytes}}",
                mount.display(),
                options.instance_name,
                options.digest_function
            ));
            if at_least(COMMON_IGNORES_UNKNOWN) {
                notes.push(
                    "Bazel 7.0 and 7.1 download only top-level outputs by default, so only those \
                     become symlinks into the mount; add --remote_download_outputs=all for every output."
                        .into(),
                );
            }
        }
        _ => {}
    }
    if let Some((authority, instance)) = &options.cluster {
        if at_least(BYTESTREAM_URI_PREFIX) {
            let prefix = if instance.is_empty() {
                authority.clone()
            } else {
                format!("{authority}/{instance}")
            };
            flags.push(format!("--remote_bytestream_uri_prefix={prefix}"));
        }
    }
    if let Some(path) = &options.scrubbing_config {
        flags.push(format!(
            "--experimental_remote_scrubbing_config={}",
            path.display()
        ));
    }
    let local_cache = !options.remote_execution && options.instance_name.is_local();
    if local_cache && !options.http_cache && !at_least(OUTPUT_SERVICE) {
        notes.push(
            "Bazel's HTTP cache client costs it less time per action than its gRPC client \
             (measured with Bazel 4.2.3: builds took about a tenth less time): `clientd bazelrc \
             --http` writes flags for it on the same socket, but its calls carry no invocation \
             id, so `clientd explain` and the pages see none of its actions."
                .into(),
        );
    }
    match (&options.daemon_scrubbing, options.remote_execution) {
        (Some(path), true) => notes.push(format!(
            "The daemon scrubs the stamped actions {} matches on Execute: build with --stamp and \
             they still hit the cache. Do not add --experimental_remote_scrubbing_config as well: \
             Bazel 7.1 and later would run those actions locally.",
            path.display()
        )),
        (Some(path), false) => notes.push(format!(
            "The daemon's scrubbing ({}) applies to remote execution only; a cache-only build \
             needs Bazel 7's --experimental_remote_scrubbing_config (clientd bazelrc \
             --scrubbing-config FILE).",
            path.display()
        )),
        (None, _) => {}
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `clientd bazelrc` for Bazel {bazel}; use with --config=clientd."
    );
    let _ = writeln!(out, "# Regenerate when the daemon's configuration changes.");
    for note in notes {
        let _ = writeln!(out, "# {note}");
    }
    for flag in flags {
        let _ = writeln!(out, "{command}:clientd {flag}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(version: &str) -> FragmentOptions {
        FragmentOptions {
            bazel: BazelVersion::parse(version).unwrap(),
            connection: Connection::Unix("/home/u/.cache/clientd/grpc".into()),
            http_cache: false,
            instance_name: "mycluster.example.com/hello".parse().unwrap(),
            cluster: Some(("mycluster.example.com:443".into(), "hello".into())),
            remote_execution: true,
            mount: Some("/home/u/clientd".into()),
            output_service: true,
            scrubbing_config: None,
            daemon_scrubbing: None,
            digest_function: "sha256".into(),
        }
    }

    fn flags(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn each_bazel_version_gets_only_flags_it_knows() {
        let v4 = fragment(&options("4.2.3")).unwrap();
        assert_eq!(
            flags(&v4),
            [
                "build:clientd --remote_executor=unix:/home/u/.cache/clientd/grpc",
                "build:clientd --remote_instance_name=mycluster.example.com/hello",
                "build:clientd --remote_download_symlink_template=/home/u/clientd/cas/mycluster.example.com/hello/blobs/sha256/executable/{hash}-{size_bytes}",
                "build:clientd --remote_bytestream_uri_prefix=mycluster.example.com:443/hello",
            ]
        );
        let v6 = fragment(&options("6.5.0")).unwrap();
        assert!(flags(&v6).iter().all(|l| l.starts_with("build:clientd ")));
        assert!(v6.contains("--remote_download_symlink_template="));
        assert!(!v6.contains("output_service"));
        let v70 = fragment(&options("7.0.2")).unwrap();
        assert!(flags(&v70).iter().all(|l| l.starts_with("common:clientd ")));
        assert!(v70.contains("# Bazel 7.0 and 7.1 download only top-level outputs"));
        assert!(!v6.contains("top-level outputs"));
        assert!(
            v70.contains("--remote_download_symlink_template=") && !v70.contains("output_service")
        );
        for version in ["7.2.0", "8.1.1"] {
            let text = fragment(&options(version)).unwrap();
            assert!(text.contains(
                "common:clientd --experimental_remote_output_service=unix:/home/u/.cache/clientd/grpc\n"
            ));
            assert!(text.contains(
                "common:clientd --experimental_remote_output_service_output_path_prefix=/home/u/clientd/outputs\n"
            ));
            assert!(!text.contains("symlink_template"), "{text}");
        }
        let v40 = fragment(&options("4.0.0")).unwrap();
        assert!(!v40.contains("bytestream_uri_prefix"));
    }

    #[test]
    fn cache_only_local_and_scrubbing() {
        let mut local = options("7.2.0");
        local.instance_name = "local/myproject".parse().unwrap();
        local.cluster = None;
        assert!(fragment(&local)
            .unwrap_err()
            .to_string()
            .contains("cannot execute"));
        local.remote_execution = false;
        local.mount = None;
        let text = fragment(&local).unwrap();
        assert_eq!(
            flags(&text),
            [
                "common:clientd --remote_cache=unix:/home/u/.cache/clientd/grpc",
                "common:clientd --remote_instance_name=local/myproject",
            ]
        );
        let mut tcp = local.clone();
        tcp.connection = Connection::Tcp("127.0.0.1:8980".parse().unwrap());
        assert!(fragment(&tcp)
            .unwrap()
            .contains("--remote_cache=grpc://127.0.0.1:8980\n"));
        // The Output Service is served on every listener: over TCP it is reached there too.
        tcp.mount = Some("/home/u/clientd".into());
        let text = fragment(&tcp).unwrap();
        assert!(text.contains(
            "common:clientd --experimental_remote_output_service=grpc://127.0.0.1:8980\n"
        ));
        assert!(!text.contains("unix:"), "{text}");
        // Bazel's HTTP cache client through the socket; its Output Service is gRPC's.
        let mut http = local.clone();
        http.http_cache = true;
        http.mount = Some("/home/u/clientd".into());
        assert_eq!(
            &flags(&fragment(&http).unwrap())[..2],
            [
                "common:clientd --remote_cache=http://localhost/local/myproject",
                "common:clientd --remote_proxy=unix:/home/u/.cache/clientd/grpc",
            ]
        );
        assert!(fragment(&http)
            .unwrap()
            .contains("--experimental_remote_output_service=unix:/home/u/.cache/clientd/grpc\n"));
        let mut http_tcp = http.clone();
        http_tcp.connection = Connection::Tcp("127.0.0.1:8980".parse().unwrap());
        assert_eq!(
            flags(&fragment(&http_tcp).unwrap())[0],
            "common:clientd --remote_cache=http://127.0.0.1:8980/local/myproject"
        );
        http.instance_name = "mycluster.example.com/hello".parse().unwrap();
        assert!(fragment(&http)
            .unwrap_err()
            .to_string()
            .contains("local cache only"));
        // Bazel before 7.2 with the local cache over gRPC is told of --http, and only then.
        let mut old_grpc = local.clone();
        old_grpc.bazel = BazelVersion::parse("4.2.3").unwrap();
        assert!(fragment(&old_grpc)
            .unwrap()
            .contains("`clientd bazelrc --http`"));
        let mut old_http = old_grpc.clone();
        old_http.http_cache = true;
        for quiet in [&local, &old_http] {
            assert!(!fragment(quiet)
                .unwrap()
                .contains("`clientd bazelrc --http`"));
        }
        let mut scrub = local.clone();
        scrub.scrubbing_config = Some("/ws/scrub.txtpb".into());
        assert!(fragment(&scrub)
            .unwrap()
            .contains("common:clientd --experimental_remote_scrubbing_config=/ws/scrub.txtpb\n"));
        scrub.bazel = BazelVersion::new(6, 4, 0);
        assert!(fragment(&scrub).unwrap_err().to_string().contains("7.0"));
    }

    #[test]
    fn scrubbing_by_the_daemon_or_by_bazel() {
        let mut remote = options("8.1.1");
        remote.daemon_scrubbing = Some("/ws/scrub.txtpb".into());
        let text = fragment(&remote).unwrap();
        assert!(text.contains(
            "# The daemon scrubs the stamped actions /ws/scrub.txtpb matches on Execute"
        ));
        assert!(text.contains("Bazel 7.1 and later would run those actions locally"));
        assert!(!text.contains("--experimental_remote_scrubbing_config="));
        // Bazel's own scrubbing with remote execution runs the actions locally: refused.
        remote.scrubbing_config = Some("/ws/scrub.txtpb".into());
        let err = fragment(&remote).unwrap_err();
        assert_eq!(err, FragmentError::ScrubbingWithExecution);
        assert!(
            err.to_string()
                .contains("clientd serve --scrubbing-config FILE"),
            "{err}"
        );
        let mut cache_only = options("4.2.3");
        cache_only.remote_execution = false;
        cache_only.daemon_scrubbing = Some("/ws/scrub.txtpb".into());
        let text = fragment(&cache_only).unwrap();
        assert!(text.contains("applies to remote execution only"), "{text}");
    }
}
