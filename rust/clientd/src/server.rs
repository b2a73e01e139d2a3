//! Turns a [`Config`] into running stores and gRPC listeners. The composition below is the
//! daemon's architecture at a glance.

use crate::config::{ClusterConfig, Config};
use clientd_activity::ActivityLog;
use clientd_digest::{DigestFunction, InstanceName};
use clientd_grpc::{
    served_capabilities, split_tcp, split_unix, ActionCacheService, ByteStreamService,
    CapabilitiesService, CasService, Clusters, ExecutionService, ForwardHeadersLayer, Insight,
    MessageLimitLayer, Recorder, Scrubbing, ServerInfo, StatsService, TimingLayer,
    MAX_MESSAGE_BYTES,
};
use clientd_outputs::OutputService;
use clientd_proto::bazel_output_service::bazel_output_service_server::BazelOutputServiceServer;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::clientd::v1::stats_server::StatsServer;
use clientd_proto::google::bytestream::byte_stream_server::ByteStreamServer;
use clientd_rest::RestCache;
use clientd_scrub::ScrubbingConfig;
use clientd_store::{
    ActionCache, ActionResultCaching, Backend, BlobStore, Clock, CompletenessChecking,
    ConcurrencyLimiting, Demultiplexing, DiskLruOptions, ExistenceCaching, LocalActionCache,
    LocalCas, ReadCaching, Router, Stats, SystemClock,
};
use clientd_upstream::{
    Cluster, ClusterOptions, Endpoint, Latency, RetryPolicy, UpstreamActionCache, UpstreamCas,
};
use clientd_vfs::{CasView, DigestFunctions, Pool, Routing, Vfs};
use clientd_web::Web;
use re::action_cache_server::ActionCacheServer;
use re::capabilities_server::CapabilitiesServer;
use re::content_addressable_storage_server::ContentAddressableStorageServer;
use re::execution_server::ExecutionServer;
use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tonic::service::Routes;
use tonic::transport::Server;

/// HTTP/2 flow-control windows. The 64 KiB protocol default costs a round trip per 64 KiB, which
/// halves large transfers and slows a 10,000-digest FindMissingBlobs (about 700 KB) several-fold.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame clients may send. At the protocol's 16 KiB default an upload costs a
/// write and a read system call, and a copy into the message buffer, per 16 KiB.
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// How long in-flight calls get to finish after SIGINT/SIGTERM before the daemon exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the gRPC front serves from.
pub struct Composition {
    /// Storage by instance-name prefix.
    pub stores: Arc<Demultiplexing>,
    /// Capabilities and Execution by instance-name prefix (None: the local cache).
    pub clusters: Arc<Clusters>,
    pub stats: Arc<Stats>,
    /// The local CAS every route shares; the file system hands out its files.
    pub local_cas: Arc<LocalCas>,
    /// Scrubbed keys for stamped actions on Execute, when configured.
    pub scrubbing: Option<Arc<Scrubbing>>,
    /// The activity record, unless activity.max_invocations is 0.
    pub activity: Option<Arc<ActivityLog>>,
}

