//! `grpcs://` clusters: verified against a given CA file, and refused when the certificate is not
//! trusted. The cluster is a tonic Capabilities server with a certificate made for the test.

use clientd_digest::InstanceName;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_upstream::{Cluster, ClusterOptions, Endpoint, RetryPolicy};
use re::capabilities_server::{Capabilities, CapabilitiesServer};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

struct Answering;

#[tonic::async_trait]
impl Capabilities for Answering {
    async fn get_capabilities(
        &self,
        _request: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        Ok(Response::new(re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                max_batch_total_size_bytes: 1234,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn cluster(endpoint: &str, ca_file: Option<PathBuf>) -> Cluster {
    Cluster::new(ClusterOptions {
        ca_file,
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..options_for(endpoint)
    })
    .unwrap()
}

#[tokio::test]
async fn grpcs_verifies_the_server_against_the_configured_ca() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem)))
            .unwrap()
            .add_service(CapabilitiesServer::new(Answering))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &cert_pem).unwrap();
    let endpoint = format!("grpcs://localhost:{port}");

    let trusted = cluster(&endpoint, Some(ca_file));
    let capabilities = trusted
        .capabilities(&InstanceName::default())
        .await
        .unwrap();
    assert_eq!(
        capabilities
            .cache_capabilities
            .unwrap()
            .max_batch_total_size_bytes,
        1234
    );

    // The system's roots do not know the test's certificate.
    let untrusted = cluster(&endpoint, None);
    let err = untrusted
        .capabilities(&InstanceName::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("cluster tls.example.com (grpcs://localhost:"),
        "{}",
        err.message()
    );

    // A CA file that cannot be read is a configuration error, named as such.
    let missing = Cluster::new(ClusterOptions {
        ca_file: Some(dir.path().join("absent.pem")),
        ..options_for(&endpoint)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(missing.contains("cannot read CA file"), "{missing}");
}

fn options_for(endpoint: &str) -> ClusterOptions {
    ClusterOptions {
        prefix: "tls.example.com".into(),
        endpoint: Endpoint::parse(endpoint).unwrap(),
        ca_file: None,
        headers: vec![],
        retry: RetryPolicy::default(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    }
}
