//! The daemon's loopback HTTP listener (`--http-listen`, off by default): `/metrics` for
//! Prometheus; `/`, the counters, the clusters and the recent invocations; one invocation's
//! actions, one action (command, inputs, outputs, why it missed), and blobs. HTTP/1.1 only, GET
//! only, no state: every answer is rendered from the daemon's counters, record and stores.

mod error;
mod invocation;
mod metrics;
mod page;

use bytes::Bytes;
use clientd_activity::ActivityLog;
use clientd_store::{ActionCache, BlobStore, Stats};
use clientd_upstream::{Cluster, Latency};
use error::PageError;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pages are rendered from.
pub struct Web {
    pub stats: Arc<Stats>,
    pub clusters: Vec<Arc<Cluster>>,
    /// The daemon's time per method on its gRPC front (clientd_grpc's `TimingLayer`).
    pub front_latency: Arc<Latency>,
    pub activity: Option<Arc<ActivityLog>>,
    /// Every instance's CAS and action cache (the front's stores).
    pub blobs: Arc<dyn BlobStore>,
    pub results: Arc<dyn ActionCache>,
    /// Where the file system is mounted, for `cas/` paths.
    pub mount: Option<std::path::PathBuf>,
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// A page, or the status of what is wrong and a line saying it.
fn page(rendered: Result<String, PageError>) -> Response<Full<Bytes>> {
    match rendered {
        Ok(html) => response(StatusCode::OK, HTML, html),
        Err(e) => refusal(&e),
    }
}

fn refusal(e: &PageError) -> Response<Full<Bytes>> {
    response(e.status(), TEXT, format!("{e}\n"))
}

async fn route(web: &Web, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n",
        );
    }
    match request.uri().path() {
        "/metrics" => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&web.stats, &web.clusters, &web.front_latency),
        ),
        "/" => response(StatusCode::OK, HTML, page::index(web)),
        "/invocation" => page(invocation::invocation(
            web,
            &page::query(request.uri().query()),
        )),
        "/action" => page(invocation::action(web, &page::query(request.uri().query())).await),
        "/blob" => match invocation::blob(web, &page::query(request.uri().query())).await {
            Ok((content_type, bytes)) => response(StatusCode::OK, &content_type, bytes),
            Err(e) => refusal(&e),
        },
        path => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("no page {path:?}; try / or /metrics\n"),
        ),
    }
}

/// Serves `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, web: Arc<Web>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let web = web.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(route(&web, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("HTTP connection: {e}");
            }
        });
    }
}
