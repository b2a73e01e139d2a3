//! Local first, fill on miss: a fast local CAS in front of a slow cluster.
//!
//! Reads are served from the fast store when it has the blob. Otherwise the blob is fetched from
//! the slow store once, however many readers want it at the same time, written into the fast store
//! (which verifies hash and size, so a corrupt blob from the cluster is refused and not kept), and
//! then served from there. The fetch runs in its own task: a reader that gives up does not cancel
//! it for the others. Writes go to both stores; existence questions go to the slow store, which
//! is the one remote execution reads from.

use crate::context;
use crate::error::{StoreError, StoreResult};
use crate::stats::Stats;
use crate::traits::{BlobSink, BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::Digest;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Fetch = Shared<BoxFuture<'static, StoreResult<()>>>;

pub struct ReadCaching {
    fast: Arc<dyn BlobStore>,
    slow: Arc<dyn BlobStore>,
    stats: Arc<Stats>,
    /// Fetches in progress, by instance name and digest.
    fetches: Arc<Mutex<HashMap<(String, Digest), Fetch>>>,
}

impl ReadCaching {
    pub fn new(fast: Arc<dyn BlobStore>, slow: Arc<dyn BlobStore>, stats: Arc<Stats>) -> Self {
        ReadCaching {
            fast,
            slow,
            stats,
            fetches: Default::default(),
        }
    }

    /// Makes sure the fast store has `digest`, fetching it from the slow store unless another
    /// reader already is.
    async fn fill(&self, instance_name: &str, digest: &Digest) -> StoreResult<()> {
        let key = (instance_name.to_string(), *digest);
        let fetch = {
            let mut fetches = self.fetches.lock().unwrap();
            if let Some(fetch) = fetches.get(&key) {
                Stats::add(&self.stats.shared_fetches, 1);
                fetch.clone()
            } else {
                let (fast, slow, stats) =
                    (self.fast.clone(), self.slow.clone(), self.stats.clone());
                let (instance_name, digest) = key.clone();
                let task = context::spawn(async move {
                    copy(&*slow, &*fast, &instance_name, &digest, &stats).await
                });
                let fetches_ref = self.fetches.clone();
                let done_key = key.clone();
                let fetch = async move {
                    let result = task.await.unwrap_or_else(|e| {
                        Err(StoreError::Internal(format!("fetch task failed: {e}")))
                    });
                    fetches_ref.lock().unwrap().remove(&done_key);
                    result
                }
                .boxed()
                .shared();
                fetches.insert(key, fetch.clone());
                fetch
            }
        };
        fetch.await
    }
}

/// Streams one blob from `from` into `to`.
async fn copy(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    instance_name: &str,
    digest: &Digest,
    stats: &Stats,
) -> StoreResult<()> {
    let mut stream = from.read(instance_name, digest, 0, None).await?;
    let mut sink = to.begin_write(instance_name, digest).await?;
    while let Some(chunk) = stream.next().await {
        sink.write(chunk?).await?;
    }
    sink.commit().await.map_err(|e| match e {
        StoreError::InvalidArgument(m) => {
            StoreError::Internal(format!("the cluster sent a corrupt blob, not stored: {m}"))
        }
        e => e,
    })?;
    Stats::add(&stats.upstream_fetches, 1);
    Stats::add(&stats.upstream_fetch_bytes, digest.size());
    context::count_fetched(digest.size());
    Ok(())
}

#[async_trait]
impl BlobStore for ReadCaching {
    async fn find_missing(
        &self,
        instance_name: &str,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        self.slow.find_missing(instance_name, digests).await
    }

    async fn read(
        &self,
        instance_name: &str,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        match self.fast.read(instance_name, digest, offset, limit).await {
            Err(StoreError::NotFound(_)) => {}
            Ok(stream) => {
                Stats::add(&self.stats.local_hits, 1);
                return Ok(stream);
            }
            Err(e) => return Err(e),
        }
        self.fill(instance_name, digest).await?;
        self.fast.read(instance_name, digest, offset, limit).await
    }

    /// The local copy if there is one; otherwise fetched from the slow store into it, as a read
    /// would be (one fetch for concurrent callers).
    async fn make_local(&self, instance_name: &str, digest: &Digest) -> StoreResult<()> {
        match self.fast.make_local(instance_name, digest).await {
            Err(StoreError::NotFound(_)) => self.fill(instance_name, digest).await,
            local => local,
        }
    }

    async fn known_present(&self, instance_name: &str, digest: &Digest) -> bool {
        self.slow.known_present(instance_name, digest).await
    }

    async fn begin_write(
        &self,
        instance_name: &str,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let (fast, slow) = futures::try_join!(
            self.fast.begin_write(instance_name, digest),
            self.slow.begin_write(instance_name, digest)
        )?;
        Ok(Box::new(TeeSink {
            fast,
            slow,
            digest: *digest,
            stats: self.stats.clone(),
        }))
    }

    async fn batch_write(
        &self,
        instance_name: &str,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        let (fast, slow) = futures::join!(
            self.fast.batch_write(instance_name, blobs.clone()),
            self.slow.batch_write(instance_name, blobs.clone())
        );
        blobs
            .iter()
            .zip(fast.into_iter().zip(slow))
            .map(|((digest, _), (fast, slow))| {
                let result = combine(digest, fast, slow);
                if result.is_ok() {
                    count_upload(&self.stats, digest);
                }
                result
            })
            .collect()
    }
}

/// The outcome of a write to both stores: the cluster's, unless the local store found that the
/// bytes do not match the digest (then the cluster must not keep them either, and will have said
/// so too). A local failure such as a full disk only costs the local copy.
fn combine(digest: &Digest, fast: StoreResult<()>, slow: StoreResult<()>) -> StoreResult<()> {
    match fast {
        Err(e @ StoreError::InvalidArgument(_)) => Err(e),
        Err(e) => {
            tracing::warn!(%digest, "blob sent to the cluster but not kept locally: {e}");
            slow
        }
        Ok(()) => slow,
    }
}

fn count_upload(stats: &Stats, digest: &Digest) {
    Stats::add(&stats.upstream_writes, 1);
    Stats::add(&stats.upstream_write_bytes, digest.size());
}

/// A write to the local store and the cluster at once.
struct TeeSink {
    fast: Box<dyn BlobSink>,
    slow: Box<dyn BlobSink>,
    digest: Digest,
    stats: Arc<Stats>,
}

#[async_trait]
impl BlobSink for TeeSink {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        let (fast, slow) = futures::join!(self.fast.write(data.clone()), self.slow.write(data));
        // A local failure must not fail the upload; a mismatch is caught again at commit.
        if let Err(e) = fast {
            if !matches!(e, StoreError::ResourceExhausted(_)) {
                return Err(e);
            }
        }
        slow
    }

    fn committed(&self) -> u64 {
        self.slow.committed()
    }

    /// Verifies locally first, so that a blob whose bytes do not match is never committed upstream.
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let TeeSink {
            fast,
            slow,
            digest,
            stats,
        } = *self;
        let fast = fast.commit().await;
        if let Err(e @ StoreError::InvalidArgument(_)) = fast {
            return Err(e);
        }
        combine(&digest, fast, slow.commit().await)?;
        count_upload(&stats, &digest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::disk_lru::DiskLruOptions;
    use crate::local_cas::LocalCas;
    use clientd_digest::DigestFunction;

    /// A local CAS in `dir`: the fast store, or (a stand-in for a cluster) the slow one.
    fn store(dir: &std::path::Path) -> Arc<LocalCas> {
        let options = DiskLruOptions {
            max_bytes: 1 << 20,
            sync_writes: false,
        };
        Arc::new(LocalCas::open(dir, options, Arc::new(SystemClock)).unwrap())
    }

    #[tokio::test]
    async fn make_local_fetches_from_the_slow_store_once_for_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, slow) = (
            store(&dir.path().join("fast")),
            store(&dir.path().join("slow")),
        );
        let stats = Arc::new(Stats::default());
        let caching = ReadCaching::new(fast.clone(), slow.clone(), stats.clone());
        let data = Bytes::from_static(b"only in the cluster");
        let digest = DigestFunction::Sha256.digest_of(&data);
        slow.write_bytes("c", &digest, data.clone()).await.unwrap();

        let fetched = || {
            stats
                .upstream_fetches
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let (a, b) = futures::join!(
            caching.make_local("c", &digest),
            caching.make_local("c", &digest)
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(fast.read_bytes("", &digest).await.unwrap(), data);
        assert_eq!(fetched(), 1, "one fetch for both callers");
        // Local now: nothing more is fetched.
        caching.make_local("c", &digest).await.unwrap();
        assert_eq!(fetched(), 1);

        let nowhere = DigestFunction::Sha256.digest_of(b"nowhere");
        assert!(matches!(
            caching.make_local("c", &nowhere).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!fast.contains("", &nowhere).await.unwrap());
    }
}
