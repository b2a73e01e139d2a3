//! The daemon's configuration: JSON data that mirrors what `server` builds from it.
//!
//! Every field has a default, so `{}` (or no file at all) is a complete configuration: a local
//! cache under `$XDG_CACHE_HOME/clientd` with its socket at `$XDG_CACHE_HOME/clientd/grpc`.
//! Unknown fields are refused, and errors name the file and the field's path.

use clientd_digest::InstanceName;
use clientd_upstream::Endpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where defaults come from: the environment, passed in so tests need not change the process's.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub home: Option<PathBuf>,
    pub xdg_cache_home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            home: var("HOME"),
            xdg_cache_home: var("XDG_CACHE_HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
        }
    }

    fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(|| PathBuf::from("/"))
    }

    /// `$XDG_CACHE_HOME/clientd`, or `~/.cache/clientd`.
    pub fn default_cache_dir(&self) -> PathBuf {
        self.xdg_cache_home
            .clone()
            .unwrap_or_else(|| self.home().join(".cache"))
            .join("clientd")
    }

    /// `$XDG_CONFIG_HOME/clientd/config.json`, or `~/.config/clientd/config.json`.
    pub fn user_config_file(&self) -> PathBuf {
        self.xdg_config_home
            .clone()
            .unwrap_or_else(|| self.home().join(".config"))
            .join("clientd")
            .join("config.json")
    }
}

/// The whole configuration. Example: `{"cas": {"max_size_bytes": 53687091200}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the local CAS (`cas/`), action cache (`ac/`) and, by default, the socket.
    /// Default: `$XDG_CACHE_HOME/clientd`. Example: `"/var/cache/clientd"`.
    pub cache_dir: Option<PathBuf>,
    /// The gRPC listeners.
    pub grpc: GrpcConfig,
    /// The local CAS. Default bound: 20 GiB.
    pub cas: StoreConfig,
    /// The local action cache (one namespace per `local/...` instance name). Default bound: 1 GiB.
    pub action_cache: StoreConfig,
    /// Remote clusters by instance-name prefix: `--remote_instance_name=PREFIX/rest` reaches the
    /// cluster as instance `rest`. `local` is reserved for the local cache.
    /// Example: `{"mycluster.example.com": {"endpoint": "grpcs://mycluster.example.com:443"}}`.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// What is remembered of clusters: blobs they reported present (FindMissingBlobs) and action
    /// results they returned.
    pub existence_cache: ExistenceCacheConfig,
    /// The file system (`cas/`, `scratch/`, `outputs/`).
    pub mount: MountConfig,
    /// The Bazel Remote Output Service's output paths (`outputs/<output base id>/`).
    pub outputs: OutputsConfig,
    /// A `remote_scrubbing.Config` text proto (`clientd scrub-config` writes one; also
    /// `--scrubbing-config FILE`): Execute looks the actions it matches up under a key without
    /// the stamp, so stamped actions run remotely and still hit the cache. A relative path is
    /// taken from the daemon's working directory. Example: `"/home/me/ws/scrub.txtpb"`.
    pub scrubbing_config: Option<PathBuf>,
    /// The activity record behind `clientd explain`: what happened to each action of each build.
    pub activity: ActivityConfig,
    /// The loopback HTTP listener: `/metrics` (Prometheus) and a page of recent builds.
    pub http: HttpConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Loopback address to serve HTTP on (also `--http-listen ADDR`); none by default.
    /// Example: `"127.0.0.1:9090"`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// Invocations (Bazel commands) kept, in `<cache_dir>/activity`, across restarts; 0 keeps
    /// no record. Example: `20`.
    pub max_invocations: usize,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            max_invocations: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// Output paths whose state was last saved longer ago are removed at start (7 days).
    /// Example: `604800`.
    pub max_age_seconds: u64,
    /// Bound on the bytes of files Bazel's local actions write into one output path.
    /// Default: 100 GiB. Example: `107374182400`.
    pub max_size_bytes: u64,
    /// Largest REv2 Tree message a TreeArtifactLocator may name: a tree is read into memory and
    /// expanded at once. Default: 256 MiB, as bb_clientd. Example: `268435456`.
    pub max_tree_size_bytes: u64,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            max_age_seconds: 7 * 24 * 3600,
            max_size_bytes: 100 << 30,
            max_tree_size_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Whether to mount at all (also `--no-mount`). Example: `false`.
    pub enabled: bool,
    /// The mount point (also `--mount PATH`). Default: `~/clientd`. Example: `"/home/me/clientd"`.
    pub path: Option<PathBuf>,
    /// Bound on the bytes of files written in `scratch/` (hard links into `cas/` are free).
    /// Default: 10 GiB. Example: `10737418240`.
    pub scratch_max_size_bytes: u64,
    /// Seconds a `cas/` lookup or read may wait for a cluster before it fails with EIO.
    /// Example: `30`.
    pub fetch_timeout_seconds: u64,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            enabled: true,
            path: None,
            scratch_max_size_bytes: 10 << 30,
            fetch_timeout_seconds: 30,
        }
    }
}

