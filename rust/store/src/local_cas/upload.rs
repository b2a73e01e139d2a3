//! Uploads into the local CAS ([`BlobStore::begin_write`](crate::BlobStore::begin_write)): how the
//! bytes of one ByteStream Write reach the disk.
//!
//! Bazel sends a blob in WriteRequests of 16 KiB. Handing each one to blocking threads woke a
//! writer and a hasher per 16 KiB: about 20,000 thread wake-ups for a build that uploads 150 MiB,
//! and a fifth of the daemon's CPU went to switching threads (`perf record` of a cold build).
//! So the bytes are gathered on the runtime's thread first, [`UPLOAD_BATCH`] at a time:
//! - a blob of at most [`UPLOAD_BATCH`] bytes is kept in memory and verified and stored at commit,
//!   in one blocking call ([`BufferedSink`]): packed if it is small, a file otherwise;
//! - a larger blob goes to a writer thread and a hasher thread in batches of [`UPLOAD_BATCH`],
//!   the two working side by side while the next batch arrives ([`StreamingSink`]).

use super::{check_not_past_size, join_error, store_file, verify, WRITEBACK_WINDOW};
use crate::disk_lru::{DiskLru, Reservation};
use crate::error::{StoreError, StoreResult};
use crate::packed::Packed;
use crate::traits::{mismatch, BlobSink};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use clientd_digest::{Digest, DigestFunction};
use std::io::Write;
use std::sync::Arc;
use tempfile::NamedTempFile;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes gathered before they go to a blocking thread. A whole blob up to this size is held in
/// memory until its commit, so it also bounds the memory of each upload in progress.
pub(super) const UPLOAD_BATCH: u64 = 1 << 20;

/// Where a verified blob goes.
pub(super) enum Destination {
    /// Small blobs: into a segment.
    Packed(Arc<Packed>),
    /// A file of its own, in the room reserved when the upload began.
    File {
        blobs: Arc<DiskLru<Digest>>,
        reservation: Reservation,
    },
}

/// An upload of at most [`UPLOAD_BATCH`] bytes: kept in memory, verified and stored at commit in
/// one blocking call.
pub(super) struct BufferedSink {
    digest: Digest,
    data: Vec<u8>,
    to: Destination,
}

impl BufferedSink {
    pub(super) fn new(digest: Digest, to: Destination) -> Self {
        BufferedSink {
            digest,
            data: Vec::with_capacity(digest.size() as usize),
            to,
        }
    }
}

#[async_trait]
impl BlobSink for BufferedSink {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        check_not_past_size(&self.digest, self.data.len() as u64 + data.len() as u64)?;
        self.data.extend_from_slice(&data);
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.data.len() as u64
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let BufferedSink { digest, data, to } = *self;
        tokio::task::spawn_blocking(move || {
            verify(&digest, &data)?;
            match to {
                Destination::Packed(packed) => packed.put(&[(digest, &data)]),
                Destination::File { blobs, reservation } => {
                    store_file(&blobs, &digest, &data, reservation)
                }
            }
        })
        .await
        .map_err(join_error)?
    }
}

/// An upload larger than [`UPLOAD_BATCH`]: written to a temporary file and hashed on two blocking
/// threads as it arrives, in batches, then made the blob's file once it verifies.
pub(super) struct StreamingSink {
    blobs: Arc<DiskLru<Digest>>,
    /// The blob's room in the bound, held until it is stored or the upload is dropped.
    reservation: Reservation,
    digest: Digest,
    /// Received and not yet handed on.
    batch: BytesMut,
    /// The writer's and the hasher's queues; None once committed.
    to: Option<[mpsc::Sender<Bytes>; 2]>,
    writer: JoinHandle<StoreResult<NamedTempFile>>,
    hasher: JoinHandle<Digest>,
    committed: u64,
}

impl StreamingSink {
    pub(super) fn new(
        blobs: Arc<DiskLru<Digest>>,
        reservation: Reservation,
        digest: Digest,
    ) -> Self {
        let (to_writer, batches) = mpsc::channel::<Bytes>(2);
        let writing = blobs.clone();
        let writer = tokio::task::spawn_blocking(move || write_batches(&writing, &digest, batches));
        // Hashing runs on its own thread, beside the writing: each takes about as long as the
        // other, and both are pipelined with receiving the next batch.
        let (to_hasher, batches) = mpsc::channel::<Bytes>(2);
        let function = digest.function();
        let hasher = tokio::task::spawn_blocking(move || hash_batches(function, batches));
        StreamingSink {
            blobs,
            reservation,
            digest,
            batch: BytesMut::new(),
            to: Some([to_writer, to_hasher]),
            writer,
            hasher,
            committed: 0,
        }
    }

    /// Hands the batch gathered so far to the writer and the hasher.
    async fn hand_on(&mut self) -> StoreResult<()> {
        let batch = self.batch.split().freeze();
        let [to_writer, to_hasher] = self.to.as_ref().expect("not committed");
        // The hasher stops only when its queue closes, so only the writer can refuse a batch.
        let _ = to_hasher.send(batch.clone()).await;
        if to_writer.send(batch).await.is_err() {
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    /// The writer's error, once it has stopped taking batches.
    async fn writer_error(&mut self) -> StoreError {
        self.to = None;
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => StoreError::Internal("blob writer stopped early".into()),
            Err(e) => join_error(e),
        }
    }
}

#[async_trait]
impl BlobSink for StreamingSink {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        let end = self.committed + data.len() as u64;
        check_not_past_size(&self.digest, end)?;
        if self.batch.is_empty() {
            self.batch.reserve(UPLOAD_BATCH as usize);
        }
        self.batch.extend_from_slice(&data);
        if self.batch.len() as u64 >= UPLOAD_BATCH {
            self.hand_on().await?;
        }
        // Counted once received: a resumed upload restarts from here, and whatever is still in
        // the batch goes out with the next one.
        self.committed = end;
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.committed
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if !self.batch.is_empty() {
            self.hand_on().await?;
        }
        self.to = None;
        let file = (&mut self.writer).await.map_err(join_error)??;
        let actual = (&mut self.hasher).await.map_err(join_error)?;
        if actual != self.digest {
            return Err(mismatch(&self.digest, &actual));
        }
        let StreamingSink {
            blobs,
            reservation,
            digest,
            ..
        } = *self;
        tokio::task::spawn_blocking(move || blobs.insert(&digest, file, reservation))
            .await
            .map_err(join_error)?
    }
}

/// Writes the batches to a new temporary file, starting writeback of every WRITEBACK_WINDOW bytes
/// as they fill up.
fn write_batches(
    blobs: &DiskLru<Digest>,
    digest: &Digest,
    mut batches: mpsc::Receiver<Bytes>,
) -> StoreResult<NamedTempFile> {
    let mut file = blobs.temp_file()?;
    let (mut written, mut flushed) = (0, 0);
    while let Some(batch) = batches.blocking_recv() {
        file.write_all(&batch)
            .map_err(|e| StoreError::io(format!("writing blob {digest}"), e))?;
        written += batch.len() as u64;
        if written - flushed >= WRITEBACK_WINDOW {
            blobs.start_writeback(&file, flushed, written - flushed);
            flushed = written;
        }
    }
    Ok(file)
}

fn hash_batches(function: DigestFunction, mut batches: mpsc::Receiver<Bytes>) -> Digest {
    let mut hasher = function.hasher();
    let mut size = 0u64;
    while let Some(batch) = batches.blocking_recv() {
        hasher.update(&batch);
        size += batch.len() as u64;
    }
    hasher.finish(size)
}
