//! The request headers that travel from Bazel to a cluster with each call.
//!
//! Store traits carry instance names, not gRPC metadata, so the headers a cluster needs
//! (`authorization`, `requestmetadata-bin`) ride along in a task-local set by the gRPC front for
//! the duration of each call. A decorator that hands work to another task (a shared fetch) must
//! spawn it with [`spawn`] so the headers go along.

use std::future::Future;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;

/// Headers forwarded to clusters, exactly as the client sent them.
pub const FORWARDED_HEADERS: [&str; 2] = [
    "authorization",
    "build.bazel.remote.execution.v2.requestmetadata-bin",
];

/// The forwarded headers of one client call.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub metadata: MetadataMap,
}

impl RequestContext {
    /// Keeps only the [`FORWARDED_HEADERS`] of `headers`.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut kept = http::HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = headers.get(name) {
                kept.insert(name, value.clone());
            }
        }
        RequestContext {
            metadata: MetadataMap::from_headers(kept),
        }
    }
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// Runs `future` with `context` as the current request context.
pub async fn scope<F: Future>(context: RequestContext, future: F) -> F::Output {
    CONTEXT.scope(context, future).await
}

/// The current call's forwarded headers, if the code runs on behalf of a client call.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// `tokio::spawn` that carries the current request context into the new task.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(context) => tokio::spawn(CONTEXT.scope(context, future)),
        None => tokio::spawn(future),
    }
}
