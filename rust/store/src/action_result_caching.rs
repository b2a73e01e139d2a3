//! Remembers the action results a cluster returned, so that a rebuild soon after (`bazel clean`,
//! a second checkout) does not ask the cluster again for every action.
//!
//! Only hits are kept, in memory, for `ttl` (the same bet the existence cache makes about blobs:
//! what the cluster had a few minutes ago, it still has), and a remembered result is only
//! served while every blob it names is in the local CAS, so Bazel can always download its
//! outputs. A cluster's action cache stays the authority: uploads go through to it, and after
//! `ttl` the cluster is asked again.
//!
//! Offline mode: a result past its `ttl` is kept (a bound on their bytes drops the least recently
//! used), and served when the
//! cluster does not answer (UNAVAILABLE or DEADLINE_EXCEEDED: down, hung, the VPN dropped) as long
//! as its blobs are all local, so a developer keeps getting cache hits for what was built before.

use crate::clock::Clock;
use crate::completeness::referenced_digests;
use crate::error::{StoreError, StoreResult};
use crate::stats::Stats;
use crate::traits::{ActionCache, BlobStore};
use async_trait::async_trait;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use lru::LruCache;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What one remembered result is counted as, beyond its encoded size: the key, the map's entry
/// and the message's allocations, roughly.
const ENTRY_OVERHEAD: usize = 256;

