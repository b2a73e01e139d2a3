//! Bounded retries with exponential backoff, for calls a cluster refused as UNAVAILABLE.
//!
//! A cluster that is down must produce a clear error soon, not a hang: the number of attempts is
//! bounded and the whole schedule is short by default (0.1 + 0.2 + 0.4 s).

use std::future::Future;
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; at least 1.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (`attempt` counts from 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `call` until it succeeds, fails with a code other than UNAVAILABLE, or has used
    /// every attempt. The last error says how many attempts were made.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(status) if status.code() == Code::Unavailable => {
                    if attempt >= self.max_attempts.max(1) {
                        return Err(Status::unavailable(format!(
                            "{} (after {attempt} attempts)",
                            status.message()
                        )));
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_with_backoff_then_gives_up() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), Status> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Status::unavailable("connection refused"))
            })
            .await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "connection refused (after 4 attempts)");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_and_success_return_at_once() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let result: Result<u32, Status> = policy
            .run(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Status::unavailable("blip")),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(result.unwrap(), 1);
        let result: Result<(), Status> = policy
            .run(|| async { Err(Status::not_found("gone")) })
            .await;
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
        assert_eq!(policy.backoff(10), Duration::from_secs(2));
    }
}
