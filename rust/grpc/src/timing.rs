//! A tower layer that times each call on the gRPC front, per method, for `/metrics`
//! (`clientd_request_duration_seconds`): the daemon's own share of what a client waits for, to
//! set against the client's figure (Bazel's `--profile`); the rest is the client and the wire.
//!
//! A call is timed until its handler returns the response, before the body is sent: a unary
//! call's whole answer, a ByteStream Read until its first bytes are ready, a Write for the whole
//! upload (its handler returns after the last message). A call the client abandons first is not
//! counted.

use clientd_upstream::Latency;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

#[derive(Debug, Clone)]
pub struct TimingLayer {
    latency: Arc<Latency>,
}

impl TimingLayer {
    /// Observes every call into `latency`, by method name (`GetActionResult`, `Read`, ...).
    pub fn new(latency: Arc<Latency>) -> Self {
        TimingLayer { latency }
    }
}

impl<S> Layer<S> for TimingLayer {
    type Service = Timing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timing {
            inner,
            latency: self.latency.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timing<S> {
    inner: S,
    latency: Arc<Latency>,
}

impl<S, B> Service<http::Request<B>> for Timing<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // gRPC paths are /package.Service/Method.
        let method = request.uri().path().rsplit('/').next().unwrap_or("");
        let method = method.to_string();
        let latency = self.latency.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            latency.observe(&method, started.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    #[tokio::test]
    async fn observes_each_call_by_method_once_answered() {
        let latency = Arc::new(Latency::default());
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, Infallible>("answer")
        });
        let mut service = TimingLayer::new(latency.clone()).layer(slow);
        let counted = || latency.snapshot().iter().map(|(_, h)| h.count).sum::<u64>();
        for (before, path) in [
            "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
            "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
            "/google.bytestream.ByteStream/Read",
        ]
        .into_iter()
        .enumerate()
        {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            let answer = service.call(request);
            assert_eq!(counted(), before as u64, "counted before it answered");
            assert_eq!(answer.await.unwrap(), "answer");
        }
        let snapshot = latency.snapshot();
        let methods: Vec<(&str, u64)> = snapshot
            .iter()
            .map(|(m, h)| (m.as_str(), h.count))
            .collect();
        assert_eq!(methods, [("GetActionResult", 2), ("Read", 1)]);
        let (_, read) = &snapshot[1];
        assert!(read.sum_seconds >= 0.002, "{}", read.sum_seconds);
    }
}