/// The stores, composed: `local` and `local/...` go to the local CAS and action cache; each
/// cluster prefix goes to its cluster, with the local CAS as a read cache in front, and an
/// existence cache and a concurrency limit between them.
pub fn compose(config: &Config, clock: Arc<dyn Clock>) -> Result<Composition, String> {
    let cache_dir = config.cache_dir();
    let open_error = |what: &str, e: std::io::Error| {
        format!("cannot open the {what} under {}: {e}", cache_dir.display())
    };
    let local: Arc<LocalCas> = Arc::new(
        LocalCas::open(&cache_dir.join("cas"), options(&config.cas), clock.clone())
            .map_err(|e| open_error("local CAS", e))?,
    );
    let local_cas: Arc<dyn BlobStore> = local.clone();
    // One namespace per instance name: `local/...` entries and scrubbed results for clusters'
    // instances share it without meeting.
    let action_results: Arc<dyn ActionCache> = Arc::new(
        LocalActionCache::open(
            &cache_dir.join("ac"),
            options(&config.action_cache),
            clock.clone(),
        )
        .map_err(|e| open_error("local action cache", e))?,
    );
    let local_action_cache: Arc<dyn ActionCache> = Arc::new(CompletenessChecking::new(
        action_results.clone(),
        local_cas.clone(),
    ));
    let stats = Arc::new(Stats::default());
    let mut stores = vec![(
        InstanceName::local(),
        Backend {
            cas: local_cas.clone(),
            action_cache: local_action_cache,
        },
    )];
    let mut clusters = vec![(InstanceName::local(), None)];
    for (prefix, cluster_config) in &config.clusters {
        let cluster = Arc::new(
            Cluster::new(cluster_options(prefix, cluster_config)?).map_err(|e| e.to_string())?,
        );
        let permits = Arc::new(Semaphore::new(cluster_config.max_concurrent_requests));
        let upstream_cas: Arc<dyn BlobStore> = Arc::new(UpstreamCas::new(cluster.clone()));
        let upstream_action_cache: Arc<dyn ActionCache> =
            Arc::new(UpstreamActionCache::new(cluster.clone()));
        let max_entries = NonZeroUsize::new(config.existence_cache.max_entries)
            .ok_or("existence_cache.max_entries must be at least 1")?;
        let ttl = Duration::from_secs(config.existence_cache.ttl_seconds);
        let existence = Arc::new(ExistenceCaching::new(
            Arc::new(ConcurrencyLimiting::new(upstream_cas, permits.clone())),
            max_entries,
            ttl,
            clock.clone(),
            stats.clone(),
        ));
        let backend = Backend {
            cas: Arc::new(ReadCaching::new(
                local_cas.clone(),
                existence,
                stats.clone(),
            )),
            action_cache: Arc::new(ActionResultCaching::new(
                Arc::new(ConcurrencyLimiting::new(upstream_action_cache, permits)),
                local_cas.clone(),
                config.existence_cache.max_action_result_bytes,
                ttl,
                clock.clone(),
                stats.clone(),
            )),
        };
        tracing::info!("{}: instance names {prefix}/...", cluster.describe());
        let prefix = InstanceName::new(prefix).map_err(|e| format!("clusters.{prefix:?}: {e}"))?;
        stores.push((prefix.clone(), backend));
        clusters.push((prefix, Some(cluster)));
    }
    let stores = Arc::new(Demultiplexing::new(stores));
    let scrubbing = match &config.scrubbing_config {
        Some(path) => {
            let scrubbing_config = ScrubbingConfig::load(path).map_err(|e| e.to_string())?;
            tracing::info!(
                "scrubbing stamped actions on Execute: {} rule(s) from {}",
                scrubbing_config.rules().len(),
                path.display()
            );
            // A scrubbed result is served only while the instance's CAS (the cluster's, for a
            // cluster's instances) has every output it names.
            let results = Arc::new(CompletenessChecking::new(action_results, stores.clone()));
            Some(Arc::new(Scrubbing::new(
                scrubbing_config,
                stores.clone(),
                results,
                stores.clone(),
                stats.clone(),
            )))
        }
        None => None,
    };
    let activity = match config.activity.max_invocations {
        0 => None,
        n => Some(Arc::new(
            ActivityLog::open(&cache_dir.join("activity"), n)
                .map_err(|e| open_error("activity record", e))?,
        )),
    };
    Ok(Composition {
        stores,
        clusters: Arc::new(Router::new(clusters)),
        stats,
        local_cas: local,
        scrubbing,
        activity,
    })
}

pub(crate) fn cluster_options(
    prefix: &str,
    config: &ClusterConfig,
) -> Result<ClusterOptions, String> {
    Ok(ClusterOptions {
        prefix: prefix.to_string(),
        endpoint: Endpoint::parse(&config.endpoint)
            .map_err(|e| format!("clusters.{prefix:?}.endpoint: {e}"))?,
        ca_file: config.ca_file.clone(),
        headers: config.headers.clone().into_iter().collect(),
        retry: RetryPolicy {
            max_attempts: config.max_attempts,
            ..RetryPolicy::default()
        },
        connect_timeout: Duration::from_secs(config.connect_timeout_seconds),
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
    })
}

fn options(store: &crate::config::StoreConfig) -> DiskLruOptions {
    DiskLruOptions {
        max_bytes: store.max_size_bytes(),
        sync_writes: store.sync_writes,
    }
}

