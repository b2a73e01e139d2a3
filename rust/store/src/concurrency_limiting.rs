//! Caps the calls in flight to a cluster.
//!
//! A build can ask for thousands of blobs at once; a cluster (and the network in between) does
//! better with a bounded number of concurrent calls than with a burst. A permit is held for the
//! whole call: until a read's stream ends, until a write commits or is dropped.

use crate::error::{StoreError, StoreResult};
use crate::traits::{ActionCache, BlobSink, BlobStore, ByteStream, WrappedSink};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `inner` (a [`BlobStore`] or an [`ActionCache`]) behind a semaphore that may be shared with
/// other stores of the same cluster.
pub struct ConcurrencyLimiting<S: ?Sized> {
    inner: Arc<S>,
    permits: Arc<Semaphore>,
}

impl<S: ?Sized> ConcurrencyLimiting<S> {
    pub fn new(inner: Arc<S>, permits: Arc<Semaphore>) -> Self {
        ConcurrencyLimiting { inner, permits }
    }

    async fn permit(&self) -> StoreResult<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the daemon is shutting down".into()))
    }
}

#[async_trait]
impl BlobStore for ConcurrencyLimiting<dyn BlobStore> {
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        let _permit = self.permit().await?;
        self.inner.find_missing(instance_name, digests).await
    }

    async fn read(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        let permit = self.permit().await?;
        let stream = self
            .inner
            .read(instance_name, digest, offset, limit)
            .await?;
        // The permit goes with the stream and is released when the reader drops it.
        Ok(stream
            .map(move |chunk| {
                let _held = &permit;
                chunk
            })
            .boxed())
    }

    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        self.inner.known_present(instance_name, digest).await
    }

    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        let _permit = self.permit().await?;
        self.inner.make_local(instance_name, digest).await
    }

    async fn begin_write(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let permit = self.permit().await?;
        let inner = self.inner.begin_write(instance_name, digest).await?;
        Ok(Box::new(WrappedSink {
            inner,
            _keep: permit,
            on_commit: None,
        }))
    }

    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        match self.permit().await {
            Ok(_permit) => self.inner.batch_write(instance_name, blobs).await,
            Err(e) => vec![Err(e); blobs.len()],
        }
    }

    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        match self.permit().await {
            Ok(_permit) => self.inner.batch_read(instance_name, digests).await,
            Err(e) => vec![Err(e); digests.len()],
        }
    }
}

#[async_trait]
impl ActionCache for ConcurrencyLimiting<dyn ActionCache> {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>> {
        let _permit = self.permit().await?;
        self.inner.get(instance_name, action).await
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        let _permit = self.permit().await?;
        self.inner.put(instance_name, action, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::test_store::name;
    use crate::test_store::{local_cas, Counting};
    use clientd_digest::DigestFunction;
    use std::time::Duration;

    #[tokio::test]
    async fn make_local_forwards_and_waits_for_a_permit() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(local_cas(dir.path(), Arc::new(SystemClock)));
        let limited = ConcurrencyLimiting::<dyn BlobStore>::new(inner, Arc::new(Semaphore::new(1)));
        let data = Bytes::from_static(b"here");
        let digest = DigestFunction::Sha256.digest_of(&data);
        limited
            .write_bytes(&name("i"), &digest, data)
            .await
            .unwrap();
        limited.make_local(&name("i"), &digest).await.unwrap();
        let absent = DigestFunction::Sha256.digest_of(b"absent");
        assert!(matches!(
            limited.make_local(&name("i"), &absent).await,
            Err(StoreError::NotFound(_))
        ));
        // A read in progress holds the only permit until its stream is dropped.
        let stream = limited.read(&name("i"), &digest, 0, None).await.unwrap();
        let instance = name("i");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            limited.make_local(&instance, &digest),
        );
        assert!(waiting.await.is_err(), "make_local ran without a permit");
        drop(stream);
        limited.make_local(&name("i"), &digest).await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_read_is_forwarded_as_one_and_waits_for_a_permit() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Counting::open(dir.path(), Arc::new(SystemClock));
        let limited =
            ConcurrencyLimiting::<dyn BlobStore>::new(inner.clone(), Arc::new(Semaphore::new(1)));
        let data = Bytes::from_static(b"here");
        let digest = DigestFunction::Sha256.digest_of(&data);
        limited
            .write_bytes(&name("i"), &digest, data.clone())
            .await
            .unwrap();

        let stream = limited.read(&name("i"), &digest, 0, None).await.unwrap();
        let instance = name("i");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            limited.batch_read(&instance, vec![digest]),
        );
        assert!(waiting.await.is_err(), "batch_read ran without a permit");
        drop(stream);
        let read = limited.batch_read(&name("i"), vec![digest, digest]).await;
        assert_eq!(read.len(), 2);
        assert!(read.iter().all(|r| r.as_ref().unwrap() == &data));
        assert_eq!(Counting::count(&inner.batch_reads), 1);
        assert_eq!(Counting::count(&inner.reads), 1, "only the read above");
    }
}
