//! One configured cluster: its channel, the headers its calls carry, retries and capabilities.

use crate::endpoint::{ConfigError, Endpoint};
use crate::health::Watch;
use crate::latency::Latency;
use crate::retry::RetryPolicy;
use clientd_digest::{DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use clientd_proto::google::longrunning::Operation;
use clientd_store::{context, StoreError};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use re::execution_client::ExecutionClient;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// Largest message sent to or accepted from a cluster, as on the front.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// clientd's own cap on a batch call's blob bytes.
const MAX_BATCH_BYTES: u64 = 4 << 20;

const AUTHORIZATION: &str = "authorization";

/// A request's `digest_function` field: left UNKNOWN where the hash length implies the function,
/// so that servers predating the field understand the request.
pub(crate) fn digest_function_field(function: DigestFunction) -> i32 {
    if function.named_in_resources() {
        function.to_proto()
    } else {
        0
    }
}

/// `cluster PREFIX (ENDPOINT)`, the start of every error about a cluster.
fn describe(prefix: &str, endpoint: &Endpoint) -> String {
    format!("cluster {prefix} ({endpoint})")
}

/// A status of a call whose connection broke (the cluster went away mid-call) as UNAVAILABLE,
/// the code clients retry; tonic reports it as UNKNOWN or INTERNAL with the transport error as its
/// source. Statuses the cluster itself sent have no source and are kept.
pub(crate) fn broken_connection_is_unavailable(status: Status) -> Status {
    let transport = std::error::Error::source(&status).is_some();
    if transport && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal) {
        Status::unavailable(format!("the connection broke: {}", status.message()))
    } else {
        status
    }
}

/// The method a call's description starts with: what its latency is kept under, so that the
/// histograms (and `/metrics`) have one series per method, not one per blob.
fn method(what: &str) -> &str {
    what.split_once(' ').map_or(what, |(method, _)| method)
}

/// A cluster's failure of `what` as a store error whose message names the cluster
/// (`describe`) and the call, as [`Cluster::call`]'s errors do.
pub(crate) fn upstream_error(
    describe: &str,
    what: impl std::fmt::Display,
    code: tonic::Code,
    message: &str,
) -> StoreError {
    StoreError::from_code(code as i32, format!("{describe}: {what}: {message}"))
}

/// A cluster's status as a store error (see [`StoreError::from_code`]).
pub(crate) fn store_error(status: &Status) -> StoreError {
    StoreError::from_code(status.code() as i32, status.message())
}

/// How to reach a cluster; built from the daemon's config.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The instance-name prefix that routes here, e.g. `mycluster.example.com`.
    pub prefix: String,
    pub endpoint: Endpoint,
    /// PEM CA bundle for `grpcs://` instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Sent with every call, e.g. an API key the cluster wants.
    pub headers: Vec<(String, String)>,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// How long a call may wait for its answer, and a stream for its next message.
    pub request_timeout: Duration,
}

pub struct Cluster {
    prefix: String,
    endpoint: Endpoint,
    channel: Channel,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// The last `authorization` a client sent for this cluster. Memory only, never written to disk:
    /// the file system uses it to fetch blobs when no client call is in progress.
    authorization: Mutex<Option<AsciiMetadataValue>>,
    /// Sent when no client call is in progress: some clusters (Bazel's remote worker) refuse calls
    /// without a RequestMetadata.
    own_request_metadata: BinaryMetadataValue,
    /// Capabilities by (stripped) instance name, fetched once.
    /// Not held across the call: concurrent first askers each ask (the answers are equal), and
    /// none waits behind another's slow call.
    capabilities: Mutex<HashMap<InstanceName, re::ServerCapabilities>>,
    /// Whether it answers; calls fail at once while it does not.
    watch: Watch,
    /// How long its calls take.
    latency: Latency,
}

