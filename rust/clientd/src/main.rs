//! `clientd`: a local companion daemon for Bazel remote caching and execution.

mod bazelrc;
mod config;
mod daemon;
mod doctor;
mod explain;
mod server;
mod stats;

use clap::{Args, Parser, Subcommand};
use config::{Config, Env};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
/// A local companion for Bazel remote caching and execution: one UNIX socket in front of a bounded,
/// verified local cache and your remote clusters, with the CAS and bazel-out in a FUSE mount.
/// Without a command, runs the daemon (`clientd serve`).
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Serve(ServeArgs),
    /// Print the effective configuration as JSON, with every default filled in.
    Config(ConfigArgs),
    /// Print the running daemon's counters (cache hits and misses, bytes served and stored,
    /// fetches from clusters, scrubbed hits) and each cluster's state.
    Stats(ConfigArgs),
    /// Print (or write) a .bazelrc fragment for `--config=clientd`: the running daemon's socket (or
    /// TCP listener), mount and clusters, in the flags the user's Bazel version knows.
    Bazelrc {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: bazelrc::BazelrcArgs,
    },
    /// Print a remote_scrubbing.Config text proto for stamped builds: for `clientd serve
    /// --scrubbing-config` (any Bazel, remote execution) or Bazel 7's
    /// --experimental_remote_scrubbing_config.
    ScrubConfig(bazelrc::ScrubArgs),
    /// Say why the actions of the last build (or of INVOCATION, Bazel's invocation id) missed
    /// the cache, grouped by cause: changed arguments, environment variables, platform
    /// properties, input files.
    Explain(ExplainArgs),
    /// Check the setup and say what to fix: the daemon, its file system, fusermount3, Bazel and
    /// the flags for it, each cluster, the disk. Exit status 0 only when every check passes.
    Doctor(ConfigArgs),
    /// Remove the file system a daemon that is no longer running left mounted (after a crash:
    /// "Transport endpoint is not connected"). Does nothing when nothing is mounted.
    Unmount(UnmountArgs),
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The invocation (Bazel's tool_invocation_id, see --list); default: the most recent.
    invocation: Option<String>,
    /// List the invocations in the activity record instead.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct UnmountArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The mount point, if the daemon was started with --mount PATH.
    #[arg(long = "mount", value_name = "PATH")]
    mount: Option<PathBuf>,
}

#[derive(Args, Default)]
struct ConfigArgs {
    /// JSON configuration file. Default: $XDG_CONFIG_HOME/clientd/config.json if it exists,
    /// else the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also listen on this loopback TCP address, e.g. 127.0.0.1:8980 (repeatable).
    #[arg(long = "tcp-listen", value_name = "ADDR")]
    tcp_listen: Vec<SocketAddr>,
    /// Route instance names under PREFIX to the cluster at ENDPOINT, e.g.
    /// mycluster.example.com=grpcs://mycluster.example.com:443 (repeatable; overrides the config).
    #[arg(long = "cluster", value_name = "PREFIX=ENDPOINT", value_parser = parse_cluster)]
    clusters: Vec<(String, String)>,
    /// Mount the file system here instead of ~/clientd (or the config's mount.path).
    #[arg(long = "mount", value_name = "PATH", conflicts_with = "no_mount")]
    mount: Option<PathBuf>,
    /// Run without the file system.
    #[arg(long = "no-mount")]
    no_mount: bool,
    /// Serve /metrics (Prometheus) and a page of recent builds over HTTP on this loopback
    /// address, e.g. 127.0.0.1:9090 (overrides the config's http.listen).
    #[arg(long = "http-listen", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Scrub stamped actions' cache keys on Execute with this remote_scrubbing.Config (see
    /// `clientd scrub-config`; overrides the config's scrubbing_config).
    #[arg(long = "scrubbing-config", value_name = "FILE")]
    scrubbing_config: Option<PathBuf>,
}

fn parse_cluster(text: &str) -> Result<(String, String), String> {
    let (prefix, endpoint) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected PREFIX=ENDPOINT"))?;
    Ok((prefix.to_string(), endpoint.to_string()))
}

fn load(args: &ConfigArgs) -> Result<Config, String> {
    Config::load(args.config.as_deref(), &Env::from_process())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = load(&args.config)?;
    config.grpc.tcp_listen.extend(args.tcp_listen);
    if let Some(path) = args.mount {
        config.mount.enabled = true;
        config.mount.path = Some(path);
    }
    if args.no_mount {
        config.mount.enabled = false;
    }
    if let Some(addr) = args.http_listen {
        config.http.listen = Some(addr);
    }
    if let Some(path) = args.scrubbing_config {
        config.scrubbing_config = Some(path);
    }
    for (prefix, endpoint) in args.clusters {
        config
            .clusters
            .insert(prefix, config::ClusterConfig::new(endpoint));
    }
    config.validate()?;
    runtime()?.block_on(server::serve(config))
}

fn unmount(args: UnmountArgs) -> Result<(), String> {
    let config = load(&args.config)?;
    let path = args
        .mount
        .unwrap_or_else(|| config.mount_path().to_path_buf());
    if let Some(info) = runtime()?.block_on(daemon::server_info(&config)) {
        return Err(format!(
            "a daemon is running (unix:{}); stop it instead, it unmounts its file system itself \
             (SIGTERM, or `systemctl --user stop clientd`)",
            info.unix_socket
        ));
    }
    match clientd_fuse::unmount_stale(&path).map_err(|e| e.to_string())? {
        true => eprintln!("clientd: unmounted {}", path.display()),
        false => eprintln!("clientd: nothing is mounted at {}", path.display()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The doctor reports what it finds itself; the daemon's warnings would only repeat it.
    let default_filter = match cli.command {
        Some(Command::Doctor(_)) => "error",
        // fuser's own lines repeat ours ("Mounting ...").
        _ => "info,fuser=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Stats(args)) => {
            load(&args).and_then(|config| runtime()?.block_on(stats::print(&config)))
        }
        Some(Command::Bazelrc { config, args }) => {
            load(&config).and_then(|config| bazelrc::bazelrc(&config, args))
        }
        Some(Command::ScrubConfig(args)) => bazelrc::scrub(args),
        Some(Command::Doctor(args)) => match load(&args).and_then(|config| doctor::run(&config)) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Some(Command::Unmount(args)) => unmount(args),
        Some(Command::Explain(args)) => load(&args.config)
            .and_then(|config| explain::print(&config, args.invocation.as_deref(), args.list)),
        Some(Command::Config(args)) => load(&args).map(|config| {
            println!(
                "{}",
                serde_json::to_string_pretty(&config).expect("serializable")
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("clientd: {message}");
            ExitCode::FAILURE
        }
    }
}
