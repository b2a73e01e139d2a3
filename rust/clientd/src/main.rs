//! `clientd`: a local companion daemon for Bazel remote caching and execution.

mod bazelrc;
mod config;
mod daemon;
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
    /// Print the running daemon's counters: local hits, upstream fetches, bytes, FindMissingBlobs
    /// digests answered locally, and the configured clusters.
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser's own lines repeat ours ("Mounting ...").
                .unwrap_or_else(|_| "info,fuser=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
