//! The local content-addressable storage, verified on the way in: blobs up to
//! [`PACKED_MAX_BLOB`] packed into segment files ([`Packed`]), larger ones a file each in a
//! [`DiskLru`], both under one bound ([`JointBound`]). Small blobs written before packing existed
//! stay readable in the [`DiskLru`].

use crate::clock::Clock;
use crate::disk_lru::{in_blocks, DiskKey, DiskLru, DiskLruOptions, Reservation};
use crate::error::{StoreError, StoreResult};
use crate::joint_bound::{JointBound, Member, PackedBudget};
use crate::nowait::read_cached;
use crate::packed::{Packed, PACKED_MAX_BLOB};
use crate::traits::{mismatch, BlobSink, BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use futures::StreamExt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use upload::{BufferedSink, Destination, StreamingSink, UPLOAD_BATCH};

mod upload;

/// Size of the chunks reads are streamed in: large enough for throughput, well below gRPC's 4 MiB
/// default message limit.
const READ_CHUNK: usize = 1 << 20;

/// The longest read of a blob file served on the runtime's thread when its bytes are in the page
/// cache: copying 256 KiB takes tens of microseconds, less than the hop to a blocking thread;
/// longer copies would hold up the small calls waiting for that thread.
const READ_NOW_MAX: u64 = 256 << 10;

/// How far ahead of a streamed read the disk is asked to read.
const PREFETCH: u64 = 16 << 20;

/// How much of a large upload is written before its writeback to the disk starts, overlapping
/// the final fsync with the transfer.
const WRITEBACK_WINDOW: u64 = 16 << 20;

/// Blob files live at `<function>/<first two hex digits>/<hash>-<size>`.
impl DiskKey for Digest {
    fn rel_path(&self) -> PathBuf {
        let hash = self.hash_hex();
        PathBuf::from(self.function().name())
            .join(&hash[..2])
            .join(self.file_name())
    }

    fn from_rel_path(path: &Path) -> Option<Self> {
        let mut parts = path.iter().map(|p| p.to_str());
        let function = DigestFunction::from_name(parts.next()??)?;
        let shard = parts.next()??;
        let digest = Digest::parse_joined(Some(function), parts.next()??, '-').ok()?;
        (parts.next().is_none() && digest.hash_hex().starts_with(shard)).then_some(digest)
    }

    fn expected_len(&self) -> Option<u64> {
        Some(self.size())
    }

    fn footprint(len: u64) -> u64 {
        in_blocks(len)
    }
}

/// Whether a blob of this digest is packed.
fn packs(digest: &Digest) -> bool {
    !digest.is_empty_blob() && digest.size() <= PACKED_MAX_BLOB
}

/// A local blob, for direct reads (the file system serves ranges from it).
pub enum LocalBlob {
    /// A blob with a file of its own.
    File(File),
    /// A packed (small) blob, read whole.
    Bytes(Bytes),
}

/// The local CAS, shared by every instance name (content addressing needs no namespaces).
pub struct LocalCas {
    blobs: Arc<DiskLru<Digest>>,
    packed: Arc<Packed>,
    bound: Arc<JointBound>,
}

impl LocalCas {
    /// Opens the store at `root`, bounded to `options.max_bytes` in all. The packed blobs start
    /// with the budget for what they hold (at least two segments), the files with the rest; the
    /// budget then moves to whichever layout holds the newer data (see [`JointBound`]).
    pub fn open(
        root: &Path,
        options: DiskLruOptions,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        let packed = Packed::open(
            &root.join("packed"),
            options.max_bytes,
            options.sync_writes,
            clock.clone(),
        )?;
        let packed_bytes = packed
            .footprint()
            .max(packed.floor())
            .min(options.max_bytes);
        packed.set_max_bytes(packed_bytes);
        let files = DiskLruOptions {
            max_bytes: options.max_bytes - packed_bytes,
            ..options
        };
        let blobs = DiskLru::open(root, files, clock)?;
        let bound = Arc::new(JointBound::new(
            blobs.clone(),
            packed.clone(),
            packed.segment_bytes(),
        ));
        // Packing that would evict asks the joint bound first (under the packed writer's lock,
        // so that concurrent writes cannot take the room it makes).
        packed.set_budget(Box::new(PackedBudget(Arc::downgrade(&bound))));
        Ok(LocalCas {
            blobs,
            packed,
            bound,
        })
    }

    /// The blob, for direct reads. None if absent.
    pub fn open_local(&self, digest: &Digest) -> StoreResult<Option<LocalBlob>> {
        if packs(digest) {
            if let Some(data) = self.packed.read(digest, 0, digest.size())? {
                return Ok(Some(LocalBlob::Bytes(data)));
            }
        }
        Ok(self.blobs.open_file(digest)?.map(LocalBlob::File))
    }

    /// [`LocalCas::open_local`] if it can be done without waiting for the disk (a packed blob
    /// verified and in the page cache, or a file whose path the kernel has cached); None when
    /// it cannot, and `open_local` answers, on a thread that may wait. Some(None): absent.
    pub fn open_local_now(&self, digest: &Digest) -> Option<Option<LocalBlob>> {
        if packs(digest) {
            // None from read_now is also "absent": open_local tells.
            return self
                .packed
                .read_now(digest, 0, digest.size())
                .map(|data| Some(LocalBlob::Bytes(data)));
        }
        Some(self.blobs.open_file_now(digest)?.map(LocalBlob::File))
    }

    /// Whether the blob is here, without blocking on anything (index lookups; a blob not indexed
    /// yet at start counts as absent).
    pub fn has(&self, digest: &Digest) -> bool {
        digest.is_empty_blob()
            || (packs(digest) && self.packed.contains_now(digest))
            || self
                .blobs
                .contains_now(std::slice::from_ref(digest))
                .is_some_and(|present| present[0])
    }

    /// Number of blobs and the bytes they occupy.
    pub fn usage(&self) -> (usize, u64) {
        let (files, file_bytes) = self.blobs.usage();
        let (packed, packed_bytes) = self.packed.usage();
        (files + packed, file_bytes + packed_bytes)
    }

    /// `len` bytes from `offset` of a blob stored as a file, if they can be had without waiting
    /// for the disk (see [`DiskLru::open_file_now`]); None otherwise, absent blobs included.
    fn read_file_now(&self, digest: &Digest, offset: u64, len: u64) -> Option<Bytes> {
        let file = self.blobs.open_file_now(digest)??;
        read_cached(&file, offset, len).map(Bytes::from)
    }
}

#[async_trait]
impl BlobStore for LocalCas {
    async fn digest_by_hash(
        &self,
        _instance_name: &InstanceName,
        name: &Digest,
    ) -> StoreResult<Option<Digest>> {
        if name.is_empty_blob() {
            return Ok(Some(*name));
        }
        let (blobs, packed, name) = (self.blobs.clone(), self.packed.clone(), *name);
        tokio::task::spawn_blocking(move || digest_by_hash(&blobs, &packed, &name))
            .await
            .map_err(join_error)
    }

    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        self.contains(instance_name, digest).await.unwrap_or(false)
    }

    /// Local already, or nowhere.
    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        match self.contains(instance_name, digest).await? {
            true => Ok(()),
            false => Err(StoreError::blob_not_found(digest)),
        }
    }

    async fn find_missing(
        &self,
        _instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        // Asked before the quick pass: a blob that pass misses because the work at start had not
        // reached it then must get the slow one, even if that work has ended since.
        let settling = self.packed.settling();
        let present = match self.blobs.contains_now(digests) {
            Some(present) => present,
            // The scan at start runs: digests the index lacks are looked for on disk, a file
            // open each, on a blocking thread.
            None => {
                let (blobs, digests) = (self.blobs.clone(), digests.to_vec());
                tokio::task::spawn_blocking(move || blobs.contains(&digests))
                    .await
                    .map_err(join_error)?
            }
        };
        let mut missing: Vec<Digest> = digests
            .iter()
            .zip(present)
            .filter(|(d, present)| !present && !d.is_empty_blob())
            .filter(|(d, _)| !(packs(d) && self.packed.contains_now(d)))
            .map(|(d, _)| *d)
            .collect();
        if settling && missing.iter().any(packs) {
            // Packed blobs not indexed or verified yet: asked again on a blocking thread, which
            // waits for the index rather than report a committed blob missing.
            let packed = self.packed.clone();
            missing = tokio::task::spawn_blocking(move || {
                missing.retain(|d| !(packs(d) && packed.contains(d)));
                missing
            })
            .await
            .map_err(join_error)?;
        }
        Ok(missing)
    }

    async fn read(
        &self,
        _instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        if offset > digest.size() {
            return Err(StoreError::OutOfRange(format!(
                "read offset {offset} is past the end of blob {digest}"
            )));
        }
        let len = limit.unwrap_or(u64::MAX).min(digest.size() - offset);
        if len == 0 {
            // Present or not, asked as FindMissingBlobs asks (waiting for the index at start).
            if self
                .find_missing(&InstanceName::default(), std::slice::from_ref(digest))
                .await?
                .is_empty()
            {
                return Ok(futures::stream::empty().boxed());
            }
            return Err(StoreError::blob_not_found(digest));
        }
        let now = match packs(digest) {
            true => self.packed.read_now(digest, offset, len),
            false if len <= READ_NOW_MAX => self.read_file_now(digest, offset, len),
            false => None,
        };
        if let Some(data) = now {
            return Ok(futures::stream::once(async move { Ok(data) }).boxed());
        }
        let blobs = self.blobs.clone();
        let digest = *digest;
        if len <= READ_CHUNK as u64 {
            // One piece: opened and read in one blocking hop, with no channel (most blobs Bazel
            // downloads are small, and a hop costs about as much as the read).
            let packed = self.packed.clone();
            let data = tokio::task::spawn_blocking(move || {
                read_range(&blobs, &packed, &digest, offset, len)
            })
            .await
            .map_err(join_error)??;
            return Ok(futures::stream::once(async move { Ok(data) }).boxed());
        }
        let file = tokio::task::spawn_blocking(move || blobs.open_file(&digest))
            .await
            .map_err(join_error)??
            .ok_or_else(|| StoreError::blob_not_found(&digest))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_file(file, offset, len, &tx) {
                let _ = tx.blocking_send(Err(StoreError::io(format!("reading blob {digest}"), e)));
            }
        });
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn begin_write(
        &self,
        _instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        if packs(digest) {
            let to = Destination::Packed(self.packed.clone());
            return Ok(Box::new(BufferedSink::new(*digest, to)));
        }
        // The declared size is reserved before any byte arrives: a blob that cannot fit is
        // refused at once, and uploads in progress count against the bound. Room that is free
        // is taken here; making room may evict, which unlinks files: not on the runtime's threads.
        let free = || self.blobs.reserve_free(digest.size());
        let reservation = match self.bound.reserve_free_file(free) {
            Some(reservation) => reservation,
            None => {
                let (blobs, bound, size) = (self.blobs.clone(), self.bound.clone(), digest.size());
                tokio::task::spawn_blocking(move || reserve(&blobs, &bound, size))
                    .await
                    .map_err(join_error)??
            }
        };
        let blobs = self.blobs.clone();
        if digest.size() <= UPLOAD_BATCH {
            let to = Destination::File { blobs, reservation };
            return Ok(Box::new(BufferedSink::new(*digest, to)));
        }
        Ok(Box::new(StreamingSink::new(blobs, reservation, *digest)))
    }

    async fn write_bytes(
        &self,
        _instance_name: &InstanceName,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        if packs(digest) {
            let mut results = self
                .batch_write(&InstanceName::default(), vec![(*digest, data)])
                .await;
            return results.pop().expect("one result per blob");
        }
        let (blobs, bound) = (self.blobs.clone(), self.bound.clone());
        let digest = *digest;
        tokio::task::spawn_blocking(move || {
            verify(&digest, &data)?;
            if digest.is_empty_blob() || blobs.contains(std::slice::from_ref(&digest))[0] {
                return Ok(()); // before reserving: nothing to make room for
            }
            let reservation = reserve(&blobs, &bound, digest.size())?;
            store_file(&blobs, &digest, &data, reservation)
        })
        .await
        .map_err(join_error)?
    }

    /// Small blobs are verified and packed together on one blocking thread, with one write and
    /// one sync for the lot (group commit); larger ones are stored a file each.
    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        let n = blobs.len();
        let (small, large): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .enumerate()
            .partition(|(_, (d, _))| packs(d));
        let packed = self.packed.clone();
        let small_done = tokio::task::spawn_blocking(move || {
            let mut results: Vec<(usize, StoreResult<()>)> = Vec::with_capacity(small.len());
            let mut verified = Vec::with_capacity(small.len());
            for (i, (digest, data)) in &small {
                match verify(digest, data) {
                    Ok(()) => verified.push((*i, *digest, data.as_ref())),
                    Err(e) => results.push((*i, Err(e))),
                }
            }
            let batch: Vec<(Digest, &[u8])> = verified.iter().map(|(_, d, b)| (*d, *b)).collect();
            let stored = packed.put(&batch);
            results.extend(verified.iter().map(|(i, _, _)| (*i, stored.clone())));
            results
        });
        let large_done = futures::stream::iter(large)
            .map(|(i, (digest, data))| async move {
                (i, self.write_bytes(instance_name, &digest, data).await)
            })
            .buffered(crate::traits::BATCH_CONCURRENCY)
            .collect::<Vec<_>>();
        let (small_results, mut results) = futures::join!(small_done, large_done);
        match small_results {
            Ok(small_results) => results.extend(small_results),
            Err(e) => return vec![Err(join_error(e)); n],
        }
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Reads the blobs on one blocking thread (for small blobs a task and a stream per blob cost
    /// more than the reads themselves): packed neighbours with one call, the others each into a
    /// buffer of its size.
    async fn batch_read(
        &self,
        _instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        let (blobs, packed) = (self.blobs.clone(), self.packed.clone());
        let n = digests.len();
        tokio::task::spawn_blocking(move || {
            // Packed blobs first, together (neighbours in a segment are read in one call); the
            // rest, and small blobs an earlier version stored as files, a file each.
            let small: Vec<Digest> = digests.iter().copied().filter(packs).collect();
            let mut small = packed.read_together(&small).into_iter();
            digests
                .iter()
                .map(|digest| {
                    if digest.is_empty_blob() {
                        return Ok(Bytes::new());
                    }
                    if !packs(digest) {
                        return read_file_range(&blobs, digest, 0, digest.size());
                    }
                    match small.next().expect("one result per blob") {
                        Ok(Some(data)) => Ok(data),
                        Ok(None) => read_file_range(&blobs, digest, 0, digest.size()),
                        Err(e) => Err(e),
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            let e = join_error(e);
            (0..n).map(|_| Err(e.clone())).collect()
        })
    }
}

/// `len` bytes of a blob from `offset`, read from its segment or its file in one call.
fn read_range(
    blobs: &DiskLru<Digest>,
    packed: &Packed,
    digest: &Digest,
    offset: u64,
    len: u64,
) -> StoreResult<Bytes> {
    if packs(digest) {
        if let Some(data) = packed.read(digest, offset, len)? {
            return Ok(data);
        }
    }
    read_file_range(blobs, digest, offset, len)
}

/// `len` bytes from `offset` of a blob stored as a file of its own.
fn read_file_range(
    blobs: &DiskLru<Digest>,
    digest: &Digest,
    offset: u64,
    len: u64,
) -> StoreResult<Bytes> {
    let file = blobs
        .open_file(digest)?
        .ok_or_else(|| StoreError::blob_not_found(digest))?;
    let mut data = vec![0; len as usize];
    file.read_exact_at(&mut data, offset).map_err(|e| {
        let e = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(e.kind(), "blob file is shorter than its size")
        } else {
            e
        };
        StoreError::io(format!("reading blob {digest}"), e)
    })?;
    Ok(Bytes::from(data))
}

/// Whether `data` is the blob `digest` names (INVALID_ARGUMENT saying how it differs if not).
fn verify(digest: &Digest, data: &[u8]) -> StoreResult<()> {
    let actual = digest.function().digest_of(data);
    match actual == *digest {
        true => Ok(()),
        false => Err(mismatch(digest, &actual)),
    }
}

/// INVALID_ARGUMENT once an upload has received more bytes (`end`) than its digest says.
fn check_not_past_size(digest: &Digest, end: u64) -> StoreResult<()> {
    if end > digest.size() {
        return Err(StoreError::InvalidArgument(format!(
            "blob {digest}: received at least {end} bytes, digest says {}",
            digest.size()
        )));
    }
    Ok(())
}

/// Writes a verified blob to a file of its own, in the room `reservation` holds, unless there is
/// nothing to store: the empty blob, or one already present.
fn store_file(
    blobs: &DiskLru<Digest>,
    digest: &Digest,
    data: &[u8],
    reservation: Reservation,
) -> StoreResult<()> {
    if digest.is_empty_blob() || blobs.contains(std::slice::from_ref(digest))[0] {
        return Ok(());
    }
    let mut file = blobs.temp_file()?;
    file.write_all(data)
        .map_err(|e| StoreError::io(format!("writing blob {digest}"), e))?;
    blobs.insert(digest, file, reservation)
}

/// The blob whose hash is `name`'s, whatever its size (`name`'s is ignored), if it is here:
/// packed, or a file (found by listing its shard directory, a 256th of the files). Blocks.
fn digest_by_hash(blobs: &DiskLru<Digest>, packed: &Packed, name: &Digest) -> Option<Digest> {
    if let Some(digest) = packed.digest_by_hash(name) {
        return Some(digest);
    }
    let path = name.rel_path();
    let shard = path.parent().expect("a blob's path has a shard directory");
    let prefix = format!("{}-", name.hash_hex());
    let listing = std::fs::read_dir(blobs.root().join(shard)).ok()?;
    listing
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|file| file.starts_with(&prefix))
        .filter_map(|file| Digest::from_rel_path(&shard.join(file)))
        .find(|digest| blobs.contains(std::slice::from_ref(digest))[0])
}

/// Room for a file of `len` bytes: budget moved to the files first, if it should be.
fn reserve(blobs: &DiskLru<Digest>, bound: &JointBound, len: u64) -> StoreResult<Reservation> {
    bound.reserve_file(Digest::footprint(len), || blobs.reserve(len))
}

fn stream_file(
    mut file: File,
    offset: u64,
    mut len: u64,
    tx: &mpsc::Sender<StoreResult<Bytes>>,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let end = offset + len;
    // Only reads longer than one chunk are streamed (see `read`), so there is always more to come.
    prefetch(&file, offset, PREFETCH.min(len));
    while len > 0 {
        let n = (len as usize).min(READ_CHUNK);
        let ahead = end - len + PREFETCH;
        if ahead < end {
            prefetch(&file, ahead, READ_CHUNK.min((end - ahead) as usize) as u64);
        }
        // Read into spare capacity: zero-filling the buffer first would cost a pass over the data.
        let mut buf = Vec::with_capacity(n);
        (&mut file).take(n as u64).read_to_end(&mut buf)?;
        if buf.len() < n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "blob file is shorter than its size",
            ));
        }
        len -= n as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            break; // the reader went away
        }
    }
    Ok(())
}

/// Asks the kernel to start reading a range of the file from the disk, without waiting. Keeping
/// PREFETCH ahead of the reads keeps the disk busy while the chunks before are being sent: the
/// kernel's own readahead stops whenever sending falls behind and the reads pause.
fn prefetch(file: &File, offset: u64, len: u64) {
    // SAFETY: a valid open descriptor; advice only, and its failure is harmless.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Internal(format!("blocking task failed: {e}"))
}
