use crate::error::{StoreError, StoreResult};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use futures::stream::BoxStream;
use futures::StreamExt;

/// How many blobs of a batch are read or written at once by the default implementations.
pub const BATCH_CONCURRENCY: usize = 16;

/// A blob's bytes as chunks, in order.
pub type ByteStream = BoxStream<'static, StoreResult<Bytes>>;

/// The content-addressable storage, as every layer of clientd sees it.
///
/// Instance names travel with every call so that decorators can route by them; stores that are
/// shared by all instances (the local CAS) ignore them.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The subset of `digests` this store does not hold, in request order. Found blobs count as
    /// used, so they are not evicted before the client that asked gets to them.
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>>;

    /// Streams `limit` bytes (all if None) of the blob starting at `offset`.
    /// NOT_FOUND if the blob is absent, OUT_OF_RANGE if `offset` is past its end.
    async fn read(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream>;

    /// Starts a write of `digest`. Nothing becomes visible until [`BlobSink::commit`] verifies
    /// the hash and size; dropping the sink discards what was written.
    async fn begin_write(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>>;

    /// Reads a whole blob into memory; for small blobs such as Directory messages.
    async fn read_bytes(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Bytes> {
        let mut stream = self.read(instance_name, digest, 0, None).await?;
        let mut data = BytesMut::with_capacity(digest.size() as usize);
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(data.freeze())
    }

    /// Reads many small blobs into memory; one result per digest, in order. The local CAS
    /// overrides it to read them all on one blocking thread.
    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        futures::stream::iter(digests)
            .map(|digest| async move { self.read_bytes(instance_name, &digest).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Writes a whole in-memory blob.
    async fn write_bytes(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        let mut sink = self.begin_write(instance_name, digest).await?;
        sink.write(data).await?;
        sink.commit().await
    }

    /// Writes many small in-memory blobs; one result per blob, in order. Clusters override it to
    /// send whole batches in one round trip.
    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        futures::stream::iter(blobs)
            .map(|(digest, data)| async move { self.write_bytes(instance_name, &digest, data).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Makes sure the blob is in the local CAS, fetching it from where the instance's blobs come
    /// from if it is not (read caching copies it from the cluster), so that the caller can then
    /// open the local copy: the file system does, to serve a cas/ file from the local disk.
    /// NOT_FOUND if nobody has it. Every store says what it does: a decorator forwards, a store
    /// with no local copy (a cluster's CAS) refuses.
    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()>;

    /// Whether the store knows it holds `digest` without asking anyone over the network. Uploads
    /// use it to finish early: asking a cluster would cost a round trip per upload, for blobs
    /// Bazel has just been told are missing.
    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        let _ = (instance_name, digest);
        false
    }

    /// The blob whose hash is `name`'s, whatever its size, for clients that name blobs by hash
    /// alone (Bazel's HTTP cache client). None if absent, or if the store cannot tell (the
    /// default: a cluster's CAS is asked by hash and size).
    async fn digest_by_hash(
        &self,
        instance_name: &InstanceName,
        name: &Digest,
    ) -> StoreResult<Option<Digest>> {
        let _ = (instance_name, name);
        Ok(None)
    }

    /// Whether one blob is present.
    async fn contains(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<bool> {
        Ok(self
            .find_missing(instance_name, std::slice::from_ref(digest))
            .await?
            .is_empty())
    }
}

/// An unfinished blob write. Bytes are appended in order; `committed` counts them.
#[async_trait]
pub trait BlobSink: Send {
    async fn write(&mut self, data: Bytes) -> StoreResult<()>;

    /// Bytes written so far.
    fn committed(&self) -> u64;

    /// Verifies size and hash, then makes the blob visible atomically.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// A sink that forwards to `inner`, holds `_keep` for as long as the write lasts (a semaphore
/// permit, say), and runs `on_commit` once the blob is committed. For decorators that only need
/// to add something around a write.
pub(crate) struct WrappedSink<K: Send> {
    pub(crate) inner: Box<dyn BlobSink>,
    pub(crate) _keep: K,
    pub(crate) on_commit: Option<Box<dyn FnOnce() + Send>>,
}

#[async_trait]
impl<K: Send> BlobSink for WrappedSink<K> {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        self.inner.write(data).await
    }

    fn committed(&self) -> u64 {
        self.inner.committed()
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        self.inner.commit().await?;
        if let Some(on_commit) = self.on_commit {
            on_commit();
        }
        Ok(())
    }
}

/// The action cache, one namespace per instance name.
#[async_trait]
pub trait ActionCache: Send + Sync + 'static {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>>;
    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()>;
}

/// The error of a write whose bytes do not match its digest.
pub(crate) fn mismatch(expected: &Digest, got: &Digest) -> StoreError {
    if expected.size() != got.size() {
        StoreError::InvalidArgument(format!(
            "blob {expected}: received {} bytes, digest says {}",
            got.size(),
            expected.size()
        ))
    } else {
        StoreError::InvalidArgument(format!(
            "blob {expected}: data hashes to {}, not to the digest's hash",
            got.hash_hex()
        ))
    }
}