impl Cluster {
    /// Prepares the connection; nothing is dialled until the first call.
    pub fn new(options: ClusterOptions) -> Result<Self, ConfigError> {
        let in_cluster = |source| ConfigError::Cluster {
            prefix: options.prefix.clone(),
            source: Box::new(source),
        };
        let channel = options
            .endpoint
            .channel(options.ca_file.as_deref(), options.connect_timeout)
            .map_err(in_cluster)?;
        let headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)> = options
            .headers
            .iter()
            .map(|(name, value)| {
                let key = name.to_ascii_lowercase().parse::<AsciiMetadataKey>();
                let value = value.parse::<AsciiMetadataValue>();
                match (key, value) {
                    (Ok(k), Ok(v)) => Ok((k, v)),
                    _ => Err(in_cluster(ConfigError::Header(name.clone()))),
                }
            })
            .collect::<Result<_, _>>()?;
        let own_request_metadata = BinaryMetadataValue::from_bytes(
            &re::RequestMetadata {
                tool_details: Some(re::ToolDetails {
                    tool_name: "clientd".into(),
                    tool_version: env!("CARGO_PKG_VERSION").into(),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut probe_metadata = MetadataMap::new();
        for (key, value) in &headers {
            probe_metadata.insert(key.clone(), value.clone());
        }
        probe_metadata.insert_bin(context::REQUEST_METADATA, own_request_metadata.clone());
        Ok(Cluster {
            watch: Watch::new(
                describe(&options.prefix, &options.endpoint),
                channel.clone(),
                probe_metadata,
            ),
            prefix: options.prefix,
            endpoint: options.endpoint,
            channel,
            headers,
            retry: options.retry,
            request_timeout: options.request_timeout,
            authorization: Mutex::new(None),
            own_request_metadata,
            capabilities: Default::default(),
            latency: Latency::default(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `cluster PREFIX (ENDPOINT)`, the start of every error about this cluster.
    pub fn describe(&self) -> String {
        describe(&self.prefix, &self.endpoint)
    }

    /// A request carrying the static headers and the forwarded ones: those of the client call in
    /// progress, else the remembered credentials.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value) in &self.headers {
            metadata.insert(key.clone(), value.clone());
        }
        let client = context::current().map(|c| MetadataMap::from_headers(c.headers));
        let client = client.as_ref();
        match client.and_then(|m| m.get(AUTHORIZATION)) {
            Some(auth) => {
                metadata.insert(AUTHORIZATION, auth.clone());
                let mut remembered = self.authorization.lock().unwrap();
                if remembered.as_ref() != Some(auth) {
                    *remembered = Some(auth.clone());
                }
            }
            None => {
                if let Some(auth) = self.authorization.lock().unwrap().clone() {
                    metadata.insert(AUTHORIZATION, auth);
                }
            }
        }
        let request_metadata = client
            .and_then(|m| m.get_bin(context::REQUEST_METADATA))
            .unwrap_or(&self.own_request_metadata);
        metadata.insert_bin(context::REQUEST_METADATA, request_metadata.clone());
        request
    }

    /// "up", or "down for N s: why" (shown by `clientd stats`).
    pub fn state(&self) -> String {
        self.watch.health.describe()
    }

    /// Whether the cluster is answering (not marked down).
    pub fn is_up(&self) -> bool {
        self.watch.health.refusal().is_none()
    }

    /// How long its calls took, per method.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Marks the cluster down and brings it back (see [`Watch::failed`]).
    pub(crate) fn watch(&self) -> &Watch {
        &self.watch
    }

    /// Whether credentials from a client are remembered (shown by `clientd stats`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.lock().unwrap().is_some()
    }

    /// How long a call made now may wait for its answer: the configured request timeout, or
    /// less when the client call it serves has a sooner deadline.
    pub fn call_timeout(&self) -> Duration {
        let client_deadline = context::current().and_then(|c| c.deadline);
        match client_deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(self.request_timeout),
            None => self.request_timeout,
        }
    }

    /// How long a stream from this cluster may go without a message, or an upload without the
    /// cluster taking data, before it counts as stalled.
    pub fn stall_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs one call with retries, within [`Cluster::call_timeout`] in all (a cluster that hangs
    /// gives DEADLINE_EXCEEDED then, not a stalled build); errors name the cluster and the call.
    /// `what` is the method, and may go on with what the call is about ("ByteStream.Read of
    /// blob ..."): errors say all of it, the latency is kept under the method alone.
    pub async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let timeout = self.call_timeout();
        let started = Instant::now();
        let status = match self.watch.health.refusal() {
            Some(refusal) => refusal,
            None => {
                let attempts = self.retry.run(|| {
                    let attempt = call();
                    async move { attempt.await.map_err(broken_connection_is_unavailable) }
                });
                let answer = tokio::time::timeout(timeout, attempts).await;
                self.latency.observe(method(what), started.elapsed());
                let status = match answer {
                    Ok(Ok(response)) => return Ok(response),
                    Ok(Err(status)) => status,
                    Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
                };
                // A client's own short deadline passing says nothing about the cluster.
                if status.code() != tonic::Code::DeadlineExceeded || timeout == self.request_timeout
                {
                    self.watch.failed(&status);
                }
                status
            }
        };
        Err(self.named(what, &status))
    }

    /// `status` with a message that names the cluster and `what` failed (its metadata kept).
    fn named(&self, what: impl std::fmt::Display, status: &Status) -> Status {
        let mut out = Status::new(
            status.code(),
            format!("{}: {what}: {}", self.describe(), status.message()),
        );
        *out.metadata_mut() = status.metadata().clone();
        out
    }

    /// UNAVAILABLE at once, naming the cluster and `what`, while the cluster is down: for calls
    /// that do not go through [`Cluster::call`] (a streamed upload).
    pub(crate) fn check_up(&self, what: impl std::fmt::Display) -> Result<(), Status> {
        match self.watch.health.refusal() {
            Some(refusal) => Err(self.named(what, &refusal)),
            None => Ok(()),
        }
    }

    /// `stream` as it arrives, failing with UNAVAILABLE when the cluster sends nothing for
    /// [`Cluster::stall_timeout`], or the connection breaks: a stream is bounded by its progress,
    /// not by its length (a 10 GiB read that keeps moving is fine).
    pub fn progressing<T: Send + 'static>(
        &self,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> BoxStream<'static, Result<T, Status>> {
        let stall = self.stall_timeout();
        let stream = stream.boxed();
        let watch = self.watch.clone();
        stream::unfold(Some(stream), move |stream| {
            let watch = watch.clone();
            async move {
                let mut stream = stream?;
                let status = match tokio::time::timeout(stall, stream.next()).await {
                    Ok(Some(Ok(item))) => return Some((Ok(item), Some(stream))),
                    Ok(None) => return None,
                    Ok(Some(Err(status))) => broken_connection_is_unavailable(status),
                    Err(_) => {
                        Status::unavailable(format!("the stream stalled: nothing for {stall:?}"))
                    }
                };
                watch.failed(&status);
                Some((Err(status), None))
            }
        })
        .boxed()
    }

    /// [`Cluster::call`] with the error as a [`StoreError`].
    pub async fn store_call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.call(what, call)
            .await
            .map_err(|status| store_error(&status))
    }

    pub(crate) fn cas_client(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn bytestream_client(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn action_cache_client(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The cluster's capabilities for `instance_name`, asked once and remembered.
    pub async fn capabilities(
        &self,
        instance_name: &InstanceName,
    ) -> Result<re::ServerCapabilities, Status> {
        if let Some(capabilities) = self.capabilities.lock().unwrap().get(instance_name) {
            return Ok(capabilities.clone());
        }
        let capabilities = self
            .call("GetCapabilities", || {
                let mut client = CapabilitiesClient::new(self.channel.clone());
                let request = self.request(re::GetCapabilitiesRequest {
                    instance_name: instance_name.to_string(),
                });
                async move { client.get_capabilities(request).await }
            })
            .await?
            .into_inner();
        self.capabilities
            .lock()
            .unwrap()
            .insert(instance_name.clone(), capabilities.clone());
        Ok(capabilities)
    }

    /// The most blob bytes one batch call to this cluster may carry: its own limit, and never
    /// more than clientd's, so that requests stay well under the message size.
    pub async fn batch_limit(&self, instance_name: &InstanceName) -> Result<u64, Status> {
        let advertised = self
            .capabilities(instance_name)
            .await?
            .cache_capabilities
            .map_or(0, |c| c.max_batch_total_size_bytes);
        Ok(match u64::try_from(advertised) {
            Ok(n) if n > 0 => n.min(MAX_BATCH_BYTES),
            _ => MAX_BATCH_BYTES,
        })
    }

    /// Starts an execution; the operations stream through as the cluster sends them.
    pub async fn execute(
        &self,
        request: re::ExecuteRequest,
    ) -> Result<Streaming<Operation>, Status> {
        let response = self
            .call("Execute", || {
                let mut client = self.execution_client();
                let request = self.request(request.clone());
                async move { client.execute(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Follows an execution started earlier.
    pub async fn wait_execution(
        &self,
        request: re::WaitExecutionRequest,
    ) -> Result<Streaming<Operation>, Status> {
        let response = self
            .call("WaitExecution", || {
                let mut client = self.execution_client();
                let request = self.request(request.clone());
                async move { client.wait_execution(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    fn execution_client(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_kept_per_method_not_per_blob() {
        assert_eq!(
            method("ByteStream.Read of blob sha256/ab/3"),
            "ByteStream.Read"
        );
        assert_eq!(method("GetCapabilities"), "GetCapabilities");
    }

    #[test]
    fn a_clusters_status_keeps_its_message_and_the_code_a_client_acts_on() {
        let m = "why";
        for (status, err) in [
            (Status::not_found(m), StoreError::NotFound(m.into())),
            (
                Status::permission_denied(m),
                StoreError::PermissionDenied(m.into()),
            ),
            (
                Status::resource_exhausted(m),
                StoreError::ResourceExhausted(m.into()),
            ),
            (Status::aborted(m), StoreError::Unavailable(m.into())),
            (Status::cancelled(m), StoreError::Unavailable(m.into())),
            (Status::data_loss(m), StoreError::Internal(m.into())),
            (Status::unknown(m), StoreError::Internal(m.into())),
        ] {
            assert_eq!(store_error(&status), err);
        }
    }

    fn cluster(request_timeout: Duration) -> Cluster {
        Cluster::new(ClusterOptions {
            prefix: "c.example.com".into(),
            endpoint: Endpoint::parse("unix:/nonexistent/grpc").unwrap(),
            ca_file: None,
            headers: vec![],
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            request_timeout,
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_moving_is_fine_and_one_that_stalls_is_unavailable() {
        let cluster = cluster(Duration::from_secs(2));
        // Ten messages a second apart: 10 s in all, never 2 s without progress.
        let moving = stream::iter(0..10).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Status>(i)
        });
        let got: Vec<_> = cluster.progressing(moving).collect().await;
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(Result::is_ok));
        // One message, then nothing.
        let stalling = stream::iter([Ok::<_, Status>(1)]).chain(stream::pending());
        let got: Vec<_> = cluster.progressing(stalling).collect().await;
        assert_eq!(got.len(), 2);
        let err = got[1].as_ref().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("stalled"), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_ends_at_the_timeout_or_the_client_deadline() {
        let cluster = cluster(Duration::from_secs(60));
        let hang = || std::future::pending::<Result<(), Status>>();
        // A client that waits 5 s: the call need not outlive it, and the cluster is not judged
        // by the client's impatience.
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", "5S".parse().unwrap());
        let client = context::RequestContext::from_headers(&headers);
        let start = tokio::time::Instant::now();
        let err = context::scope(client, cluster.call("Hang", hang))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(start.elapsed() <= Duration::from_secs(5));
        assert_eq!(cluster.state(), "up");
        // No answer within the request timeout: DEADLINE_EXCEEDED, and the cluster is down.
        let start = tokio::time::Instant::now();
        let err = cluster.call("Hang", hang).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(
            err.message()
                .starts_with("cluster c.example.com (unix:/nonexistent/grpc): Hang:"),
            "{err:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert!(
            cluster.state().starts_with("down for"),
            "{}",
            cluster.state()
        );
        // While it is down, calls fail at once.
        let start = tokio::time::Instant::now();
        let err = cluster.call("Hang", hang).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("the cluster is down"), "{err:?}");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_broken_connection_is_unavailable_and_a_cluster_s_own_status_is_kept() {
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(
            broken_connection_is_unavailable(broken).code(),
            tonic::Code::Unavailable
        );
        let own = Status::internal("the cluster's own failure");
        assert_eq!(
            broken_connection_is_unavailable(own).code(),
            tonic::Code::Internal
        );
    }
}