/// One remote cluster. Only `endpoint` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `grpc://HOST:PORT`, `grpcs://HOST:PORT` or `unix:/PATH`. Example: `"grpcs://remote.example.com:443"`.
    pub endpoint: String,
    /// PEM file of CA certificates for a `grpcs://` endpoint; default: the system's roots.
    /// Example: `"/etc/ssl/certs/corp-ca.pem"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Headers sent with every call to this cluster. Clients' `authorization` and
    /// `requestmetadata-bin` headers are forwarded as well. Example: `{"x-api-key": "secret"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Calls in flight to this cluster at once (executions waiting for results do not count).
    /// Example: `100`.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Attempts of a call the cluster answers UNAVAILABLE, including the first. Example: `4`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds to wait for a connection before the cluster counts as unavailable. Example: `5`.
    #[serde(default = "default_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Seconds a call to this cluster may wait for its answer (a client's shorter deadline wins),
    /// and a streamed read for its next chunk: a cluster that hangs fails the call instead of
    /// stalling the build. Bazel's own `--remote_timeout` is 60 s. Example: `60`.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
}

fn default_max_concurrent_requests() -> usize {
    100
}
fn default_max_attempts() -> u32 {
    4
}
fn default_connect_timeout_seconds() -> u64 {
    5
}
fn default_request_timeout_seconds() -> u64 {
    60
}

