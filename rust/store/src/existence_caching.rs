//! Remembers which blobs a cluster has, so repeated FindMissingBlobs do not cross the network.
//!
//! Bazel asks FindMissingBlobs for every input of every action it executes remotely, mostly for
//! the same blobs again and again. A digest the cluster reported present (or accepted in an
//! upload) is answered locally for `ttl`; after that the cluster is asked again, since it may have
//! evicted the blob. Entries are per instance name, bounded, least recently used first out.

use crate::clock::Clock;
use crate::error::StoreResult;
use crate::stats::Stats;
use crate::traits::{BlobSink, BlobStore, ByteStream, WrappedSink};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, InstanceName};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

type Key = (InstanceName, Digest);

pub struct ExistenceCaching {
    inner: Arc<dyn BlobStore>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    /// When each known-present blob stops being trusted.
    present: Arc<Mutex<LruCache<Key, SystemTime>>>,
}

impl ExistenceCaching {
    pub fn new(
        inner: Arc<dyn BlobStore>,
        max_entries: NonZeroUsize,
        ttl: Duration,
        clock: Arc<dyn Clock>,
        stats: Arc<Stats>,
    ) -> Self {
        ExistenceCaching {
            inner,
            ttl,
            clock,
            stats,
            present: Arc::new(Mutex::new(LruCache::new(max_entries))),
        }
    }

    fn remember(&self, instance_name: &InstanceName, digests: impl IntoIterator<Item = Digest>) {
        remember(
            &self.present,
            instance_name,
            digests,
            self.clock.now() + self.ttl,
        );
    }
}

fn remember(
    present: &Mutex<LruCache<Key, SystemTime>>,
    instance_name: &InstanceName,
    digests: impl IntoIterator<Item = Digest>,
    until: SystemTime,
) {
    let mut present = present.lock().unwrap();
    for digest in digests {
        present.put((instance_name.clone(), digest), until);
    }
}

#[async_trait]
impl BlobStore for ExistenceCaching {
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        let now = self.clock.now();
        let unknown: Vec<Digest> = {
            let instance = instance_name.clone();
            let mut present = self.present.lock().unwrap();
            digests
                .iter()
                .filter(|d| !d.is_empty_blob())
                .filter(|d| {
                    let key = (instance.clone(), **d);
                    match present.get(&key) {
                        Some(until) if *until > now => false,
                        Some(_) => {
                            present.pop(&key);
                            true
                        }
                        None => true,
                    }
                })
                .copied()
                .collect()
        };
        let known = digests.len() - unknown.len();
        Stats::add(&self.stats.find_missing_local, known as u64);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        Stats::add(&self.stats.find_missing_upstream, unknown.len() as u64);
        let missing = self.inner.find_missing(instance_name, &unknown).await?;
        let missing_set: std::collections::HashSet<&Digest> = missing.iter().collect();
        self.remember(
            instance_name,
            unknown.into_iter().filter(|d| !missing_set.contains(d)),
        );
        Ok(missing)
    }

    async fn read(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        self.inner.read(instance_name, digest, offset, limit).await
    }

    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        self.inner.make_local(instance_name, digest).await
    }

    /// The inner store's batch read (a cluster's is a few BatchReadBlobs calls); what it sends is
    /// known present from then on.
    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        let results = self.inner.batch_read(instance_name, digests.clone()).await;
        let read = digests
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d);
        self.remember(instance_name, read);
        results
    }

    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        let key = (instance_name.clone(), *digest);
        let now = self.clock.now();
        let known = self
            .present
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|until| *until > now);
        known || self.inner.known_present(instance_name, digest).await
    }

    async fn begin_write(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let inner = self.inner.begin_write(instance_name, digest).await?;
        // Present once the cluster has accepted it.
        let (present, instance, digest) = (self.present.clone(), instance_name.clone(), *digest);
        let until = self.clock.now() + self.ttl;
        Ok(Box::new(WrappedSink {
            inner,
            _keep: (),
            on_commit: Some(Box::new(move || {
                remember(&present, &instance, [digest], until)
            })),
        }))
    }

    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let results = self.inner.batch_write(instance_name, blobs).await;
        let written = digests
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d);
        self.remember(instance_name, written);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::error::StoreError;
    use crate::test_store::name;
    use crate::test_store::Counting;

    #[tokio::test]
    async fn present_blobs_are_trusted_until_the_ttl_per_instance_name() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let inner = Counting::open(dir.path(), clock.clone());
        let cache = ExistenceCaching::new(
            inner.clone(),
            NonZeroUsize::new(2).unwrap(),
            Duration::from_secs(300),
            clock.clone(),
            Arc::new(Stats::default()),
        );
        let blob = |n: u8| {
            let data = Bytes::from(vec![n; 10]);
            (
                clientd_digest::DigestFunction::Sha256.digest_of(&data),
                data,
            )
        };
        let (a, a_data) = blob(1);
        let (b, _) = blob(2);
        let asked = || Counting::count(&inner.asked);

        // Written through the cache: known present without asking.
        cache.write_bytes(&name("i"), &a, a_data).await.unwrap();
        assert_eq!(
            cache.find_missing(&name("i"), &[a, b]).await.unwrap(),
            vec![b]
        );
        assert_eq!(asked(), 1);
        assert!(cache.known_present(&name("i"), &a).await);
        // Another instance name knows nothing yet.
        assert!(cache
            .find_missing(&name("j"), &[a])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(asked(), 2);
        assert!(cache
            .find_missing(&name("j"), &[a])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(asked(), 2);
        // After the TTL the cluster is asked again.
        clock.advance(Duration::from_secs(301));
        assert!(!cache.known_present(&name("i"), &a).await);
        assert!(cache
            .find_missing(&name("i"), &[a])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(asked(), 3);
        // Bounded: a third entry evicts the least recently used ("j", a).
        let (c, c_data) = blob(3);
        cache.write_bytes(&name("i"), &c, c_data).await.unwrap();
        assert!(cache
            .find_missing(&name("j"), &[a])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(asked(), 4);
    }

    #[tokio::test]
    async fn a_batch_read_is_the_inner_stores_and_what_it_sends_is_then_known_present() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let inner = Counting::open(dir.path(), clock.clone());
        let cache = ExistenceCaching::new(
            inner.clone(),
            NonZeroUsize::new(10).unwrap(),
            Duration::from_secs(300),
            clock,
            Arc::new(Stats::default()),
        );
        let data = Bytes::from_static(b"in the cluster");
        let present = clientd_digest::DigestFunction::Sha256.digest_of(&data);
        let absent = clientd_digest::DigestFunction::Sha256.digest_of(b"absent");
        inner
            .inner
            .write_bytes(&name("i"), &present, data.clone())
            .await
            .unwrap();

        let read = cache.batch_read(&name("i"), vec![present, absent]).await;
        assert_eq!(read[0].as_ref().unwrap(), &data);
        assert!(matches!(read[1], Err(StoreError::NotFound(_))));
        assert_eq!(Counting::count(&inner.batch_reads), 1);
        assert_eq!(Counting::count(&inner.reads), 0, "not the per-blob default");
        assert!(cache.known_present(&name("i"), &present).await);
        assert!(!cache.known_present(&name("i"), &absent).await);
    }
}
