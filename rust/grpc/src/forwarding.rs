//! A tower layer that makes each call's forwardable headers (`authorization`,
//! `requestmetadata-bin`) the request context of its handler, so that clusters receive them.
//! See [`clientd_store::context`].

use clientd_store::context::{self, RequestContext};
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardHeadersLayer;

impl<S> Layer<S> for ForwardHeadersLayer {
    type Service = ForwardHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ForwardHeaders<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ForwardHeaders<S>
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
        let forwarded = RequestContext::from_headers(request.headers());
        Box::pin(context::scope(forwarded, self.inner.call(request)))
    }
}
