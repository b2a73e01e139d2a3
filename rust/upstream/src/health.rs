//! Whether a cluster answers. A call that finds it not answering (UNAVAILABLE after its retries,
//! no answer within the request timeout, a stream that stalls) marks it down; while it is down,
//! calls fail at once instead of each waiting out its deadline, and a background probe marks it
//! up as soon as it answers anything again.

use clientd_proto::build::bazel::remote::execution::v2 as re;
use re::capabilities_client::CapabilitiesClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How often a down cluster is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Down {
    since: Instant,
    why: String,
}

/// A cluster's state, shared by its calls and its probe.
#[derive(Debug, Clone, Default)]
pub struct Health {
    down: Arc<Mutex<Option<Down>>>,
}

/// What a probe tells about the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered (any status it sent itself counts: it is there).
    Answered,
    NoAnswer,
}

impl Health {
    /// Whether a failed call's status says the cluster is not answering, as opposed to refusing
    /// the call.
    pub fn means_down(status: &Status) -> bool {
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
    }

    /// Marks the cluster down; true if it was up (the caller then starts the probe).
    pub fn mark_down(&self, why: &str) -> bool {
        let mut down = self.down.lock().unwrap();
        if down.is_some() {
            return false;
        }
        *down = Some(Down {
            since: Instant::now(),
            why: why.to_string(),
        });
        true
    }

    pub fn mark_up(&self) {
        *self.down.lock().unwrap() = None;
    }

    /// The status a call gets at once while the cluster is down; None while it is up.
    pub fn refusal(&self) -> Option<Status> {
        let down = self.down.lock().unwrap();
        let down = down.as_ref()?;
        Some(Status::unavailable(format!(
            "the cluster is down (for {} s: {}); clientd probes it every {} s and uses it again \
             as soon as it answers",
            down.since.elapsed().as_secs(),
            down.why,
            PROBE_INTERVAL.as_secs()
        )))
    }

    /// "up", or "down for N s: why", for `clientd stats`.
    pub fn describe(&self) -> String {
        match self.down.lock().unwrap().as_ref() {
            None => "up".into(),
            Some(down) => format!(
                "down for {} s: {}",
                down.since.elapsed().as_secs(),
                down.why
            ),
        }
    }

    /// Probes every [`PROBE_INTERVAL`] until `probe` says the cluster answered, then marks it
    /// up. Runs as a background task started by the call that marked the cluster down.
    pub async fn probe_until_up<F, Fut>(self, describe: String, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Probe>,
    {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if probe().await == Probe::Answered {
                self.mark_up();
                tracing::info!("{describe} answers again");
                return;
            }
        }
    }
}

/// Marks a cluster down and brings it back: what its calls and streams share.
#[derive(Clone)]
pub struct Watch {
    pub health: Health,
    describe: String,
    channel: Channel,
    /// The static headers and clientd's RequestMetadata, which some clusters require.
    metadata: MetadataMap,
}

impl Watch {
    pub fn new(describe: String, channel: Channel, metadata: MetadataMap) -> Self {
        Watch {
            health: Health::default(),
            describe,
            channel,
            metadata,
        }
    }

    /// Notes a failed call or stream: when `status` says the cluster is not answering, marks it
    /// down and starts probing it in the background.
    pub fn failed(&self, status: &Status) {
        if !Health::means_down(status) || !self.health.mark_down(status.message()) {
            return;
        }
        tracing::warn!("{} is down: {}", self.describe, status.message());
        let (channel, metadata) = (self.channel.clone(), self.metadata.clone());
        let probe = move || {
            let mut client = CapabilitiesClient::new(channel.clone());
            let mut request = Request::new(re::GetCapabilitiesRequest::default());
            *request.metadata_mut() = metadata.clone();
            async move {
                match tokio::time::timeout(PROBE_TIMEOUT, client.get_capabilities(request)).await {
                    Ok(Ok(_)) => Probe::Answered,
                    Ok(Err(status)) if !Health::means_down(&status) => Probe::Answered,
                    _ => Probe::NoAnswer,
                }
            }
        };
        tokio::spawn(
            self.health
                .clone()
                .probe_until_up(self.describe.clone(), probe),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn only_a_cluster_that_does_not_answer_is_down() {
        assert!(Health::means_down(&Status::unavailable("refused")));
        assert!(Health::means_down(&Status::deadline_exceeded("no answer")));
        assert!(!Health::means_down(&Status::not_found("no such blob")));
        assert!(!Health::means_down(&Status::permission_denied("no")));
    }

    #[tokio::test(start_paused = true)]
    async fn down_refuses_at_once_until_a_probe_is_answered() {
        let health = Health::default();
        assert!(health.refusal().is_none());
        assert_eq!(health.describe(), "up");
        assert!(health.mark_down("no answer within 60s"));
        assert!(!health.mark_down("again"), "only the first starts a probe");
        let refusal = health.refusal().unwrap();
        assert_eq!(refusal.code(), Code::Unavailable);
        assert!(
            refusal.message().contains("the cluster is down"),
            "{refusal:?}"
        );
        assert!(health.describe().starts_with("down for 0 s: no answer"));

        let probes = Arc::new(AtomicU32::new(0));
        let counted = probes.clone();
        let start = tokio::time::Instant::now();
        health
            .clone()
            .probe_until_up("cluster c".into(), move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 | 1 => Probe::NoAnswer,
                        _ => Probe::Answered,
                    }
                }
            })
            .await;
        assert_eq!(probes.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), PROBE_INTERVAL * 3);
        assert!(health.refusal().is_none());
    }
}
