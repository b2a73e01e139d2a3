//! Bazel's HTTP cache protocol on the daemon's socket, for local instances:
//! `--remote_cache=http://localhost/local/<name> --remote_proxy=unix:<socket>`.
//!
//! Why a second protocol: through gRPC, Bazel 4's client spends about 0.6 ms of its own CPU per
//! cache lookup and 1 ms per download more than through its HTTP cache client (profiled: grpc-
//! java's executor and netty threads), which is most of what a warm build through clientd costs
//! over `--disk_cache`. The daemon's own handling is the same either way: the same stores, so the
//! same verification, durability, bound and completeness checks as over gRPC.
//!
//! - `GET`/`HEAD /<instance>/ac/<hash>`: the action result, 404 when there is none (or an output
//!   it names is gone). `PUT`: stores one (an ActionResult message).
//! - `GET`/`HEAD /<instance>/cas/<hash>`: the blob. `PUT`: stores one, verified against the hash
//!   and the Content-Length.
//! - Only `local` and `local/...` instances: a cluster's CAS and action cache need sizes that
//!   this protocol does not send (501). Remote execution is gRPC's.
//! - Action results put here are keyed by the action's hash alone, so they are not the ones gRPC
//!   clients put (those are keyed by hash and size); blobs are shared.
//! - No request metadata travels with these calls, so they are not in the activity record.
//! - Refusals carry a reason in a text body: 400 (bad path or bytes), 405, 411 (a blob's PUT
//!   without Content-Length), 413 (an action result over 64 MiB), 501, 507 (the disk is full).

mod sizes;
mod target;

