//! Where a cluster listens: `grpc://HOST:PORT`, `grpcs://HOST:PORT` or `unix:/PATH`, the same
//! spellings Bazel's `--remote_executor` accepts.

use hyper_util::rt::TokioIo;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Why a cluster cannot be set up from its configuration: a bad endpoint, a CA file, a header.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "endpoint {text:?}: {why}; expected grpc://HOST:PORT, grpcs://HOST:PORT or unix:/PATH"
    )]
    Endpoint { text: String, why: String },
    #[error("endpoint {endpoint}: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint {0}: a CA file only applies to grpcs:// endpoints")]
    CaFileWithoutTls(String),
    #[error("header {0:?} is not a valid ASCII gRPC header")]
    Header(String),
    /// One of the above, in the named cluster's configuration.
    #[error("cluster {prefix:?}: {source}")]
    Cluster {
        prefix: String,
        #[source]
        source: Box<ConfigError>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain-text HTTP/2 to `host:port`.
    Grpc(String),
    /// TLS to `host:port`, verified against the system's roots or a given CA.
    Grpcs(String),
    Unix(PathBuf),
}

/// HTTP/2 flow-control windows, as on the server side: large blobs should not wait for a window
/// update every 64 KiB over a long round trip.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame the cluster may send, as on the server side: at the protocol's 16 KiB
/// default a download costs two system calls and a copy per 16 KiB.
const MAX_FRAME_SIZE: u32 = 1 << 20;

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            Err(ConfigError::Endpoint {
                text: text.to_string(),
                why: why.to_string(),
            })
        };
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return bad("the socket path must be absolute");
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (scheme, authority) = match text.split_once("://") {
            Some(("grpc", a)) => (false, a),
            Some(("grpcs", a)) => (true, a),
            Some((scheme, _)) => return bad(&format!("unknown scheme {scheme:?}")),
            None => return bad("no scheme"),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return bad("the address must be HOST:PORT"),
        }
        if authority.contains('/') {
            return bad("the address must be HOST:PORT, without a path");
        }
        let authority = authority.to_string();
        Ok(if scheme {
            Endpoint::Grpcs(authority)
        } else {
            Endpoint::Grpc(authority)
        })
    }

    /// A channel that connects on first use (and reconnects after failures), so a cluster that
    /// is down does not stop the daemon from starting.
    pub fn channel(
        &self,
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
    ) -> Result<Channel, ConfigError> {
        let transport = |source| ConfigError::Transport {
            endpoint: self.to_string(),
            source,
        };
        let uri = match self {
            Endpoint::Grpc(authority) => format!("http://{authority}"),
            Endpoint::Grpcs(authority) => format!("https://{authority}"),
            // The URI is not used to connect; it only fills the :authority header.
            Endpoint::Unix(_) => "http://localhost".to_string(),
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(transport)?
            .connect_timeout(connect_timeout)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .tcp_nodelay(true);
        if let Endpoint::Grpcs(authority) = self {
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let mut tls = ClientTlsConfig::new().domain_name(host);
            tls = match ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| ConfigError::CaFile {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(transport)?;
        } else if ca_file.is_some() {
            return Err(ConfigError::CaFileWithoutTls(self.to_string()));
        }
        Ok(match self {
            Endpoint::Unix(path) => {
                let path = path.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
            }
            _ => endpoint.connect_lazy(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Grpc(a) => write!(f, "grpc://{a}"),
            Endpoint::Grpcs(a) => write!(f, "grpcs://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings_bazel_accepts() {
        assert_eq!(
            Endpoint::parse("grpc://127.0.0.1:8980").unwrap(),
            Endpoint::Grpc("127.0.0.1:8980".into())
        );
        assert_eq!(
            Endpoint::parse("grpcs://cluster.example.com:443/").unwrap(),
            Endpoint::Grpcs("cluster.example.com:443".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("grpc://[::1]:80").unwrap().to_string(),
            "grpc://[::1]:80"
        );
        for bad in [
            "127.0.0.1:8980",
            "http://x:1",
            "grpc://x",
            "grpc://:1",
            "grpc://x:99999",
            "grpc://x:1/path",
            "unix:relative.sock",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("expected grpc://"), "{bad}: {err}");
        }
    }
}
