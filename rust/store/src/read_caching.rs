//! Local first, fill on miss: a fast local CAS in front of a slow cluster.
//!
//! Reads are served from the fast store when it has the blob. Otherwise the blob is fetched from
//! the slow store once, however many readers want it at the same time, written into the fast store
//! (which verifies hash and size, so a corrupt blob from the cluster is refused and not kept), and
//! then served from there. The fetch runs in its own task: a reader that gives up does not cancel
//! it for the others. A batch read fetches what the fast store lacks in one batch read of the slow
//! store (a cluster answers it in a few BatchReadBlobs calls, not a round trip per blob) and
//! stores it in one batch write. Writes go to both stores; existence questions go to the slow
//! store, which is the one remote execution reads from.

use crate::context;
use crate::error::{StoreError, StoreResult};
use crate::stats::Stats;
use crate::traits::{BlobSink, BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, InstanceName};
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
    fetches: Arc<Mutex<HashMap<(InstanceName, Digest), Fetch>>>,
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
    async fn fill(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        let key = (instance_name.clone(), *digest);
        let fetch = {
            let mut fetches = self.fetches.lock().unwrap();
            if let Some(fetch) = fetches.get(&key) {
                Stats::add(&self.stats.shared_fetches, 1);
                fetch.clone()
            } else {
                let (fast, slow, stats) =
                    (self.fast.clone(), self.slow.clone(), self.stats.clone());
                let (instance_name, digest) = key.clone();
                let (fetches_ref, done_key) = (self.fetches.clone(), key.clone());
                // The fetch forgets itself when it ends, whether or not anyone still waits for
                // it (readers that give up drop their futures). It cannot end before it is
                // inserted below: its removal waits for this lock.
                let task = context::spawn(async move {
                    let result = copy(&*slow, &*fast, &instance_name, &digest, &stats).await;
                    fetches_ref.lock().unwrap().remove(&done_key);
                    result
                });
                let fetch = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(StoreError::Internal(format!("fetch task failed: {e}")))
                    })
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
    instance_name: &InstanceName,
    digest: &Digest,
    stats: &Stats,
) -> StoreResult<()> {
    let mut stream = from.read(instance_name, digest, 0, None).await?;
    let mut sink = to.begin_write(instance_name, digest).await?;
    while let Some(chunk) = stream.next().await {
        sink.write(chunk?).await?;
    }
    sink.commit().await.map_err(refused_locally)?;
    count_fetch(stats, digest);
    Ok(())
}

/// The fast store's refusal of a fetched blob: a blob whose bytes do not match its digest is the
/// cluster's fault, and is not kept.
fn refused_locally(e: StoreError) -> StoreError {
    match e {
        StoreError::InvalidArgument(m) => {
            StoreError::Internal(format!("the cluster sent a corrupt blob, not stored: {m}"))
        }
        e => e,
    }
}

fn count_fetch(stats: &Stats, digest: &Digest) {
    Stats::add(&stats.upstream_fetches, 1);
    Stats::add(&stats.upstream_fetch_bytes, digest.size());
    context::count_fetched(digest.size());
}