impl ClusterConfig {
    /// A cluster with every optional field at its default.
    pub fn new(endpoint: String) -> Self {
        ClusterConfig {
            endpoint,
            ca_file: None,
            headers: BTreeMap::new(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_attempts: default_max_attempts(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExistenceCacheConfig {
    /// Seconds a blob a cluster reported present, or an action result it returned, is trusted
    /// without asking again (results only while their outputs are in the local CAS).
    /// Example: `300`.
    pub ttl_seconds: u64,
    /// Digests remembered present per cluster. Example: `1000000`.
    pub max_entries: usize,
    /// Bytes of action results remembered per cluster (their encoded size and a little for each),
    /// for rebuilds soon after and for offline mode; the least recently used go first.
    /// Example: `67108864`.
    pub max_action_result_bytes: usize,
}

impl Default for ExistenceCacheConfig {
    fn default() -> Self {
        ExistenceCacheConfig {
            ttl_seconds: 300,
            max_entries: 1_000_000,
            max_action_result_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// The UNIX socket (mode 0600). Default: `<cache_dir>/grpc`. Example: `"/run/user/1000/clientd.sock"`.
    pub unix_socket: Option<PathBuf>,
    /// Loopback TCP listeners, for clients that cannot use a UNIX socket (Bazel 4.x).
    /// Example: `["127.0.0.1:8980"]`.
    pub tcp_listen: Vec<SocketAddr>,
    /// Seconds an interrupted ByteStream upload is kept for resumption. Example: `600`.
    pub unfinished_upload_expiry_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Bound on the bytes stored; least recently used entries are evicted beyond it.
    /// Default: 20 GiB for the CAS, 1 GiB for the action cache. Example: `53687091200`.
    pub max_size_bytes: Option<u64>,
    /// fsync every entry's bytes before it becomes visible, so that after a power loss an entry is
    /// whole or absent, never torn; a packed blob is kept from its acknowledgement on, while the
    /// newest entries with a file of their own can be lost with their directory's update. Off, only
    /// the daemon's own crashes are safe.
    /// Example: `true`.
    pub sync_writes: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_size_bytes: None,
            sync_writes: true,
        }
    }
}

impl StoreConfig {
    pub fn max_size_bytes(&self) -> u64 {
        self.max_size_bytes.expect("resolved by load")
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            unix_socket: None,
            tcp_listen: Vec::new(),
            unfinished_upload_expiry_seconds: 600,
        }
    }
}

impl Config {
    /// Loads `explicit` if given, else the user's config file if it exists, else the defaults;
    /// then fills in paths that default from the environment.
    pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Config, String> {
        let user_file = env.user_config_file();
        let file = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => user_file.exists().then_some(user_file),
        };
        let mut config = match &file {
            Some(path) => Config::parse_file(path)?,
            None => Config::default(),
        };
        config.resolve(env);
        config.validate()?;
        Ok(config)
    }

    fn parse_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses JSON text; errors name the field's path (e.g. `cas.max_size_bytes: invalid type`).
    pub fn parse(text: &str) -> Result<Config, String> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field {path}: {inner}")
            }
        })
    }

    /// Replaces unset paths by their environment-derived defaults.
    fn resolve(&mut self, env: &Env) {
        let cache_dir = self
            .cache_dir
            .get_or_insert_with(|| env.default_cache_dir())
            .clone();
        self.grpc
            .unix_socket
            .get_or_insert_with(|| cache_dir.join("grpc"));
        self.mount
            .path
            .get_or_insert_with(|| env.home().join("clientd"));
        self.cas.max_size_bytes.get_or_insert(20 << 30);
        self.action_cache.max_size_bytes.get_or_insert(1 << 30);
    }

    /// Checks what types alone cannot: listeners must be loopback, cluster prefixes must be
    /// instance names other than `local`, endpoints must parse.
    pub fn validate(&self) -> Result<(), String> {
        for (prefix, cluster) in &self.clusters {
            let field = format!("clusters.{prefix:?}");
            let name = InstanceName::new(prefix).map_err(|e| format!("{field}: {e}"))?;
            if name.is_empty() || name.is_local() {
                return Err(format!(
                    "{field}: the prefix must be non-empty and not under `local`, which is the local cache"
                ));
            }
            Endpoint::parse(&cluster.endpoint).map_err(|e| format!("{field}.endpoint: {e}"))?;
            if cluster.max_concurrent_requests == 0
                || cluster.max_attempts == 0
                || cluster.request_timeout_seconds == 0
            {
                return Err(format!(
                    "{field}: max_concurrent_requests, max_attempts and request_timeout_seconds \
                     must be at least 1"
                ));
            }
        }
        if self.existence_cache.max_entries == 0 {
            return Err("existence_cache.max_entries must be at least 1".into());
        }
        let listeners = self.grpc.tcp_listen.iter().map(|a| ("grpc.tcp_listen", a));
        for (field, addr) in listeners.chain(self.http.listen.iter().map(|a| ("http.listen", a))) {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{field}: {addr} is not a loopback address; clientd has no authentication, \
                     so it listens on 127.0.0.1 or [::1] only"
                ));
            }
        }
        Ok(())
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache_dir.as_deref().expect("resolved by load")
    }

    pub fn mount_path(&self) -> &Path {
        self.mount.path.as_deref().expect("resolved by load")
    }

    pub fn unix_socket(&self) -> &Path {
        self.grpc.unix_socket.as_deref().expect("resolved by load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Env {
        Env {
            home: Some(dir.join("home")),
            xdg_cache_home: None,
            xdg_config_home: Some(dir.join("config")),
        }
    }

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn defaults_follow_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(None, &env(dir.path())).unwrap();
        assert_eq!(config.cache_dir(), dir.path().join("home/.cache/clientd"));
        assert_eq!(
            config.unix_socket(),
            dir.path().join("home/.cache/clientd/grpc")
        );
        let xdg = Env {
            xdg_cache_home: Some("/x".into()),
            ..env(dir.path())
        };
        assert_eq!(
            Config::load(None, &xdg).unwrap().unix_socket(),
            Path::new("/x/clientd/grpc")
        );
    }

    #[test]
    fn user_file_is_read_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        std::fs::create_dir_all(env.user_config_file().parent().unwrap()).unwrap();
        std::fs::write(env.user_config_file(), r#"{"cas": {"max_size_bytes": 5}}"#).unwrap();
        let config = Config::load(None, &env).unwrap();
        assert_eq!(config.cas.max_size_bytes(), 5);
        assert_eq!(config.action_cache.max_size_bytes(), 1 << 30);
        assert!(config.cas.sync_writes);
    }

    #[test]
    fn unknown_and_ill_typed_fields_name_the_field_and_file() {
        let err = Config::parse(r#"{"cas": {"max_size_bytes": 1, "colour": 1}}"#).unwrap_err();
        assert!(err.contains("cas") && err.contains("colour"), "{err}");
        let err = Config::parse(r#"{"grpc": {"tcp_listen": ["nonsense"]}}"#).unwrap_err();
        assert!(err.contains("grpc.tcp_listen"), "{err}");
        let err = Config::parse(r#"{"cas": {"max_size_bytes": "big"}}"#).unwrap_err();
        assert!(err.contains("cas.max_size_bytes"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(&file, r#"{"cache_dri": "/x"}"#).unwrap();
        let err = Config::load(Some(&file), &Env::default()).unwrap_err();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("cache_dri"),
            "{err}"
        );
    }

    #[test]
    fn clusters_need_an_endpoint_and_a_prefix_outside_local() {
        let config =
            Config::parse(r#"{"clusters": {"a.example.com": {"endpoint": "grpc://127.0.0.1:1"}}}"#)
                .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.clusters["a.example.com"].max_concurrent_requests,
            100
        );
        let err = Config::parse(r#"{"clusters": {"a": {}}}"#).unwrap_err();
        assert!(
            err.contains("clusters.a") && err.contains("endpoint"),
            "{err}"
        );
        for (prefix, endpoint, wanted) in [
            ("local", "grpc://h:1", "local"),
            ("local/x", "grpc://h:1", "local"),
            ("a/blobs", "grpc://h:1", "blobs"),
            ("a", "h:1", "clusters.\"a\".endpoint"),
        ] {
            let mut config = Config::default();
            config
                .clusters
                .insert(prefix.into(), ClusterConfig::new(endpoint.into()));
            let err = config.validate().unwrap_err();
            assert!(err.contains(wanted), "{prefix}: {err}");
        }
    }

    #[test]
    fn tcp_listeners_must_be_loopback() {
        let err = Config::parse(r#"{"http": {"listen": "0.0.0.0:9090"}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.starts_with("http.listen: 0.0.0.0:9090 is not a loopback"),
            "{err}"
        );
        let err = Config::parse(r#"{"grpc": {"tcp_listen": ["0.0.0.0:1"]}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }
}
