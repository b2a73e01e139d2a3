//! One configured cluster: its channel, the headers its calls carry, retries and capabilities.

use crate::endpoint::Endpoint;
use crate::retry::RetryPolicy;
use clientd_digest::DigestFunction;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use clientd_proto::google::longrunning::Operation;
use clientd_store::{context, StoreError};
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use re::execution_client::ExecutionClient;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// Largest message sent to or accepted from a cluster, as on the front.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// clientd's own cap on a batch call's blob bytes.
const MAX_BATCH_BYTES: u64 = 4 << 20;

const AUTHORIZATION: &str = "authorization";
const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// A request's `digest_function` field: left UNKNOWN where the hash length implies the function,
/// so that servers predating the field understand the request.
pub(crate) fn digest_function_field(function: DigestFunction) -> i32 {
    if function.named_in_resources() {
        function.to_proto()
    } else {
        0
    }
}

/// A cluster's failure of `what` as a store error whose message names the cluster
/// (`describe`) and the call, as [`Cluster::call`]'s errors do.
pub(crate) fn upstream_error(
    describe: &str,
    what: impl std::fmt::Display,
    code: tonic::Code,
    message: &str,
) -> StoreError {
    StoreError::from_status(&Status::new(code, format!("{describe}: {what}: {message}")))
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
}

pub struct Cluster {
    prefix: String,
    endpoint: Endpoint,
    channel: Channel,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    retry: RetryPolicy,
    /// The last `authorization` a client sent for this cluster. Memory only, never written to disk:
    /// the file system uses it to fetch blobs when no client call is in progress.
    authorization: Mutex<Option<AsciiMetadataValue>>,
    /// Sent when no client call is in progress: some clusters (Bazel's remote worker) refuse calls
    /// without a RequestMetadata.
    own_request_metadata: BinaryMetadataValue,
    /// Capabilities by (stripped) instance name, fetched once.
    capabilities: tokio::sync::Mutex<HashMap<String, re::ServerCapabilities>>,
}

impl Cluster {
    /// Prepares the connection; nothing is dialled until the first call.
    pub fn new(options: ClusterOptions) -> Result<Self, String> {
        let channel = options
            .endpoint
            .channel(options.ca_file.as_deref(), options.connect_timeout)
            .map_err(|e| format!("cluster {:?}: {e}", options.prefix))?;
        let headers = options
            .headers
            .iter()
            .map(|(name, value)| {
                let key = name.to_ascii_lowercase().parse::<AsciiMetadataKey>();
                let value = value.parse::<AsciiMetadataValue>();
                match (key, value) {
                    (Ok(k), Ok(v)) => Ok((k, v)),
                    _ => Err(format!(
                        "cluster {:?}: header {name:?} is not a valid ASCII gRPC header",
                        options.prefix
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Cluster {
            prefix: options.prefix,
            endpoint: options.endpoint,
            channel,
            headers,
            retry: options.retry,
            authorization: Mutex::new(None),
            own_request_metadata: BinaryMetadataValue::from_bytes(
                &re::RequestMetadata {
                    tool_details: Some(re::ToolDetails {
                        tool_name: "clientd".into(),
                        tool_version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            capabilities: Default::default(),
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
        format!("cluster {} ({})", self.prefix, self.endpoint)
    }

    /// A request carrying the static headers and the forwarded ones: those of the client call in
    /// progress, else the remembered credentials.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value) in &self.headers {
            metadata.insert(key.clone(), value.clone());
        }
        let client = context::current();
        let client = client.as_ref().map(|c| &c.metadata);
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
            .and_then(|m| m.get_bin(REQUEST_METADATA))
            .unwrap_or(&self.own_request_metadata);
        metadata.insert_bin(REQUEST_METADATA, request_metadata.clone());
        request
    }

    /// Whether credentials from a client are remembered (shown by `clientd stats`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.lock().unwrap().is_some()
    }

    /// Runs one call with retries; errors name the cluster and the call.
    pub async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.retry.run(call).await.map_err(|status| {
            let mut out = Status::new(
                status.code(),
                format!("{}: {what}: {}", self.describe(), status.message()),
            );
            *out.metadata_mut() = status.metadata().clone();
            out
        })
    }

    /// [`Cluster::call`] with the error as a [`StoreError`].
    pub async fn store_call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.call(what, call)
            .await
            .map_err(|status| StoreError::from_status(&status))
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
        instance_name: &str,
    ) -> Result<re::ServerCapabilities, Status> {
        let mut cache = self.capabilities.lock().await;
        if let Some(capabilities) = cache.get(instance_name) {
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
        cache.insert(instance_name.to_string(), capabilities.clone());
        Ok(capabilities)
    }

    /// The most blob bytes one batch call to this cluster may carry: its own limit, and never
    /// more than clientd's, so that requests stay well under the message size.
    pub async fn batch_limit(&self, instance_name: &str) -> Result<u64, Status> {
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
