//! What a cluster receives: static headers, the client's forwarded headers, and the remembered
//! credentials when no client call is in progress. The cluster here is a recording Capabilities
//! server on a UNIX socket (a stand-in for this one module; the daemon's tests use real peers).

use clientd_digest::InstanceName;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::context::{self, RequestContext};
use clientd_upstream::{Cluster, ClusterOptions, Endpoint, RetryPolicy};
use prost::Message;
use re::capabilities_server::{Capabilities, CapabilitiesServer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{BinaryMetadataValue, MetadataMap};
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<MetadataMap>>>);

#[tonic::async_trait]
impl Capabilities for Recorder {
    async fn get_capabilities(
        &self,
        request: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        self.0.lock().unwrap().push(request.metadata().clone());
        Ok(Response::new(re::ServerCapabilities::default()))
    }
}

fn cluster(endpoint: Endpoint) -> Cluster {
    Cluster::new(ClusterOptions {
        prefix: "c.example.com".into(),
        endpoint,
        ca_file: None,
        headers: vec![("X-Api-Key".into(), "k1".into())],
        retry: RetryPolicy::default(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    })
    .unwrap()
}

fn request_metadata(metadata: &MetadataMap) -> re::RequestMetadata {
    let value = metadata
        .get_bin("build.bazel.remote.execution.v2.requestmetadata-bin")
        .expect("requestmetadata-bin is always sent");
    re::RequestMetadata::decode(value.to_bytes().unwrap()).unwrap()
}

#[tokio::test]
async fn forwarded_static_and_remembered_headers_reach_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cluster.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let recorder = Recorder::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CapabilitiesServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let cluster = cluster(Endpoint::Unix(socket));
    assert!(!cluster.has_credentials());

    // A client call: its authorization and request metadata go through.
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer t0k3n".parse().unwrap());
    let bazel = re::RequestMetadata {
        tool_invocation_id: "invocation-1".into(),
        ..Default::default()
    };
    headers.insert("cookie", "not forwarded".parse().unwrap());
    let mut client = RequestContext::from_headers(&headers);
    let mut metadata = MetadataMap::from_headers(client.headers);
    metadata.insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        BinaryMetadataValue::from_bytes(&bazel.encode_to_vec()),
    );
    client.headers = metadata.into_headers();
    context::scope(client, cluster.capabilities(&name("a")))
        .await
        .unwrap();
    assert!(cluster.has_credentials());

    // Background work (no client call): the remembered credentials, clientd's own metadata.
    cluster.capabilities(&name("b")).await.unwrap();
    // Capabilities are remembered per instance name: no third call.
    cluster.capabilities(&name("a")).await.unwrap();

    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for metadata in &seen {
        assert_eq!(metadata.get("x-api-key").unwrap(), "k1");
        assert_eq!(metadata.get("authorization").unwrap(), "Bearer t0k3n");
        assert!(metadata.get("cookie").is_none());
    }
    assert_eq!(
        request_metadata(&seen[0]).tool_invocation_id,
        "invocation-1"
    );
    assert_eq!(
        request_metadata(&seen[1]).tool_details.unwrap().tool_name,
        "clientd"
    );
}

#[tokio::test]
async fn a_cluster_that_is_down_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(Endpoint::Unix(dir.path().join("absent.sock")));
    let err = cluster
        .capabilities(&InstanceName::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().starts_with("cluster c.example.com (unix:")
            && err.message().contains("GetCapabilities")
            && err.message().contains("after 4 attempts"),
        "{}",
        err.message()
    );
}

/// A test's instance name.
fn name(name: &str) -> InstanceName {
    name.parse().unwrap()
}