/// The results remembered, least recently used dropped first once they add up to more than
/// `max_bytes`. Bounded by bytes, not by count: a result can name thousands of outputs.
struct Remembered {
    lru: LruCache<(InstanceName, Digest), (Arc<ActionResult>, SystemTime, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl Remembered {
    fn get(&mut self, key: &(InstanceName, Digest)) -> Option<(Arc<ActionResult>, SystemTime)> {
        self.lru
            .get(key)
            .map(|(result, until, _)| (result.clone(), *until))
    }

    fn put(&mut self, key: (InstanceName, Digest), result: ActionResult, until: SystemTime) {
        let cost = result.encoded_len() + ENTRY_OVERHEAD;
        if let Some((_, _, old)) = self.lru.pop(&key) {
            self.bytes -= old;
        }
        if cost > self.max_bytes {
            return;
        }
        self.lru.put(key, (Arc::new(result), until, cost));
        self.bytes += cost;
        while self.bytes > self.max_bytes {
            let Some((_, (_, _, dropped))) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= dropped;
        }
    }
}

pub struct ActionResultCaching {
    inner: Arc<dyn ActionCache>,
    local_cas: Arc<dyn BlobStore>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    results: Mutex<Remembered>,
}

impl ActionResultCaching {
    pub fn new(
        inner: Arc<dyn ActionCache>,
        local_cas: Arc<dyn BlobStore>,
        max_bytes: usize,
        ttl: Duration,
        clock: Arc<dyn Clock>,
        stats: Arc<Stats>,
    ) -> Self {
        ActionResultCaching {
            inner,
            local_cas,
            ttl,
            clock,
            stats,
            results: Mutex::new(Remembered {
                lru: LruCache::unbounded(),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    /// Whether every blob `result` names is in the local CAS (Bazel can download its outputs).
    async fn complete(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<bool> {
        let outputs = referenced_digests(action, result)?;
        Ok(self
            .local_cas
            .find_missing(instance_name, &outputs)
            .await?
            .is_empty())
    }

    fn remember(&self, instance_name: &InstanceName, action: &Digest, result: ActionResult) {
        let until = self.clock.now() + self.ttl;
        self.results
            .lock()
            .unwrap()
            .put((instance_name.clone(), *action), result, until);
    }
}

#[async_trait]
impl ActionCache for ActionResultCaching {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>> {
        let key = (instance_name.clone(), *action);
        let remembered = self.results.lock().unwrap().get(&key);
        let fresh = remembered
            .as_ref()
            .is_some_and(|(_, until)| *until > self.clock.now());
        if fresh {
            let (result, _) = remembered.as_ref().expect("fresh");
            if self.complete(instance_name, action, result).await? {
                Stats::add(&self.stats.action_results_local, 1);
                return Ok(Some(ActionResult::clone(result)));
            }
        }
        match self.inner.get(instance_name, action).await {
            Ok(result) => {
                if let Some(result) = &result {
                    self.remember(instance_name, action, result.clone());
                }
                Ok(result)
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::DeadlineExceeded(_))) => {
                match remembered {
                    Some((result, _)) if self.complete(instance_name, action, &result).await? => {
                        Stats::add(&self.stats.action_results_offline, 1);
                        Ok(Some(ActionResult::clone(&result)))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        self.inner.put(instance_name, action, result).await?;
        self.remember(instance_name, action, result.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::local_ac::LocalActionCache;
    use crate::local_cas::LocalCas;
    use crate::test_store::name;
    use crate::test_store::small_options;
    use clientd_digest::DigestFunction;
    use clientd_proto::build::bazel::remote::execution::v2::OutputFile;

    /// An action cache whose cluster can be switched off.
    struct Switchable {
        inner: LocalActionCache,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl ActionCache for Switchable {
        async fn get(
            &self,
            i: &InstanceName,
            action: &Digest,
        ) -> StoreResult<Option<ActionResult>> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("cluster c: down".into()));
            }
            self.inner.get(i, action).await
        }
        async fn put(
            &self,
            i: &InstanceName,
            action: &Digest,
            result: &ActionResult,
        ) -> StoreResult<()> {
            self.inner.put(i, action, result).await
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        cluster: Arc<Switchable>,
        local: Arc<LocalCas>,
        stats: Arc<Stats>,
        caching: ActionResultCaching,
    }

    /// ActionResultCaching (TTL 300 s) over a cluster that is up, with an empty local CAS.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let options = small_options();
        let cluster = Arc::new(Switchable {
            inner: LocalActionCache::open(&dir.path().join("ac"), options, clock.clone()).unwrap(),
            down: false.into(),
        });
        let local =
            Arc::new(LocalCas::open(&dir.path().join("cas"), options, clock.clone()).unwrap());
        let stats = Arc::new(Stats::default());
        let caching = ActionResultCaching::new(
            cluster.clone(),
            local.clone(),
            1 << 20,
            Duration::from_secs(300),
            clock.clone(),
            stats.clone(),
        );
        Fixture {
            _dir: dir,
            clock,
            cluster,
            local,
            stats,
            caching,
        }
    }

    /// A result with one output file of `content`.
    fn result_with(content: &'static [u8]) -> (bytes::Bytes, Digest, ActionResult) {
        let output = bytes::Bytes::from_static(content);
        let digest = DigestFunction::Sha256.digest_of(&output);
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "o".into(),
                digest: Some(digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        (output, digest, result)
    }

    #[tokio::test]
    async fn remembered_results_expire_and_need_local_outputs() {
        let Fixture {
            clock,
            cluster: cluster_ac,
            local,
            stats,
            caching,
            _dir,
        } = fixture();
        let (output, output_digest, result) = result_with(b"output");
        let action = DigestFunction::Sha256.digest_of(b"action");
        caching.put(&name("i"), &action, &result).await.unwrap();
        let local_hits = || {
            stats
                .action_results_local
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        // Output not local: the cluster answers.
        assert_eq!(
            caching.get(&name("i"), &action).await.unwrap(),
            Some(result.clone())
        );
        assert_eq!(local_hits(), 0);
        local
            .write_bytes(&InstanceName::default(), &output_digest, output)
            .await
            .unwrap();
        assert_eq!(
            caching.get(&name("i"), &action).await.unwrap(),
            Some(result.clone())
        );
        assert_eq!(local_hits(), 1);
        // Another instance name, or after the TTL: the cluster again (here: a miss).
        assert_eq!(caching.get(&name("j"), &action).await.unwrap(), None);
        cluster_ac
            .put(&name("i"), &action, &ActionResult::default())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(301));
        assert_eq!(
            caching.get(&name("i"), &action).await.unwrap(),
            Some(ActionResult::default())
        );
        assert_eq!(local_hits(), 1);
    }

    /// Offline mode: past its TTL a remembered result is served while the cluster does not
    /// answer, if its outputs are local; otherwise the cluster's error goes through.
    #[tokio::test]
    async fn remembered_results_are_served_while_the_cluster_is_down() {
        let Fixture {
            clock,
            cluster,
            local,
            stats,
            caching,
            _dir,
        } = fixture();
        let (output, output_digest, result) = result_with(b"output");
        let (built, elsewhere) = (
            DigestFunction::Sha256.digest_of(b"built here"),
            DigestFunction::Sha256.digest_of(b"outputs not local"),
        );
        caching.put(&name("i"), &built, &result).await.unwrap();
        let (_, _, not_local) = result_with(b"never local");
        caching
            .put(&name("i"), &elsewhere, &not_local)
            .await
            .unwrap();
        local
            .write_bytes(&InstanceName::default(), &output_digest, output)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(3600));
        cluster
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(caching.get(&name("i"), &built).await.unwrap(), Some(result));
        assert_eq!(
            stats
                .action_results_offline
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        let err = caching.get(&name("i"), &elsewhere).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let never = DigestFunction::Sha256.digest_of(b"never built");
        assert!(caching.get(&name("i"), &never).await.is_err());
    }

    #[test]
    fn remembered_results_are_bounded_by_their_bytes() {
        let result = |i: usize, outputs: usize| ActionResult {
            output_files: (0..outputs)
                .map(|j| OutputFile {
                    path: format!("out{i}-{j}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let cost = result(0, 1).encoded_len() + ENTRY_OVERHEAD;
        let mut remembered = Remembered {
            lru: LruCache::unbounded(),
            bytes: 0,
            max_bytes: 3 * cost,
        };
        let key = |i: usize| (name("i"), DigestFunction::Sha256.digest_of(&[i as u8]));
        let until = SystemTime::UNIX_EPOCH;
        for i in 0..10 {
            remembered.put(key(i), result(i, 1), until);
            assert!(remembered.bytes <= 3 * cost);
        }
        let kept = |r: &mut Remembered, i| r.get(&key(i)).is_some();
        assert!((7..10).all(|i| kept(&mut remembered, i)));
        assert!(!kept(&mut remembered, 6), "the least recently used went");
        // A result larger than the whole bound is not kept; it displaces only its own key.
        remembered.put(key(9), result(9, 1000), until);
        assert!(!kept(&mut remembered, 9));
        assert!(kept(&mut remembered, 8) && kept(&mut remembered, 7));
        assert_eq!(remembered.bytes, 2 * cost);
    }
}
