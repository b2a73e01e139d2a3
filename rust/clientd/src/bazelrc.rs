//! `clientd bazelrc` and `clientd scrub-config`: the daemon's configuration turned into what
//! Bazel needs, written where `bazel run //:bazelrc` is run from (BUILD_WORKSPACE_DIRECTORY).

use crate::config::Config;
use crate::daemon;
use clap::Args;
use clientd_bazelrc::{fragment, BazelVersion, Connection, FragmentOptions};
use clientd_digest::{InstanceName, LOCAL_INSTANCE};
use clientd_scrub::{scrub_config, Pattern, ScrubOptions, ScrubbingConfig};
use clientd_store::Router;
use clientd_upstream::Endpoint;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Args, Default)]
pub struct BazelrcArgs {
    /// Instance name Bazel uses: `local/<name>` (the local cache) or `<cluster prefix>/<instance>`.
    /// Default: local/<workspace directory name>.
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    /// Only cache remotely (`--remote_cache`) even when the instance is a cluster's.
    #[arg(long)]
    cache_only: bool,
    /// The Bazel version the fragment is for, e.g. 7.2.1. Default: what `bazel --version` says.
    #[arg(long, value_name = "VERSION")]
    bazel_version: Option<String>,
    /// Reach the daemon by its first loopback TCP listener instead of its UNIX socket (for a Bazel
    /// that cannot use UNIX sockets, such as Debian's 4.2.3 without netty's epoll library).
    #[arg(long)]
    tcp: bool,
    /// Bazel's HTTP cache protocol instead of gRPC, for the local cache: on the socket
    /// (`--remote_cache=http://localhost/<instance>`, `--remote_proxy=unix:<socket>`), or with
    /// --tcp on the TCP listener. Bazel 4's HTTP client costs less per action. No activity record
    /// (`clientd explain`, the pages) for these builds.
    #[arg(long)]
    http: bool,
    /// Do not use the Output Service even where Bazel has it (7.2 and later).
    #[arg(long)]
    no_output_service: bool,
    /// Add `--experimental_remote_scrubbing_config` for this file (Bazel 7.0+, with
    /// --cache-only; for remote execution give it to the daemon: `serve --scrubbing-config`).
    #[arg(long, value_name = "FILE")]
    scrubbing_config: Option<PathBuf>,
    /// Write here instead of standard output. Under `bazel run`, the default is
    /// `clientd.bazelrc` in the workspace.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
pub struct ScrubArgs {
    /// Read FILE as `clientd serve --scrubbing-config` would, and print its rules as JSON (or
    /// what is wrong with it) instead of writing a config.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["mnemonics", "labels", "omit", "replace", "salt", "output"])]
    check: Option<PathBuf>,
    /// Regex of the mnemonics of stamped actions, e.g. `Genrule` (repeatable).
    #[arg(long = "mnemonic", value_name = "REGEX")]
    mnemonics: Vec<String>,
    /// Regex of the labels of stamped targets, e.g. `//release:.*` (repeatable).
    #[arg(long = "label", value_name = "REGEX")]
    labels: Vec<String>,
    /// Regex of input paths to leave out of the cache key (repeatable).
    /// Default: ^bazel-out/volatile-status\.txt$
    #[arg(long = "omit", value_name = "REGEX")]
    omit: Vec<String>,
    /// Rewrite the first match of SOURCE (a regex) in each argument to TARGET (repeatable).
    #[arg(long = "replace", value_name = "SOURCE=TARGET", value_parser = parse_replace)]
    replace: Vec<(String, String)>,
    /// A salt for the cache keys of the matched actions.
    #[arg(long, value_name = "S")]
    salt: Option<String>,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn parse_replace(text: &str) -> Result<(String, String), String> {
    let (source, target) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected SOURCE=TARGET"))?;
    Ok((source.to_string(), target.to_string()))
}

/// The workspace `bazel run` was started from, if any.
fn workspace() -> Option<PathBuf> {
    std::env::var_os("BUILD_WORKSPACE_DIRECTORY").map(PathBuf::from)
}

impl BazelrcArgs {
    /// The defaults `clientd bazelrc --bazel-version VERSION` has.
    pub fn for_version(version: BazelVersion) -> Self {
        BazelrcArgs {
            bazel_version: Some(version.to_string()),
            ..Default::default()
        }
    }
}

/// The Bazel version given, or what `bazel --version` in PATH says.
pub(crate) fn bazel_version(given: Option<&str>) -> Result<BazelVersion, String> {
    if let Some(text) = given {
        return BazelVersion::parse(text).map_err(|e| e.to_string());
    }
    let mut command = std::process::Command::new("bazel");
    command.arg("--version");
    if let Some(dir) = workspace() {
        command.current_dir(dir);
    }
    let output = command.output().map_err(|e| {
        format!("cannot run `bazel --version` ({e}); give the version with --bazel-version")
    })?;
    let printed = String::from_utf8_lossy(&output.stdout);
    BazelVersion::parse(&printed).map_err(|_| {
        format!(
            "`bazel --version` printed {:?}, which names no version (an unstamped build, such as \
             Debian's); give the version with --bazel-version",
            printed.trim()
        )
    })
}

fn write(text: &str, output: Option<&Path>) -> Result<(), String> {
    match output {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("clientd: wrote {}", path.display());
            Ok(())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// What the fragment needs of the daemon: the running daemon's own answer when one is running
/// (flags such as --tcp-listen and --cluster are only known to it), else the configuration file.
struct Daemon {
    socket: PathBuf,
    tcp_listeners: Vec<SocketAddr>,
    mount: Option<PathBuf>,
    /// Instance-name prefix and endpoint of each cluster.
    clusters: Vec<(String, String)>,
    /// The scrubbing configuration the daemon applies on Execute.
    scrubbing: Option<PathBuf>,
    running: bool,
}

impl Daemon {
    fn find(config: &Config) -> Result<Daemon, String> {
        let Some(info) = crate::runtime()?.block_on(daemon::server_info(config)) else {
            return Ok(Daemon {
                socket: config.unix_socket().to_path_buf(),
                tcp_listeners: config.grpc.tcp_listen.clone(),
                mount: config
                    .mount
                    .enabled
                    .then(|| config.mount_path().to_path_buf()),
                clusters: config
                    .clusters
                    .iter()
                    .map(|(prefix, c)| (prefix.clone(), c.endpoint.clone()))
                    .collect(),
                scrubbing: config.scrubbing_config.clone(),
                running: false,
            });
        };
        let tcp_listeners = info
            .tcp_listeners
            .iter()
            .map(|addr| {
                addr.parse()
                    .map_err(|e| format!("the daemon reported listener {addr:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Daemon {
            socket: PathBuf::from(info.unix_socket),
            tcp_listeners,
            mount: (!info.mount_path.is_empty()).then(|| PathBuf::from(info.mount_path)),
            clusters: info
                .clusters
                .into_iter()
                .map(|c| (c.prefix, c.endpoint))
                .collect(),
            scrubbing: (!info.scrubbing_config.is_empty())
                .then(|| PathBuf::from(info.scrubbing_config)),
            running: true,
        })
    }

    /// How Bazel reaches the daemon: its socket, or with `tcp` its first TCP listener.
    fn connection(&self, tcp: bool) -> Result<Connection, String> {
        if !tcp {
            return Ok(Connection::Unix(self.socket.clone()));
        }
        match (self.tcp_listeners.first(), self.running) {
            (Some(addr), _) => Ok(Connection::Tcp(*addr)),
            (None, true) => Err(
                "--tcp: the running daemon has no TCP listener; restart it with \
                 --tcp-listen 127.0.0.1:8980 (or set grpc.tcp_listen in its configuration)"
                    .into(),
            ),
            (None, false) => Err("--tcp: no daemon is running and its configuration has no \
                 grpc.tcp_listen address; start it with --tcp-listen 127.0.0.1:8980"
                .into()),
        }
    }
}

pub fn bazelrc(config: &Config, args: BazelrcArgs) -> Result<(), String> {
    let text = render(config, &args)?;
    let output = args
        .output
        .or_else(|| workspace().map(|w| w.join("clientd.bazelrc")));
    write(&text, output.as_deref())
}

/// The fragment `clientd bazelrc` writes for `args`.
pub(crate) fn render(config: &Config, args: &BazelrcArgs) -> Result<String, String> {
    let workspace = workspace();
    let instance = match args.instance.clone() {
        Some(name) => name,
        None => {
            let dir = workspace.clone().or_else(|| std::env::current_dir().ok());
            let name = dir
                .as_deref()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".into());
            format!("{LOCAL_INSTANCE}/{name}")
        }
    };
    let instance = InstanceName::new(&instance).map_err(|e| format!("--instance: {e}"))?;
    let daemon = Daemon::find(config)?;
    let mut routes: Vec<(InstanceName, Option<String>)> = vec![(InstanceName::local(), None)];
    for (prefix, endpoint) in &daemon.clusters {
        let prefix = InstanceName::new(prefix).map_err(|e| format!("the daemon's cluster: {e}"))?;
        routes.push((prefix, Some(endpoint.clone())));
    }
    let router = Router::new(routes);
    let (endpoint, rest) = router
        .route(&instance)
        .map_err(|e| format!("--instance: {e}"))?;
    let cluster = match endpoint.as_deref().map(Endpoint::parse) {
        Some(Ok(Endpoint::Grpc(authority) | Endpoint::Grpcs(authority))) => {
            Some((authority, rest.to_string()))
        }
        _ => None,
    };
    let scrubbing_config = match args.scrubbing_config.clone() {
        Some(path) if path.is_relative() => Some(workspace.clone().unwrap_or_default().join(path)),
        other => other,
    };
    let options = FragmentOptions {
        bazel: bazel_version(args.bazel_version.as_deref())?,
        connection: daemon.connection(args.tcp)?,
        http_cache: args.http,
        remote_execution: endpoint.is_some() && !args.cache_only,
        instance_name: instance,
        cluster,
        mount: daemon.mount,
        output_service: !args.no_output_service,
        scrubbing_config,
        daemon_scrubbing: daemon.scrubbing,
        digest_function: "sha256".into(),
    };
    fragment(&options).map_err(|e| e.to_string())
}

pub fn scrub(args: ScrubArgs) -> Result<(), String> {
    if let Some(path) = &args.check {
        return check_scrubbing_config(path);
    }
    let options = ScrubOptions {
        mnemonics: args.mnemonics,
        labels: args.labels,
        omit: args.omit,
        replace: args.replace,
        salt: args.salt,
    };
    let (text, warnings) = scrub_config(&options).map_err(|e| e.to_string())?;
    for warning in warnings {
        eprintln!("clientd: warning: {warning}");
    }
    write(&text, args.output.as_deref())
}

/// `clientd scrub-config --check FILE`: the rules as the daemon reads them.
fn check_scrubbing_config(path: &Path) -> Result<(), String> {
    let config = ScrubbingConfig::load(path).map_err(|e| e.to_string())?;
    let source = |p: &Option<Pattern>| p.as_ref().map_or("", |p| p.source.as_str()).to_string();
    let rules: Vec<_> = config
        .rules()
        .iter()
        .map(|rule| {
            let t = &rule.transform;
            serde_json::json!({
                "label": source(&rule.label),
                "mnemonic": source(&rule.mnemonic),
                "omitted_inputs": t.omitted_inputs.iter().map(|p| &p.source).collect::<Vec<_>>(),
                "arg_replacements": t.arg_replacements.iter()
                    .map(|(s, target)| serde_json::json!({"source": s.source, "target": target}))
                    .collect::<Vec<_>>(),
                "salt": t.salt,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "rules": rules }))
        .map_err(|e| e.to_string())?;
    println!("{text}");
    eprintln!(
        "clientd: {}: {} rule(s), as `clientd serve --scrubbing-config` reads them",
        path.display(),
        config.rules().len()
    );
    Ok(())
}