#[async_trait]
impl BlobStore for ReadCaching {
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        self.slow.find_missing(instance_name, digests).await
    }

    async fn read(
        &self,
        instance_name: &InstanceName,
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

    /// What the fast store has, and the rest fetched from the slow store in one batch read and
    /// stored in the fast store in one batch write (which verifies each blob). Concurrent batches
    /// missing the same blob may each fetch it; reads of one blob share a fetch.
    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        let mut results = self.fast.batch_read(instance_name, digests.clone()).await;
        // Each blob the fast store lacks, once, and where it goes in the results.
        let mut wanted: Vec<Digest> = Vec::new();
        let mut slots: HashMap<Digest, Vec<usize>> = HashMap::new();
        for (i, result) in results.iter().enumerate() {
            if matches!(result, Err(StoreError::NotFound(_))) {
                let places = slots.entry(digests[i]).or_default();
                if places.is_empty() {
                    wanted.push(digests[i]);
                }
                places.push(i);
            }
        }
        let hits = digests.len() - slots.values().map(Vec::len).sum::<usize>();
        Stats::add(&self.stats.local_hits, hits as u64);
        if wanted.is_empty() {
            return results;
        }
        let mut fetched: Vec<(Digest, Bytes)> = Vec::with_capacity(wanted.len());
        for (digest, read) in wanted
            .iter()
            .zip(self.slow.batch_read(instance_name, wanted.clone()).await)
        {
            match read {
                Ok(data) => fetched.push((*digest, data)),
                Err(e) => slots[digest]
                    .iter()
                    .for_each(|&i| results[i] = Err(e.clone())),
            }
        }
        let stored = self.fast.batch_write(instance_name, fetched.clone()).await;
        for ((digest, data), stored) in fetched.into_iter().zip(stored) {
            let result = stored.map(|()| data).map_err(refused_locally);
            if result.is_ok() {
                count_fetch(&self.stats, &digest);
            }
            slots[&digest]
                .iter()
                .for_each(|&i| results[i] = result.clone());
        }
        results
    }

    /// The local copy if there is one; otherwise fetched from the slow store into it, as a read
    /// would be (one fetch for concurrent callers).
    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        match self.fast.make_local(instance_name, digest).await {
            Err(StoreError::NotFound(_)) => self.fill(instance_name, digest).await,
            local => local,
        }
    }

    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        self.slow.known_present(instance_name, digest).await
    }

    async fn begin_write(
        &self,
        instance_name: &InstanceName,
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
        instance_name: &InstanceName,
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
    use crate::local_cas::LocalCas;
    use crate::test_store::name;
    use crate::test_store::{local_cas, Counting};
    use clientd_digest::DigestFunction;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A local CAS in `dir`: the fast store, or (a stand-in for a cluster) the slow one.
    fn store(dir: &std::path::Path) -> Arc<LocalCas> {
        Arc::new(local_cas(dir, Arc::new(SystemClock)))
    }

    /// A cluster that sends the wrong bytes for every blob of a batch.
    struct Corrupting;

    #[async_trait]
    impl BlobStore for Corrupting {
        async fn find_missing(
            &self,
            _: &InstanceName,
            digests: &[Digest],
        ) -> StoreResult<Vec<Digest>> {
            Ok(digests.to_vec())
        }
        async fn read(
            &self,
            _: &InstanceName,
            d: &Digest,
            _: u64,
            _: Option<u64>,
        ) -> StoreResult<ByteStream> {
            Err(StoreError::blob_not_found(d))
        }
        async fn batch_read(
            &self,
            _: &InstanceName,
            digests: Vec<Digest>,
        ) -> Vec<StoreResult<Bytes>> {
            digests
                .iter()
                .map(|_| Ok(Bytes::from_static(b"wrong")))
                .collect()
        }
        async fn make_local(&self, _: &InstanceName, d: &Digest) -> StoreResult<()> {
            Err(StoreError::blob_not_found(d))
        }
        async fn begin_write(
            &self,
            _: &InstanceName,
            d: &Digest,
        ) -> StoreResult<Box<dyn BlobSink>> {
            Err(StoreError::Unimplemented(format!("no writes of {d} here")))
        }
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
        slow.write_bytes(&name("c"), &digest, data.clone())
            .await
            .unwrap();

        let fetched = || {
            stats
                .upstream_fetches
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let instance = name("c");
        let (a, b) = futures::join!(
            caching.make_local(&instance, &digest),
            caching.make_local(&instance, &digest)
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(
            fast.read_bytes(&InstanceName::default(), &digest)
                .await
                .unwrap(),
            data
        );
        assert_eq!(fetched(), 1, "one fetch for both callers");
        // Local now: nothing more is fetched.
        caching.make_local(&name("c"), &digest).await.unwrap();
        assert_eq!(fetched(), 1);

        let nowhere = DigestFunction::Sha256.digest_of(b"nowhere");
        assert!(matches!(
            caching.make_local(&name("c"), &nowhere).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!fast
            .contains(&InstanceName::default(), &nowhere)
            .await
            .unwrap());
    }

    /// A fetch goes on when every reader gives up (it was already under way, and the blob will
    /// be wanted again), and is forgotten when it ends: it used to stay in the map of fetches
    /// in progress, once per blob whose readers all gave up.
    #[tokio::test]
    async fn a_fetch_whose_readers_gave_up_completes_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, slow) = (
            store(&dir.path().join("fast")),
            store(&dir.path().join("slow")),
        );
        let caching = ReadCaching::new(fast.clone(), slow.clone(), Arc::new(Stats::default()));
        let data = Bytes::from_static(b"only in the cluster");
        let digest = DigestFunction::Sha256.digest_of(&data);
        slow.write_bytes(&name("c"), &digest, data).await.unwrap();
        let instance = name("c");
        // Polled until its fetch is under way (the local CAS is asked first, on a blocking
        // thread), then given up on.
        let mut reading = Box::pin(caching.make_local(&instance, &digest));
        loop {
            assert!(futures::poll!(&mut reading).is_pending());
            if !caching.fetches.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(reading);
        let start = std::time::Instant::now();
        while !fast.contains(&instance, &digest).await.unwrap()
            || !caching.fetches.lock().unwrap().is_empty()
        {
            let in_progress = caching.fetches.lock().unwrap().len();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{in_progress} fetches in progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_batch_read_fetches_what_is_not_local_in_one_batch_read_of_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let fast = store(&dir.path().join("fast"));
        let slow = Counting::open(&dir.path().join("slow"), Arc::new(SystemClock));
        let stats = Arc::new(Stats::default());
        let caching = ReadCaching::new(fast.clone(), slow.clone(), stats.clone());
        let blob = |text: &'static str| {
            let data = Bytes::from_static(text.as_bytes());
            (DigestFunction::Sha256.digest_of(&data), data)
        };
        let (local, local_data) = blob("local");
        let (b, b_data) = blob("only in the cluster: b");
        let (c, c_data) = blob("only in the cluster: c");
        let (nowhere, _) = blob("nowhere");
        fast.write_bytes(&name("c"), &local, local_data.clone())
            .await
            .unwrap();
        slow.inner
            .write_bytes(&name("c"), &b, b_data.clone())
            .await
            .unwrap();
        slow.inner
            .write_bytes(&name("c"), &c, c_data.clone())
            .await
            .unwrap();

        let read = caching
            .batch_read(&name("c"), vec![local, b, b, nowhere, c])
            .await;
        assert_eq!(read[0].as_ref().unwrap(), &local_data);
        assert_eq!(read[1].as_ref().unwrap(), &b_data);
        assert_eq!(read[2].as_ref().unwrap(), &b_data);
        assert!(
            matches!(read[3], Err(StoreError::NotFound(_))),
            "{:?}",
            read[3]
        );
        assert_eq!(read[4].as_ref().unwrap(), &c_data);
        assert_eq!(Counting::count(&slow.batch_reads), 1);
        assert_eq!(Counting::count(&slow.reads), 0, "no read per blob");
        assert_eq!(
            stats.upstream_fetches.load(Ordering::Relaxed),
            2,
            "b once, and c"
        );
        assert_eq!(stats.local_hits.load(Ordering::Relaxed), 1);
        // Local now.
        assert_eq!(
            fast.read_bytes(&InstanceName::default(), &b).await.unwrap(),
            b_data
        );
        let again = caching.batch_read(&name("c"), vec![b, c]).await;
        assert!(again.iter().all(Result::is_ok));
        assert_eq!(Counting::count(&slow.batch_reads), 1);
    }

    #[tokio::test]
    async fn a_corrupt_blob_in_a_batch_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fast = store(dir.path());
        let caching = ReadCaching::new(fast.clone(), Arc::new(Corrupting), Default::default());
        let digest = DigestFunction::Sha256.digest_of(b"right");
        let read = caching.batch_read(&name("c"), vec![digest]).await;
        match &read[0] {
            Err(StoreError::Internal(m)) => assert!(m.contains("corrupt blob, not stored"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!fast
            .contains(&InstanceName::default(), &digest)
            .await
            .unwrap());
    }
}
