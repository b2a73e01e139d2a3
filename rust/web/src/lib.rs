//! The daemon's loopback HTTP listener (`--http-listen`, off by default): `/metrics` for
//! Prometheus, and `/`, a page with the counters, the clusters and the recent invocations. HTTP/1.1
//! only, GET only, no state: every answer is rendered from the daemon's counters and record.

mod metrics;
mod page;

use bytes::Bytes;
use clientd_activity::ActivityLog;
use clientd_store::Stats;
use clientd_upstream::Cluster;
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
    pub activity: Option<Arc<ActivityLog>>,
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn route(web: &Web, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&web.stats, &web.clusters),
        ),
        "/" => response(StatusCode::OK, "text/html; charset=utf-8", page::index(web)),
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
                let answer = route(&web, &request);
                async move { Ok::<_, Infallible>(answer) }
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
