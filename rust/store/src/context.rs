//! The request headers that travel from Bazel to a cluster with each call.
//!
//! Store traits carry instance names, not gRPC metadata, so the headers a cluster needs
//! (`authorization`, `requestmetadata-bin`) ride along in a task-local set by the gRPC front for
//! the duration of each call. A decorator that hands work to another task (a shared fetch) must
//! spawn it with [`spawn`] so the headers go along.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The binary header carrying REAPI's RequestMetadata (invocation, target, mnemonic).
pub const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// Headers forwarded to clusters, exactly as the client sent them.
pub const FORWARDED_HEADERS: [&str; 2] = ["authorization", REQUEST_METADATA];

/// The forwarded headers of one client call, and its deadline.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The [`FORWARDED_HEADERS`] the client sent (gRPC metadata is HTTP/2 headers).
    pub headers: http::HeaderMap,
    /// When the client stops waiting (its `grpc-timeout`): calls made for it need not last longer.
    pub deadline: Option<Instant>,
    /// Bytes fetched from clusters on this call's behalf (counted by the read cache, also in the
    /// fetch tasks it spawns), so the front can tell the activity record what a read cost.
    pub fetched: Arc<AtomicU64>,
}

impl RequestContext {
    /// Keeps only the [`FORWARDED_HEADERS`] of `headers`, and the deadline `grpc-timeout` sets.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut kept = http::HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = headers.get(name) {
                kept.insert(name, value.clone());
            }
        }
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.to_str().ok()?))
            .and_then(|timeout| Instant::now().checked_add(timeout));
        RequestContext {
            headers: kept,
            deadline,
            fetched: Default::default(),
        }
    }
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (Hours, Minutes, Seconds, milliseconds,
/// microseconds, nanoseconds), as the gRPC HTTP/2 protocol spells it.
fn grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

/// Counts `bytes` fetched from a cluster for the current call (nothing outside a call).
pub fn count_fetched(bytes: u64) {
    let _ = CONTEXT.try_with(|context| context.fetched.fetch_add(bytes, Ordering::Relaxed));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_in_every_unit() {
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("60S"), Some(Duration::from_secs(60)));
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn fetched_bytes_count_for_the_call_also_in_spawned_tasks() {
        count_fetched(5); // outside a call: nothing to count into
        let context = RequestContext::default();
        let fetched = context.fetched.clone();
        scope(context, async {
            count_fetched(3);
            spawn(async { count_fetched(4) }).await.unwrap();
        })
        .await;
        assert_eq!(fetched.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn the_context_keeps_forwarded_headers_and_the_deadline() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer x".parse().unwrap());
        headers.insert("grpc-timeout", "10S".parse().unwrap());
        headers.insert("x-other", "y".parse().unwrap());
        let before = Instant::now();
        let context = RequestContext::from_headers(&headers);
        let after = Instant::now();
        assert_eq!(context.headers.len(), 1);
        let deadline = context.deadline.unwrap();
        let ten = Duration::from_secs(10);
        assert!(before + ten <= deadline && deadline <= after + ten);
    }
}