fn grpc_routes(
    config: &Config,
    composition: &Composition,
    outputs: OutputService,
    clock: Arc<dyn Clock>,
    info: ServerInfo,
) -> Routes {
    let expiry = Duration::from_secs(config.grpc.unfinished_upload_expiry_seconds);
    let stores = &composition.stores;
    let recorder = Recorder::new(composition.activity.clone());
    let cas = ContentAddressableStorageServer::new(CasService::new(
        stores.clone(),
        composition.stats.clone(),
        recorder.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let bytestream = ByteStreamServer::new(ByteStreamService::new(
        stores.clone(),
        clock,
        expiry,
        composition.stats.clone(),
        recorder.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let action_cache = ActionCacheServer::new(ActionCacheService::new(
        stores.clone(),
        composition.stats.clone(),
        recorder.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let execution = ExecutionServer::new(ExecutionService::new(
        composition.clusters.clone(),
        composition.scrubbing.clone(),
        recorder,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Routes::new(CapabilitiesServer::new(CapabilitiesService::new(
        composition.clusters.clone(),
    )))
    .add_service(cas)
    .add_service(bytestream)
    .add_service(action_cache)
    .add_service(execution)
    .add_service(
        BazelOutputServiceServer::new(outputs)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(StatsServer::new(StatsService::new(
        composition.stats.clone(),
        composition.clusters.clone(),
        info,
        composition.activity.clone().map(|log| Insight {
            log,
            blobs: stores.clone(),
        }),
    )))
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), String> {
    let cache_dir = config.cache_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
    let _lock = lock(&cache_dir.join("lock"))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let composition = compose(&config, clock.clone())?;
    let vfs = file_system(&config, &composition)?;
    let outputs = OutputService::open(
        vfs.clone(),
        composition.stores.clone(),
        config.cache_dir().join("outputs"),
        config.mount_path().join("outputs"),
        config.outputs.max_size_bytes,
        Duration::from_secs(config.outputs.max_age_seconds),
        config.outputs.max_tree_size_bytes,
    )
    .map_err(|e| format!("the Output Service's saved output paths: {e}"))?;
    // Bound before the routes, so that the Stats service can tell `clientd bazelrc` the ports.
    let mut tcp = Vec::new();
    for addr in &config.grpc.tcp_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tcp.push((listener, bound));
    }
    let http = match config.http.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?,
        ),
        None => None,
    };
    let socket = config.unix_socket().to_path_buf();
    let info = ServerInfo {
        unix_socket: socket.clone(),
        tcp_listeners: tcp.iter().map(|(_, bound)| *bound).collect(),
        mount_path: config
            .mount
            .enabled
            .then(|| config.mount_path().to_path_buf()),
        scrubbing_config: config.scrubbing_config.clone(),
    };
    let grpc = grpc_routes(&config, &composition, outputs, clock, info);
    let mount = match config.mount.enabled {
        true => Some(
            clientd_fuse::mount(vfs, config.mount_path(), tokio::runtime::Handle::current())
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let front_latency = Arc::new(Latency::default());
    // Every listener's HTTP/1.1 connections are Bazel's HTTP cache client's
    // (`--remote_cache=http://...`); the rest are gRPC's.
    let rest = Arc::new(RestCache::new(
        composition.stores.clone(),
        composition.stores.clone(),
        composition.stats.clone(),
        front_latency.clone(),
    ));
    for (listener, bound) in tcp {
        tracing::info!("serving on grpc://{bound}");
        servers.spawn(
            server(&front_latency)
                .add_routes(grpc.clone())
                .serve_with_incoming_shutdown(
                    split_tcp(listener, {
                        let rest = rest.clone();
                        move |connection| rest.spawn(connection)
                    }),
                    stopped(stop_rx.clone()),
                ),
        );
    }

    if let Some(listener) = http {
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let web = Arc::new(Web {
            stats: composition.stats.clone(),
            clusters: composition
                .clusters
                .targets()
                .filter_map(|(_, c)| c.clone())
                .collect(),
            front_latency: front_latency.clone(),
            activity: composition.activity.clone(),
            blobs: composition.stores.clone(),
            results: composition.stores.clone(),
            mount: config
                .mount
                .enabled
                .then(|| config.mount_path().to_path_buf()),
        });
        tracing::info!("serving HTTP on http://{bound} (/ and /metrics)");
        let stop = stop_rx.clone();
        servers.spawn(async move {
            clientd_web::serve(listener, web, stop).await;
            Ok(())
        });
    }

    let unix = bind_unix(&socket)?;
    // Any :authority is accepted on the socket: real clients send the socket path there.
    let incoming = split_unix(unix, move |connection| rest.spawn(connection));
    servers.spawn(
        server(&front_latency)
            .add_routes(grpc.clone())
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );
    // Last, so that this line tells a watcher every listener is up.
    tracing::info!("serving on unix:{}", socket.display());
    let mounted = match &mount {
        Some(mount) => format!("file system at {}", mount.path().display()),
        None => "no file system".to_string(),
    };
    tracing::info!(
        "ready: socket unix:{}, {mounted}. In a Bazel workspace, `clientd bazelrc` writes \
         clientd.bazelrc for --config=clientd; `clientd doctor` checks the setup. Ctrl-C or \
         SIGTERM (`systemctl --user stop clientd` as a service) stops the daemon",
        socket.display()
    );

    let signal = wait_for_signal().await;
    tracing::info!("{signal}: shutting down");
    drop(mount);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!("listener stopped with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("calls still running after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    let _ = fs::remove_file(&socket);
    if let Some(activity) = composition.activity.clone() {
        let _ = tokio::task::spawn_blocking(move || activity.flush()).await;
    }
    log_stats(&composition.stats);
    Ok(())
}

/// The file system over the composed stores (the Output Service stages into it even when it is
/// not mounted). Scratch files live in `<cache_dir>/scratch`, emptied at every start.
fn file_system(config: &Config, composition: &Composition) -> Result<Arc<Vfs>, String> {
    let scratch = config.cache_dir().join("scratch");
    let pool = Pool::open_empty(&scratch, config.mount.scratch_max_size_bytes)
        .map_err(|e| format!("cannot prepare {}: {e}", scratch.display()))?;
    let routing = FrontRouting {
        stores: composition.stores.clone(),
        clusters: composition.clusters.clone(),
    };
    let cas = CasView::new(
        composition.stores.clone(),
        Box::new(routing),
        composition.local_cas.clone(),
        Duration::from_secs(config.mount.fetch_timeout_seconds),
    );
    // SAFETY: getuid and getgid cannot fail and have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Ok(Arc::new(Vfs::new(cas, pool, uid, gid)))
}

/// cas/ follows the gRPC front: the instance names it routes, the digest functions its
/// Capabilities offer.
struct FrontRouting {
    stores: Arc<Demultiplexing>,
    clusters: Arc<Clusters>,
}

impl Routing for FrontRouting {
    fn serves(&self, instance_name: &InstanceName) -> bool {
        self.stores.route(instance_name).is_ok()
    }

    fn digest_functions<'a>(&'a self, instance_name: &'a InstanceName) -> DigestFunctions<'a> {
        Box::pin(async move {
            let capabilities = served_capabilities(&self.clusters, instance_name)
                .await
                .map_err(|e| tracing::warn!("cas/{instance_name}/blobs: Capabilities: {e}"))
                .ok()?;
            let functions = capabilities.cache_capabilities?.digest_functions;
            Some(
                functions
                    .into_iter()
                    .filter_map(|f| DigestFunction::from_proto(f).ok().flatten())
                    .collect(),
            )
        })
    }
}

fn log_stats(stats: &Stats) {
    let counters: Vec<String> = stats
        .snapshot()
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    tracing::info!("stats: {}", counters.join(" "));
}

type Layers = tower::layer::util::Stack<
    MessageLimitLayer,
    tower::layer::util::Stack<
        ForwardHeadersLayer,
        tower::layer::util::Stack<TimingLayer, tower::layer::util::Identity>,
    >,
>;

/// A gRPC server whose calls are timed into `latency` (for `/metrics`), given their forwardable
/// headers as context, and held to the message size limit.
fn server(latency: &Arc<Latency>) -> Server<Layers> {
    Server::builder()
        .layer(TimingLayer::new(latency.clone()))
        .layer(ForwardHeadersLayer)
        .layer(MessageLimitLayer)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// One daemon per cache directory: an exclusive lock, held for the process's life.
fn lock(path: &Path) -> Result<File, String> {
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // SAFETY: flock on a valid open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another clientd is already using {} ({})",
            path.parent().unwrap_or(path).display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// Binds the UNIX socket with mode 0600, replacing a stale socket left by a crash.
fn bind_unix(path: &PathBuf) -> Result<UnixListener, String> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "a server is already listening on {}",
            path.display()
        ));
    }
    match fs::remove_file(path) {
        Ok(()) => tracing::info!("removed stale socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(listener)
}
