//! Starts the real `clientd` binary in a temporary home and talks to it over its UNIX socket.
#![allow(dead_code)] // each test file uses a different part of this module

use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream as bs;
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub const MAX_MESSAGE: usize = 64 << 20;

pub struct Daemon {
    child: Option<Child>,
    pub home: PathBuf,
    pub socket: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    /// Starts a daemon whose HOME and XDG directories are under `home`, with an optional config
    /// file text and extra arguments.
    pub fn start(home: &Path, config: Option<&str>, args: &[&str]) -> Daemon {
        let child = spawn(home, config, args);
        let socket = home.join("cache/clientd/grpc");
        let daemon = Daemon {
            child: Some(child),
            home: home.to_path_buf(),
            socket,
            stderr: home.join("stderr"),
        };
        daemon.wait_until_serving();
        daemon
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "daemon did not start: {}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    pub async fn channel(&self) -> Channel {
        unix_channel(self.socket.clone()).await
    }

    pub async fn clients(&self) -> Clients {
        Clients::new(self.channel().await)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// The memory the daemon occupies (its resident set).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id() as i32, libc::SIGTERM);
        child.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id() as i32, libc::SIGKILL);
        child.wait().unwrap();
    }

    /// SIGSTOP, returning once every thread of the daemon has stopped. The kernel wakes one thread
    /// to take the signal, and that thread stops the others: until it runs, which on a loaded
    /// machine can be a while after kill(2) returns, the others still answer calls.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !every_thread_stopped(&tasks) {
            assert!(
                Instant::now() < deadline,
                "the daemon's threads did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT: a paused daemon goes on.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, sig) };
}