use bytes::{Bytes, BytesMut};
use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2::{ActionResult, Tree};
use clientd_store::{ActionCache, BlobStore, Stats, StoreError};
use clientd_upstream::Latency;
use futures::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message;
use sizes::Sizes;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{Kind, Target};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest ActionResult taken (the gRPC front's message limit is of the same order).
const MAX_ACTION_RESULT: usize = 64 << 20;

/// Blobs whose sizes are remembered ([`sizes`]): many times the outputs of the actions a build
/// looks up at once; about 100 bytes each.
const KNOWN_BLOBS: usize = 1 << 16;

/// What a request body's errors are taken as.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: whole, or a blob streamed from the store.
pub type ResponseBody = UnsyncBoxBody<Bytes, StoreError>;

/// The HTTP cache over the front's stores (the same ones the gRPC services use).
pub struct RestCache {
    blobs: Arc<dyn BlobStore>,
    results: Arc<dyn ActionCache>,
    stats: Arc<Stats>,
    /// The daemon's time per kind of request (`GET /ac`, `PUT /cas`, ...), shared with the gRPC
    /// front's methods: `clientd_request_duration_seconds` on `/metrics`.
    latency: Arc<Latency>,
    sizes: Sizes,
}

impl RestCache {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        results: Arc<dyn ActionCache>,
        stats: Arc<Stats>,
        latency: Arc<Latency>,
    ) -> Self {
        RestCache {
            blobs,
            results,
            stats,
            latency,
            sizes: Sizes::new(NonZeroUsize::new(KNOWN_BLOBS).expect("not zero")),
        }
    }

    /// Serves one HTTP/1.1 connection on a task of its own.
    pub fn spawn<S>(self: &Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(self.clone().serve(io));
    }

    /// Serves one HTTP/1.1 connection (keep-alive: Bazel reuses them) until the client closes it.
    async fn serve<S>(self: Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let cache = self.clone();
            async move { Ok::<_, Infallible>(cache.handle(request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = connection.await {
            tracing::debug!("HTTP cache connection: {e}");
        }
    }

    /// Answers one request, timed until its response starts (a blob's bytes then stream).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let (response, kind) = self.answer(request).await;
        // Only the methods served, so that a client's odd ones add no histograms.
        let served = matches!(method, Method::GET | Method::HEAD | Method::PUT);
        if let (Some(kind), true) = (kind, served) {
            let name = match kind {
                Kind::ActionCache => "ac",
                Kind::Cas => "cas",
            };
            self.latency
                .observe(&format!("{method} /{name}"), started.elapsed());
        }
        response
    }

    /// The response, and what the request was for if it named anything.
    async fn answer<B>(&self, request: Request<B>) -> (Response<ResponseBody>, Option<Kind>)
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError>,
    {
        let target = match target::parse(request.uri().path()) {
            Ok(target) => target,
            Err(e) => return (text(StatusCode::BAD_REQUEST, e.to_string()), None),
        };
        if !target.instance.is_local() {
            let refusal = text(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "instance {:?}: the HTTP cache serves local and local/... instances only; a \
                     cluster's needs gRPC (--remote_cache=unix:<socket>)",
                    target.instance
                ),
            );
            return (refusal, Some(target.kind));
        }
        let head = request.method() == Method::HEAD;
        let answer = match (request.method().clone(), target.kind) {
            (Method::GET | Method::HEAD, Kind::ActionCache) => self.get_result(&target, head).await,
            (Method::GET | Method::HEAD, Kind::Cas) => self.get_blob(&target, head).await,
            (Method::PUT, Kind::ActionCache) => self.put_result(&target, request).await,
            (Method::PUT, Kind::Cas) => self.put_blob(&target, request).await,
            (method, _) => Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served; GET, HEAD and PUT are"),
            )),
        };
        let response = answer.unwrap_or_else(|Refusal(status, message)| text(status, message));
        (response, Some(target.kind))
    }

    async fn get_result(&self, target: &Target, head: bool) -> Answer {
        let found = self.results.get(&target.instance, &target.name).await?;
        let Some(result) = found else {
            Stats::add(&self.stats.action_cache_misses, 1);
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("no action result for {}", target.name.hash_hex()),
            ));
        };
        Stats::add(&self.stats.action_cache_hits, 1);
        self.sizes.learn_result(&result);
        Ok(whole(result.encode_to_vec().into(), head))
    }

    async fn put_result<B>(&self, target: &Target, request: Request<B>) -> Answer
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError>,
    {
        let too_large = || {
            Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an action result is at most {MAX_ACTION_RESULT} bytes"),
            )
        };
        // A declared length over the limit is refused before its body is read; a body without
        // one is cut off at the limit.
        if content_length(&request).is_ok_and(|len| len > MAX_ACTION_RESULT as u64) {
            return Err(too_large());
        }
        let data = Limited::new(request.into_body(), MAX_ACTION_RESULT)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                Some(_) => too_large(),
                None => Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("reading the action result: {e}"),
                ),
            })?
            .to_bytes();
        let result = ActionResult::decode(data).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("the body is not an ActionResult message: {e}"),
            )
        })?;
        self.results
            .put(&target.instance, &target.name, &result)
            .await?;
        self.sizes.learn_result(&result);
        Ok(whole(Bytes::new(), false))
    }

    async fn get_blob(&self, target: &Target, head: bool) -> Answer {
        let known = match self.sizes.get(&target.name) {
            Some(known) => known,
            None => {
                // Not handed out or taken in lately: the store looks the hash up.
                let found = self
                    .blobs
                    .digest_by_hash(&target.instance, &target.name)
                    .await?;
                let digest = found.ok_or_else(|| {
                    Refusal(
                        StatusCode::NOT_FOUND,
                        format!("no blob with hash {}", target.name.hash_hex()),
                    )
                })?;
                self.sizes.learn(digest, false);
                sizes::Known {
                    digest,
                    tree: false,
                }
            }
        };
        let digest = known.digest;
        if head {
            return match self.blobs.contains(&target.instance, &digest).await? {
                true => Ok(sized(digest.size(), empty())),
                false => Err(StoreError::blob_not_found(&digest).into()),
            };
        }
        Stats::add(&self.stats.blobs_served, 1);
        if known.tree {
            // Bazel fetches the files of an output directory next, by hash.
            let data = self.blobs.read_bytes(&target.instance, &digest).await?;
            match Tree::decode(data.clone()) {
                Ok(tree) => self.sizes.learn_tree(&tree),
                Err(e) => {
                    tracing::warn!(%digest, "an output directory's Tree does not decode: {e}")
                }
            }
            Stats::add(&self.stats.bytes_served, data.len() as u64);
            return Ok(whole(data, false));
        }
        let stream = self.blobs.read(&target.instance, &digest, 0, None).await?;
        let stats = self.stats.clone();
        let frames = stream.map(move |chunk| {
            let chunk = chunk?;
            Stats::add(&stats.bytes_served, chunk.len() as u64);
            Ok(Frame::data(chunk))
        });
        Ok(sized(digest.size(), StreamBody::new(frames).boxed_unsync()))
    }

    async fn put_blob<B>(&self, target: &Target, request: Request<B>) -> Answer
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError>,
    {
        let size = content_length(&request)?;
        let digest = Digest::from_raw(target.name.function(), target.name.hash(), size)
            .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, format!("size {size} too large")))?;
        let mut body = request.into_body();
        let mut sink = match self.blobs.contains(&target.instance, &digest).await? {
            true => None,
            false => Some(self.blobs.begin_write(&target.instance, &digest).await?),
        };
        // Read to the end either way, so the connection can carry the next request.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let e: BoxError = e.into();
                Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("reading blob {digest}: {e}"),
                )
            })?;
            if let (Some(sink), Ok(data)) = (sink.as_mut(), frame.into_data()) {
                sink.write(data).await?;
            }
        }
        if let Some(sink) = sink {
            sink.commit().await?;
            Stats::add(&self.stats.blobs_stored, 1);
            Stats::add(&self.stats.bytes_stored, digest.size());
        }
        self.sizes.learn(digest, false);
        Ok(whole(Bytes::new(), false))
    }
}

/// Why a request is not answered with what it asked for: a status and a message for the body.
struct Refusal(StatusCode, String);

type Answer = Result<Response<ResponseBody>, Refusal>;

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidArgument(_) | StoreError::OutOfRange(_) => StatusCode::BAD_REQUEST,
            StoreError::ResourceExhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::FailedPrecondition(_) => StatusCode::PRECONDITION_FAILED,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            StoreError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            StoreError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            StoreError::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
            StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, e.message().to_string())
    }
}

/// A PUT's declared length: what the blob's size must be.
fn content_length<B>(request: &Request<B>) -> Result<u64, Refusal> {
    let value = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .ok_or_else(|| {
            Refusal(
                StatusCode::LENGTH_REQUIRED,
                "a blob's PUT needs a Content-Length (its size)".into(),
            )
        })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, format!("Content-Length {value:?}")))
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn sized(len: u64, body: ResponseBody) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .expect("a valid response")
}

/// 200 with `data` (only its length, for HEAD).
fn whole(data: Bytes, head: bool) -> Response<ResponseBody> {
    let len = data.len() as u64;
    match head {
        true => sized(len, empty()),
        false => sized(
            len,
            Full::new(data)
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
    }
}

fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut body = BytesMut::from(message.as_bytes());
    body.extend_from_slice(b"\n");
    let mut response = whole(body.freeze(), false);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
