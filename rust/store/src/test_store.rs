//! What the decorators' tests share: instance names, small, unsynced disk stores, and a local CAS that counts the
//! calls it gets, so a test can tell a forwarded call from the trait's default.

use crate::disk_lru::DiskLruOptions;
use crate::error::StoreResult;
use crate::local_cas::LocalCas;
use crate::traits::{BlobSink, BlobStore, ByteStream};
use crate::Clock;
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, InstanceName};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A test's instance name.
pub(crate) fn name(name: &str) -> InstanceName {
    name.parse().unwrap()
}

/// 1 MiB, no fsync: enough for any test, and quick.
pub(crate) fn small_options() -> DiskLruOptions {
    DiskLruOptions {
        max_bytes: 1 << 20,
        sync_writes: false,
    }
}

/// A local CAS in `dir` with [`small_options`].
pub(crate) fn local_cas(dir: &Path, clock: Arc<dyn Clock>) -> LocalCas {
    LocalCas::open(dir, small_options(), clock).unwrap()
}

/// A local CAS counting the digests FindMissingBlobs is asked about, and the reads and batch
/// reads it serves.
pub(crate) struct Counting {
    pub(crate) inner: LocalCas,
    pub(crate) asked: AtomicUsize,
    pub(crate) reads: AtomicUsize,
    pub(crate) batch_reads: AtomicUsize,
}

impl Counting {
    pub(crate) fn open(dir: &Path, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Counting {
            inner: local_cas(dir, clock),
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            batch_reads: AtomicUsize::new(0),
        })
    }

    pub(crate) fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl BlobStore for Counting {
    async fn find_missing(
        &self,
        instance: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        self.asked.fetch_add(digests.len(), Ordering::SeqCst);
        self.inner.find_missing(instance, digests).await
    }

    async fn read(
        &self,
        instance: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(instance, digest, offset, limit).await
    }

    async fn batch_read(
        &self,
        instance: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        self.batch_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.batch_read(instance, digests).await
    }

    async fn make_local(&self, instance: &InstanceName, digest: &Digest) -> StoreResult<()> {
        self.inner.make_local(instance, digest).await
    }

    async fn begin_write(
        &self,
        instance: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        self.inner.begin_write(instance, digest).await
    }
}