/// Whether every thread under `/proc/PID/task` is in state T (stopped), from field 3 of its
/// `stat`, which follows the command name in parentheses.
fn every_thread_stopped(tasks: &Path) -> bool {
    std::fs::read_dir(tasks).unwrap().all(|task| {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// `clientd ARGS` with HOME and the XDG directories under `home`.
pub fn cli(home: &Path, args: &[&str]) -> Command {
    std::fs::create_dir_all(home).unwrap();
    // BENCH_CLIENTD: another build, for benchmarks that compare it with this one.
    let binary = std::env::var_os("BENCH_CLIENTD").unwrap_or(env!("CARGO_BIN_EXE_clientd").into());
    let mut cmd = Command::new(binary);
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("RUST_LOG", "info")
        .args(args);
    cmd
}

/// `clientd serve` with an optional config file text and extra arguments.
pub fn command(home: &Path, config: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = cli(home, &["serve"]);
    if let Some(text) = config {
        let file = home.join("config.json");
        std::fs::write(&file, text).unwrap();
        cmd.arg("--config").arg(file);
    }
    // Only the file-system tests mount (they pass --mount).
    if !args.contains(&"--mount") {
        cmd.arg("--no-mount");
    }
    cmd.args(args);
    cmd
}

fn spawn(home: &Path, config: Option<&str>, args: &[&str]) -> Child {
    std::fs::create_dir_all(home).unwrap();
    let stderr = std::fs::File::create(home.join("stderr")).unwrap();
    command(home, config, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// The first line of `child`'s stderr containing `needle` (for TCP listener addresses).
pub fn wait_for_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(file) = std::fs::File::open(path) {
            if let Some(line) = BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains(needle))
            {
                return line;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no line with {needle:?} in {}", path.display());
}

/// A channel to the daemon listening on `socket`, with flow-control windows like grpc-java's
/// (Bazel's) tuned ones, not HTTP/2's 64 KiB default.
pub async fn unix_channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to the daemon's socket")
}

#[derive(Clone)]
pub struct Clients {
    pub cas: re::content_addressable_storage_client::ContentAddressableStorageClient<Channel>,
    pub ac: re::action_cache_client::ActionCacheClient<Channel>,
    pub caps: re::capabilities_client::CapabilitiesClient<Channel>,
    pub bytestream: bs::byte_stream_client::ByteStreamClient<Channel>,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Clients {
            cas: re::content_addressable_storage_client::ContentAddressableStorageClient::new(
                channel.clone(),
            )
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
            ac: re::action_cache_client::ActionCacheClient::new(channel.clone()),
            caps: re::capabilities_client::CapabilitiesClient::new(channel.clone()),
            bytestream: bs::byte_stream_client::ByteStreamClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    /// Uploads `data` by ByteStream in `chunk`-byte messages.
    pub async fn write(
        &mut self,
        instance: &str,
        data: &[u8],
        chunk: usize,
    ) -> Result<i64, tonic::Status> {
        let digest = sha256(data);
        let name = write_name(instance, &digest);
        let requests = write_requests(&name, data, 0, chunk, true);
        Ok(self
            .bytestream
            .write(futures::stream::iter(requests))
            .await?
            .into_inner()
            .committed_size)
    }

    /// Reads a blob by ByteStream.
    pub async fn read(
        &mut self,
        instance: &str,
        digest: &Digest,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<u8>, tonic::Status> {
        let request = bs::ReadRequest {
            resource_name: format!("{instance}/blobs/{}", digest.resource_tail()),
            read_offset: offset,
            read_limit: limit,
        };
        let mut stream = self.bytestream.read(request).await?.into_inner();
        let mut data = Vec::with_capacity(digest.size() as usize);
        while let Some(message) = stream.message().await? {
            data.extend_from_slice(&message.data);
        }
        Ok(data)
    }

    /// Uploads the blob made of `chunks` by ByteStream, one message per chunk, without copying
    /// them: the benchmarks' uploads.
    pub async fn upload_chunks(&mut self, instance: &str, digest: &Digest, chunks: &[Bytes]) {
        let name = write_name(instance, digest);
        let mut offset = 0;
        let requests: Vec<bs::WriteRequest> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let request = bs::WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: offset,
                    finish_write: i + 1 == chunks.len(),
                    data: chunk.clone(),
                };
                offset += chunk.len() as i64;
                request
            })
            .collect();
        self.bytestream
            .write(futures::stream::iter(requests))
            .await
            .unwrap();
    }

    /// Reads a blob by ByteStream, consuming the messages as they arrive (collecting a large blob
    /// would time the client's page faults, not the download). Returns the bytes received.
    pub async fn download(&mut self, instance: &str, digest: &Digest) -> u64 {
        let request = bs::ReadRequest {
            resource_name: format!("{instance}/blobs/{}", digest.resource_tail()),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = self.bytestream.read(request).await.unwrap().into_inner();
        let mut received = 0;
        while let Some(message) = stream.message().await.unwrap() {
            received += message.data.len() as u64;
        }
        received
    }

    pub async fn find_missing(&mut self, instance: &str, digests: &[Digest]) -> Vec<Digest> {
        let request = re::FindMissingBlobsRequest {
            instance_name: instance.into(),
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        };
        let response = self
            .cas
            .find_missing_blobs(request)
            .await
            .unwrap()
            .into_inner();
        response
            .missing_blob_digests
            .iter()
            .map(|d| Digest::from_proto(None, d).unwrap())
            .collect()
    }

    /// GetTree of `root`, in pages of up to 10,000: how many directories it streams.
    pub async fn tree_directories(&mut self, instance: &str, root: &Digest) -> usize {
        let mut stream = self
            .cas
            .get_tree(re::GetTreeRequest {
                instance_name: instance.into(),
                root_digest: Some(root.to_proto()),
                page_size: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut directories = 0;
        while let Some(page) = stream.message().await.unwrap() {
            directories += page.directories.len();
        }
        directories
    }

    pub async fn batch_update(&mut self, instance: &str, blobs: &[(Digest, Vec<u8>)]) -> Vec<i32> {
        self.batch_update_in(instance, None, blobs).await
    }

    /// Uploads `data` as a blob of `function` (named in the request), and returns its digest.
    pub async fn upload_as(
        &mut self,
        instance: &str,
        function: DigestFunction,
        data: &[u8],
    ) -> Digest {
        let digest = function.digest_of(data);
        let codes = self
            .batch_update_in(instance, Some(function), &[(digest, data.to_vec())])
            .await;
        assert_eq!(codes, [0], "uploading {digest}");
        digest
    }

    /// BatchUpdateBlobs naming `function` (None: inferred from the hash length).
    pub async fn batch_update_in(
        &mut self,
        instance: &str,
        function: Option<DigestFunction>,
        blobs: &[(Digest, Vec<u8>)],
    ) -> Vec<i32> {
        let response = self
            .cas
            .batch_update_blobs(batch_update_request(instance, function, blobs))
            .await
            .unwrap()
            .into_inner();
        response
            .responses
            .iter()
            .map(|r| r.status.as_ref().unwrap().code)
            .collect()
    }
}

/// A BatchUpdateBlobsRequest of `blobs`, naming `function` (None: inferred from the hash length).
pub fn batch_update_request(
    instance: &str,
    function: Option<DigestFunction>,
    blobs: &[(Digest, Vec<u8>)],
) -> re::BatchUpdateBlobsRequest {
    re::BatchUpdateBlobsRequest {
        instance_name: instance.into(),
        requests: blobs
            .iter()
            .map(|(d, data)| re::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: data.clone().into(),
                ..Default::default()
            })
            .collect(),
        digest_function: function.map_or(0, DigestFunction::to_proto),
    }
}

pub fn write_name(instance: &str, digest: &Digest) -> String {
    format!(
        "{instance}/uploads/{}/blobs/{}",
        uuid::Uuid::new_v4(),
        digest.resource_tail()
    )
}

pub fn write_requests(
    name: &str,
    data: &[u8],
    start: usize,
    chunk: usize,
    finish: bool,
) -> Vec<bs::WriteRequest> {
    let mut requests: Vec<bs::WriteRequest> = data[start..]
        .chunks(chunk.max(1))
        .scan(start, |offset, piece| {
            let request = bs::WriteRequest {
                resource_name: name.to_string(),
                write_offset: *offset as i64,
                finish_write: false,
                data: piece.to_vec().into(),
            };
            *offset += piece.len();
            Some(request)
        })
        .collect();
    if requests.is_empty() {
        requests.push(bs::WriteRequest {
            resource_name: name.to_string(),
            write_offset: start as i64,
            ..Default::default()
        });
    }
    requests.last_mut().unwrap().finish_write = finish;
    requests
}

pub fn sha256(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// The SHA-256 digest of the blob made of `chunks`.
pub fn sha256_of_chunks(chunks: &[Bytes]) -> Digest {
    let mut hasher = DigestFunction::Sha256.hasher();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hasher.finish(chunks.iter().map(|c| c.len() as u64).sum())
}

/// `data` in `chunk`-byte pieces that share its memory.
pub fn chunked(data: &Bytes, chunk: usize) -> Vec<Bytes> {
    (0..data.len())
        .step_by(chunk)
        .map(|offset| data.slice(offset..(offset + chunk).min(data.len())))
        .collect()
}

/// Where the local CAS keeps a blob's file in a daemon's home (for benchmarks that drop its pages).
pub fn cas_file(home: &Path, digest: &Digest) -> PathBuf {
    home.join("cache/clientd/cas/entries")
        .join(digest.function().name())
        .join(&digest.hash_hex()[..2])
        .join(digest.file_name())
}

/// Damages a small blob packed in the local CAS of a stopped daemon's home (a bad disk block):
/// flips a byte of the only place `data` occurs in its segments. The daemon then never serves it.
pub fn damage_packed_blob(home: &Path, data: &[u8]) {
    let dir = home.join("cache/clientd/cas/packed");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let at: Vec<usize> = bytes
            .windows(data.len())
            .enumerate()
            .filter(|(_, w)| *w == data)
            .map(|(i, _)| i)
            .collect();
        for i in &at {
            bytes[i + data.len() / 2] ^= 0x40;
        }
        found += at.len();
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(found, 1, "the blob is packed once in {}", dir.display());
}

/// The metadata of every file below `dir` (directories walked, not listed).
pub fn files_below(dir: &Path) -> Vec<std::fs::Metadata> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(meta);
            }
        }
    }
    files
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Lazily unmounts a mount point when dropped, so a test that fails before stopping its daemon
/// leaves no mount behind (and its temporary directory can be removed).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.0)
            .output();
    }
}

/// Waits until the daemon's file system is mounted at `mnt`.
pub fn wait_for_mount(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mnt.join("scratch").exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not mounted",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `bazel_output_service_rev2` message as the `google.protobuf.Any` Bazel sends.
pub fn rev2_any<M: prost::Message>(name: &str, message: &M) -> clientd_proto::prost_types::Any {
    clientd_proto::prost_types::Any {
        type_url: format!("type.googleapis.com/bazel_output_service_rev2.{name}"),
        value: message.encode_to_vec(),
    }
}

/// A FileArtifactLocator for `digest`, as Bazel stages a file.
pub fn file_locator(digest: &Digest) -> clientd_proto::prost_types::Any {
    rev2_any(
        "FileArtifactLocator",
        &clientd_proto::bazel_output_service_rev2::FileArtifactLocator {
            digest: Some(digest.to_proto()),
        },
    )
}

/// A StartBuild for output base `base` whose files are staged from `instance_name` (SHA-256),
/// with no output path prefix Bazel would resolve links through.
pub fn start_build_request(
    base: &str,
    build_id: &str,
    instance_name: &str,
) -> clientd_proto::bazel_output_service::StartBuildRequest {
    use clientd_proto::bazel_output_service_rev2 as rev2;
    clientd_proto::bazel_output_service::StartBuildRequest {
        version: 1,
        output_base_id: base.into(),
        build_id: build_id.into(),
        args: Some(rev2_any(
            "StartBuildArgs",
            &rev2::StartBuildArgs {
                remote_cache: String::new(),
                instance_name: instance_name.into(),
                digest_function: re::digest_function::Value::Sha256 as i32,
            },
        )),
        output_path_prefix: "/unused".into(),
        output_path_aliases: Default::default(),
    }
}

/// Stages `files` (path, digest) as CAS files in one StageArtifacts call of build `build_id`;
/// returns each artifact's status code.
pub async fn stage_files(
    service: &mut clientd_proto::bazel_output_service::bazel_output_service_client::BazelOutputServiceClient<Channel>,
    build_id: &str,
    files: impl IntoIterator<Item = (String, Digest)>,
) -> Vec<i32> {
    use clientd_proto::bazel_output_service as pb;
    let artifacts = files
        .into_iter()
        .map(|(path, digest)| pb::stage_artifacts_request::Artifact {
            path,
            locator: Some(file_locator(&digest)),
        })
        .collect();
    let response = service
        .stage_artifacts(pb::StageArtifactsRequest {
            build_id: build_id.into(),
            artifacts,
        })
        .await
        .unwrap()
        .into_inner();
    response
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect()
}

/// A benchmark's number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The middle of a benchmark's timings (the upper one of two middles).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A benchmark's working directory, removed at the end: under BENCH_DIR if set (to measure
/// another disk), else under cargo's target directory.
pub fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").into()),
    )
    .unwrap()
}

