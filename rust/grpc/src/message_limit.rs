//! A tower layer that gives an over-long message the status gRPC clients expect.
//!
//! gRPC's convention for a message larger than the receiver accepts is RESOURCE_EXHAUSTED
//! (grpc-java, grpc C-core and grpc-go all answer so, and clients treat it as "send less"); tonic
//! answers OUT_OF_RANGE, which REAPI uses for a read offset past the end of a blob. tonic builds
//! that answer before any handler runs (or, for a client stream, inside the handler's
//! `message()`), as a trailers-only response whose `grpc-status` header this layer rewrites.
//! Handlers' own OUT_OF_RANGE statuses are left alone: only tonic's decoder message matches.

use futures::future::BoxFuture;
use http::HeaderValue;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// How tonic's decoder starts the message of a status for a message over the limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

#[derive(Debug, Clone, Copy, Default)]
pub struct MessageLimitLayer;

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for MessageLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            resource_exhausted_for_too_large(&mut response);
            Ok(response)
        })
    }
}

fn resource_exhausted_for_too_large<RB>(response: &mut http::Response<RB>) {
    let Some(status) = response.extensions().get::<Status>() else {
        return;
    };
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
        return;
    }
    let exhausted = Status::resource_exhausted(status.message().to_owned());
    response.headers_mut().insert(
        Status::GRPC_STATUS,
        HeaderValue::from(Code::ResourceExhausted as i32),
    );
    response.extensions_mut().insert(exhausted);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: Status) -> http::Response<()> {
        let mut response = status.into_http::<()>();
        resource_exhausted_for_too_large(&mut response);
        response
    }

    fn code(response: &http::Response<()>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[test]
    fn only_tonic_s_too_large_becomes_resource_exhausted() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 17000000 bytes, the limit is: \
             16777216 bytes",
        );
        assert_eq!(code(&answer(too_large)), "8");
        // REAPI's own OUT_OF_RANGE (a read offset past the end) stays.
        assert_eq!(
            code(&answer(Status::out_of_range(
                "read_offset 10 is past the end"
            ))),
            "11"
        );
        assert_eq!(code(&answer(Status::not_found("x"))), "5");
    }
}