/// The daemon's `/metrics` page, fetched from its HTTP listener at `addr`.
pub fn metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

/// How many calls of `method` the daemon made to its cluster `up.example.com`, from `/metrics`.
pub fn upstream_calls(page: &str, method: &str) -> u64 {
    let series = format!(
        "clientd_upstream_request_duration_seconds_count{{cluster=\"up.example.com\",method=\"{method}\"}} "
    );
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// A Directory tree of three levels: a root with `width` subdirectories, each holding one
/// directory with a symlink (named after `tag` and its position, so that trees of different tags
/// share nothing). The root's digest, and every Directory as (digest, bytes).
pub fn three_level_tree(tag: &str, width: usize) -> (Digest, Vec<(Digest, Vec<u8>)>) {
    let encode = |d: &re::Directory| {
        let bytes = prost::Message::encode_to_vec(d);
        (sha256(&bytes), bytes)
    };
    let mut blobs = Vec::new();
    let mut root = re::Directory::default();
    for i in 0..width {
        let leaf = encode(&re::Directory {
            symlinks: vec![re::SymlinkNode {
                name: format!("{tag}link{i}"),
                target: "x".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let middle = encode(&re::Directory {
            directories: vec![re::DirectoryNode {
                name: "leaf".into(),
                digest: Some(leaf.0.to_proto()),
            }],
            ..Default::default()
        });
        root.directories.push(re::DirectoryNode {
            name: format!("d{i:03}"),
            digest: Some(middle.0.to_proto()),
        });
        blobs.extend([leaf, middle]);
    }
    let root = encode(&root);
    blobs.push(root.clone());
    (root.0, blobs)
}
