//! Small blobs packed into append-only segment files, in the spirit of Buildbarn's block-device
//! blob access: a file per 100-byte blob costs a 4 KiB block, an inode and an fsync, so a cache
//! of small blobs occupies many times its size and stores a few thousand blobs a second.
//!
//! The rules that keep it safe:
//! - Segments are `<seq>.pack` (16 hex digits), written only by appending. A batch of blobs is one
//!   `pwrite` and (with `sync_writes`) one `fdatasync`, shared with the batches written while it
//!   waited (group commit), and becomes visible to readers only after both: nobody reads a blob
//!   that a crash could take back. A full segment is synced before the next one starts.
//! - Each record carries its digest, and no blob is served or reported present before its bytes
//!   have hashed to it since start: a damaged one never is. A torn tail (power loss before a
//!   sync) ends the segment there and is cut off. Each start writes to a new segment, so old ones
//!   are never appended to again.
//! - The bound counts the segments' real bytes. When a batch would pass it, the oldest segment is
//!   deleted with every blob in it (an open file stays readable, so a reader in flight is not cut
//!   short). A read of a blob whose segment goes within the next quarter of the bound copies it
//!   to the newest, so blobs in use survive (LRU, approximately, at a segment's granularity).
//! - Start-up reads index files, not segments. Each segment has one (`<seq>.idx`, see
//!   [`format`](mod@format)), appended to with each write and never synced: at start it is believed
//!   only as far as it agrees with its segment, and the segment is read from there (the tail a
//!   crash left). Then a thread hashes every blob the index files listed; until it has, a blob is
//!   hashed when first asked for. Until the index files are read, a lookup of a blob the index
//!   lacks waits (and looks again as each chunk of entries comes in), so a committed blob is never
//!   reported missing. The index files are mapped, not copied ([`list`]), and the index in memory
//!   is compact ([`index`]), so that a million blobs load in well under a tenth of a second.

mod format;
mod index;
mod list;
mod read;
mod start;
mod table;

use crate::clock::Clock;
use crate::error::{StoreError, StoreResult};
use crate::joint_bound::Member;
use clientd_digest::Digest;
use format::{data_offset, encode, encode_entry};
use index::{Index, Location};
use list::List;
use start::{Progress, Start};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Blobs up to this size are packed; larger ones get a file each (where a block's waste is at
/// most a quarter, and reads stream).
pub const PACKED_MAX_BLOB: u64 = 16 << 10;

/// Index entries taken in or out per hold of the lock (at start, on eviction), so lookups are
/// not held up long.
const CHUNK: usize = 4096;

/// What an append is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Append {
    /// New blobs: those already here are skipped, and the rest synced if so configured.
    Store,
    /// A copy of a blob in an old segment, to the newest, not synced (the original is).
    Refresh,
}

struct Segment {
    file: Arc<File>,
    /// The segment's length.
    bytes: u64,
    /// Its index file's length (counted in the bound too).
    index_bytes: u64,
    /// When it was last written to (seconds since the epoch): how old its blobs are, for a
    /// [`JointBound`](crate::joint_bound::JointBound).
    written: u64,
}

struct State {
    index: Index,
    /// Oldest first; the last one is being appended to (once its first write created it).
    segments: BTreeMap<u32, Segment>,
    /// The segments' and their index files' bytes.
    bytes: u64,
}

/// Blobs just written to a segment, not visible yet.
struct Written {
    segment: u32,
    file: Arc<File>,
    /// The segment's length after them.
    end: u64,
    /// Each blob, and where its bytes start.
    placed: Vec<(Digest, u64)>,
}

/// The segment being appended to: its number and length, and its index file.
struct Writer {
    segment: u32,
    len: u64,
    /// Created by the first write, so a start costs no sync.
    index: Option<(File, u64)>,
}

/// Segments taken out of the index, with their lists: their blobs' slots are yet to be taken
/// out of the table, and their files unlinked.
#[must_use]
struct Evicted(Vec<(u32, List)>);

/// A blob found in the index, verified.
struct Found {
    location: Location,
    file: Arc<File>,
    /// Whether its segment is among the next to go (the read copies it to the newest).
    old: bool,
    /// The whole blob, when finding it meant reading it to verify it.
    data: Option<Vec<u8>>,
}

pub struct Packed {
    dir: PathBuf,
    /// The bound: as opened at first, moved by a [`JointBound`] the store is part of.
    ///
    /// [`JointBound`]: crate::joint_bound::JointBound
    max_bytes: AtomicU64,
    segment_bytes: u64,
    clock: Arc<dyn Clock>,
    sync_writes: bool,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    /// (segment, length) up to which the segments are synced (held while syncing).
    synced: Mutex<(u32, u64)>,
    start: Mutex<Progress>,
    loaded: Condvar,
    /// The budget beyond its own bound, when the store is under a [`JointBound`].
    ///
    /// [`JointBound`]: crate::joint_bound::JointBound
    budget: OnceLock<Box<dyn Budget>>,
}

/// What a store can have beyond its own bound: under a joint bound, budget the other layout
/// does not use, or holds for older data.
pub(crate) trait Budget: Send + Sync {
    /// Asked before an append would make the store evict, with the writer's lock held (so no
    /// other write takes the room meanwhile): moves budget to the store if it should. It must
    /// not write to the store.
    fn make_room(&self, incoming: u64);
    /// Budget the store could have without anything being evicted.
    fn spare(&self) -> u64;
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:016x}.pack"))
}

fn index_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:016x}.idx"))
}

/// The segment number in a file name `<seq>.<extension>` (16 hex digits, of which the index
/// uses 8: a new segment every millisecond would take 50 days to pass them).
fn numbered(name: &std::ffi::OsStr, extension: &str) -> Option<u32> {
    let stem = name.to_str()?.strip_suffix(extension)?.strip_suffix('.')?;
    let number = (stem.len() == 16).then(|| u64::from_str_radix(stem, 16).ok())??;
    number.try_into().ok()
}

impl Packed {
    /// Opens (creating) the segments in `dir`, bounded to `max_bytes` (which sizes the segments
    /// too); a thread reads their index files, then verifies their blobs.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        sync_writes: bool,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        let mut indexes = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(number) = numbered(&name, "idx") {
                indexes.insert(number, entry.metadata()?.len());
            }
            let Some(number) = numbered(&name, "pack") else {
                continue;
            };
            let file = File::open(entry.path())?;
            let metadata = file.metadata()?;
            segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    bytes: metadata.len(),
                    index_bytes: 0,
                    written: metadata.modified().map_or(0, secs),
                },
            );
        }
        for (number, len) in indexes {
            match segments.get_mut(&number) {
                Some(segment) => segment.index_bytes = len,
                // Its segment was deleted by an eviction that a crash interrupted.
                None => fs::remove_file(index_path(dir, number))?,
            }
        }
        let bytes = segments.values().map(|s| s.bytes + s.index_bytes).sum();
        let found: Vec<u32> = segments.keys().copied().collect();
        let first = found.last().map_or(0, |n| n + 1);
        let packed = Arc::new(Packed {
            dir: dir.to_path_buf(),
            max_bytes: AtomicU64::new(max_bytes),
            // At most a quarter of the bound, so that two fit a small one.
            segment_bytes: (max_bytes / 8)
                .clamp(256 << 10, 64 << 20)
                .min(max_bytes / 4)
                .max(1),
            clock,
            sync_writes,
            state: RwLock::new(State {
                index: Index::default(),
                segments,
                bytes,
            }),
            writer: Mutex::new(Writer {
                segment: first,
                len: 0,
                index: None,
            }),
            synced: Mutex::new((0, 0)),
            start: Mutex::new(Progress::STARTED),
            loaded: Condvar::new(),
            budget: OnceLock::new(),
        });
        let loader = packed.clone();
        std::thread::Builder::new()
            .name("packed-load".into())
            .spawn(move || loader.load(&found))?;
        Ok(packed)
    }

    /// Creates segment `number` and its index file.
    fn create_segment(&self, number: u32) -> io::Result<File> {
        let create = |path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
        };
        let file = create(segment_path(&self.dir, number))?;
        let index = create(index_path(&self.dir, number))?;
        if self.sync_writes {
            File::open(&self.dir)?.sync_all()?; // the new name survives power loss
        }
        self.state.write().unwrap().segments.insert(
            number,
            Segment {
                file: Arc::new(file),
                bytes: 0,
                index_bytes: 0,
                written: self.now(),
            },
        );
        Ok(index)
    }

    /// Puts the store under a joint bound's `budget` (once; later calls are ignored).
    pub(crate) fn set_budget(&self, budget: Box<dyn Budget>) {
        let _ = self.budget.set(budget);
    }

    /// See [`Budget::spare`]; none without a joint bound.
    fn spare(&self) -> u64 {
        self.budget.get().map_or(0, |b| b.spare())
    }

    /// Stores blobs whose digests the caller has verified, each at most [`PACKED_MAX_BLOB`]:
    /// one write and one sync per segment they go to. Blobs already here are skipped.
    pub fn put(&self, blobs: &[(Digest, &[u8])]) -> StoreResult<()> {
        self.append(blobs, Append::Store)
    }

    fn append(&self, blobs: &[(Digest, &[u8])], how: Append) -> StoreResult<()> {
        let io_error =
            |e| StoreError::io(format!("writing packed blobs in {}", self.dir.display()), e);
        let mut pending = blobs
            .iter()
            .filter(|(digest, _)| how == Append::Refresh || !self.contains_now(digest))
            .peekable();
        while pending.peek().is_some() {
            let Written {
                segment,
                file,
                end,
                placed,
            } = self.write_some(&mut pending).map_err(io_error)?;
            if how == Append::Store && self.sync_writes {
                self.sync(segment, &file, end).map_err(io_error)?;
            }
            let mut state = self.state.write().unwrap();
            if !state.segments.contains_key(&segment) {
                continue; // evicted already (a bound smaller than a few batches)
            }
            for (digest, offset) in &placed {
                state.index.insert(segment, digest, *offset, true);
            }
        }
        Ok(())
    }

    /// Writes as many of `pending` as fit in the segment being written (at least one), starting
    /// a new segment first when it is full, and lists them in its index file. The blobs are not
    /// visible yet.
    fn write_some<'a>(
        &self,
        pending: &mut std::iter::Peekable<impl Iterator<Item = &'a (Digest, &'a [u8])>>,
    ) -> io::Result<Written> {
        let mut writer = self.writer.lock().unwrap();
        if writer.index.is_some() && writer.len >= self.segment_bytes {
            if self.sync_writes {
                // Sealed synced: a sync of a newer segment then covers every older one.
                let state = self.state.read().unwrap();
                state.segments[&writer.segment].file.sync_data()?;
            }
            *writer = Writer {
                segment: writer.segment + 1,
                len: 0,
                index: None,
            };
        }
        if writer.index.is_none() {
            writer.index = Some((self.create_segment(writer.segment)?, 0));
        }
        let mut records = Vec::new();
        let mut entries = Vec::new();
        let mut placed = Vec::new();
        while let Some((digest, data)) = pending.peek() {
            let data_at = data_offset(digest, writer.len + records.len() as u64);
            if !records.is_empty() && data_at + data.len() as u64 > self.segment_bytes {
                break;
            }
            encode(digest, data, &mut records);
            encode_entry(digest, data_at, &mut entries);
            placed.push((*digest, data_at));
            pending.next();
        }
        let n = records.len() as u64;
        let incoming = n + entries.len() as u64;
        if let Some(budget) = self.budget.get() {
            let full = {
                let state = self.state.read().unwrap();
                state.bytes + incoming > self.max_bytes()
            };
            if full {
                budget.make_room(incoming);
            }
        }
        let (file, evicted) = {
            let mut state = self.state.write().unwrap();
            let evicted = self.evict(&mut state, incoming);
            (state.segments[&writer.segment].file.clone(), evicted)
        };
        self.remove(evicted);
        file.write_all_at(&records, writer.len)?;
        writer.len += n;
        if let Some((index, index_len)) = &mut writer.index {
            index.write_all_at(&entries, *index_len)?;
            *index_len += entries.len() as u64;
        }
        let now = self.now();
        let mut state = self.state.write().unwrap();
        state.bytes += incoming;
        if let Some(entry) = state.segments.get_mut(&writer.segment) {
            entry.bytes = writer.len;
            entry.index_bytes += entries.len() as u64;
            entry.written = now;
        }
        Ok(Written {
            segment: writer.segment,
            file,
            end: writer.len,
            placed,
        })
    }

    /// Makes segment `segment` durable up to `end`: group commit. One caller syncs at a time;
    /// the others wait, and most find their bytes covered by that sync when it ends.
    fn sync(&self, segment: u32, file: &File, end: u64) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap();
        if *synced >= (segment, end) {
            return Ok(());
        }
        // Everything written before the sync starts is covered by it.
        let written = {
            let writer = self.writer.lock().unwrap();
            match writer.segment == segment {
                true => writer.len,
                false => end,
            }
        };
        file.sync_data()?;
        *synced = (*synced).max((segment, written));
        Ok(())
    }

    /// Takes the oldest segments (not the one being written) out of the index until `incoming`
    /// more bytes fit the bound; [`Packed::remove`] deletes their files. Nothing is evicted while
    /// the index files found at start are being read: the load evicts when they are.
    fn evict(&self, state: &mut State, incoming: u64) -> Evicted {
        self.evict_down_to(state, self.max_bytes().saturating_sub(incoming))
    }

    /// Takes the oldest segments (not the one being written) out of the index until the store
    /// holds at most `limit` bytes; nothing while the index files found at start are being read.
    fn evict_down_to(&self, state: &mut State, limit: u64) -> Evicted {
        let mut evicted = Vec::new();
        if self.stage() == Start::Loading {
            return Evicted(evicted);
        }
        while state.bytes > limit && state.segments.len() > 1 {
            let (number, segment) = state.segments.pop_first().expect("more than one");
            state.bytes -= segment.bytes + segment.index_bytes;
            let list = state.index.forget_segment(number).unwrap_or_default();
            evicted.push((number, list));
        }
        Evicted(evicted)
    }

    /// Takes evicted segments' blobs out of the table a chunk per hold of the lock, then unlinks
    /// their files, after the lock is let go: a segment can list a million blobs, freeing its
    /// blocks can take a while, and segment numbers are never used again.
    fn remove(&self, Evicted(segments): Evicted) {
        for (number, list) in segments {
            let mut at = 0;
            loop {
                let next = self
                    .state
                    .write()
                    .unwrap()
                    .index
                    .remove_stale(number, &list, at, CHUNK);
                if next == at {
                    break; // the end of the list
                }
                at = next;
            }
            for path in [
                segment_path(&self.dir, number),
                index_path(&self.dir, number),
            ] {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), "removing a segment: {e}");
                }
            }
        }
    }

    /// Number of blobs and the segments' bytes.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.state.read().unwrap();
        (state.index.len(), state.bytes)
    }

    /// The bound.
    fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Acquire)
    }

    /// How large a segment grows: the least that moves between joint bounds at a time.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    fn now(&self) -> u64 {
        secs(self.clock.now())
    }
}

fn secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Member for Packed {
    fn max_bytes(&self) -> u64 {
        Packed::max_bytes(self)
    }

    fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Release);
        let evicted = self.evict(&mut self.state.write().unwrap(), 0);
        self.remove(evicted);
    }

    fn footprint(&self) -> u64 {
        self.state.read().unwrap().bytes
    }

    /// The oldest segment's last write; the segment being written is never evicted.
    fn oldest_use(&self) -> Option<u64> {
        let state = self.state.read().unwrap();
        let oldest = state.segments.values().next()?;
        (state.segments.len() > 1).then_some(oldest.written)
    }

    /// Room for the segment being written and one more.
    fn floor(&self) -> u64 {
        2 * self.segment_bytes
    }

    fn settled(&self) -> bool {
        self.stage() != Start::Loading
    }
}

#[cfg(test)]
mod tests {
    use super::format::HEADER;
    use super::*;
    use crate::clock::SystemClock;
    use clientd_digest::DigestFunction;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    fn blob(seed: u64, len: usize) -> (Digest, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ seed as u8)
            .collect();
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    fn files(dir: &Path, extension: &str) -> usize {
        let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name());
        names.filter(|n| numbered(n, extension).is_some()).count()
    }

    fn put(packed: &Packed, blobs: &[(Digest, Vec<u8>)]) {
        let batch: Vec<(Digest, &[u8])> = blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        packed.put(&batch).unwrap();
    }

    /// A directory with `blobs` stored in it by a Packed since closed.
    fn stored(blobs: &[(Digest, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        put(
            &Packed::open(dir.path(), 1 << 30, true, clock()).unwrap(),
            blobs,
        );
        dir
    }

    fn read(packed: &Packed, digest: &Digest) -> Option<Vec<u8>> {
        packed
            .read(digest, 0, digest.size())
            .unwrap()
            .map(|b| b.to_vec())
    }

    #[test]
    fn a_blob_in_the_page_cache_is_read_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        let blobs: Vec<_> = (0..3).map(|i| blob(i, 1000)).collect();
        put(&packed, &blobs);
        let (digest, data) = &blobs[1];
        let got = packed
            .read_now(digest, 10, 100)
            .expect("just written: in the page cache");
        assert_eq!(&got[..], &data[10..110]);
        assert_eq!(packed.read_now(&blob(9, 1000).0, 0, 10), None, "absent");
        // Out of the page cache (synced, so the kernel can drop it): left to a thread that may
        // wait for the disk.
        crate::nowait::drop_cached(&segment_path(dir.path(), 0));
        assert_eq!(
            packed.read_now(digest, 0, 1000),
            None,
            "not in the page cache"
        );
        assert_eq!(read(&packed, digest).as_ref(), Some(data));
        // After a restart no blob is read this way before it has been hashed.
        drop(packed);
        let packed = Packed::open(dir.path(), 1 << 30, false, clock()).unwrap();
        if let Some(got) = packed.read_now(digest, 0, 1000) {
            assert!(packed.contains_now(digest));
            assert_eq!(&got[..], &data[..]);
        }
    }

    #[test]
    fn blobs_are_read_back_also_after_a_restart_and_ranges_too() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..100).map(|i| blob(i, 1 + i as usize * 37)).collect();
        let other = DigestFunction::Blake3.digest_of(b"blake3 blob");
        {
            let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
            put(&packed, &blobs);
            packed.put(&[(other, b"blake3 blob")]).unwrap();
            put(&packed, &blobs[..10]); // again: skipped
            for (digest, data) in &blobs {
                assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
            }
            let (digest, data) = &blobs[50];
            let middle = packed.read(digest, 10, 20).unwrap().unwrap();
            assert_eq!(&middle[..], &data[10..30]);
            assert_eq!(packed.usage().0, 101);
        }
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        for (digest, data) in &blobs {
            assert!(packed.contains(digest), "found while or after loading");
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
        assert_eq!(read(&packed, &other).unwrap(), b"blake3 blob");
        assert_eq!(read(&packed, &blob(999, 10).0), None);
        // Each start appends to a new segment.
        put(&packed, &[blob(1000, 10)]);
        assert_eq!(files(dir.path(), "pack"), 2);
        assert_eq!(
            files(dir.path(), "idx"),
            2,
            "each segment has its index file"
        );
    }

    #[test]
    fn concurrent_writers_share_syncs_across_segments_and_every_blob_survives() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 256 KiB: the writers fill several, and nothing is evicted.
        let packed = Packed::open(dir.path(), 2 << 20, true, clock()).unwrap();
        let all: Vec<Vec<_>> = (0..4u64)
            .map(|t| (0..150).map(|i| blob(t << 20 | i, 3000)).collect())
            .collect();
        std::thread::scope(|s| {
            for blobs in &all {
                let packed = &packed;
                s.spawn(move || {
                    for (digest, data) in blobs {
                        packed.put(&[(*digest, data)]).unwrap();
                        assert!(packed.contains_now(digest), "visible once put returns");
                    }
                });
            }
        });
        drop(packed);
        assert!(fs::read_dir(dir.path()).unwrap().count() > 2);
        let packed = Packed::open(dir.path(), 2 << 20, true, clock()).unwrap();
        for (digest, data) in all.iter().flatten() {
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_damaged_blob_never_served() {
        let blobs: Vec<_> = (0..10).map(|i| blob(i, 500)).collect();
        let dir = stored(&blobs);
        let path = segment_path(dir.path(), 0);
        let whole = fs::metadata(&path).unwrap().len();
        // A record cut short (power loss mid-write), and a record whose bytes do not hash to its
        // digest (garbage).
        let (torn, data) = blob(77, 500);
        let mut record = Vec::new();
        encode(&torn, &data, &mut record);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&record[..record.len() - 1]);
        fs::write(&path, &bytes).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        packed.wait_for(Start::Done);
        assert!(!packed.contains(&torn));
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            whole,
            "cut at the last whole blob"
        );
        for (digest, data) in &blobs {
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
        drop(packed);
        // A damaged blob in the middle is skipped, and the blobs after it are kept.
        let mut bytes = fs::read(&path).unwrap();
        let second = HEADER + 32 + 500 + HEADER + 32;
        bytes[second + 7] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        packed.wait_for(Start::Done);
        assert!(!packed.contains(&blobs[1].0));
        assert_eq!(packed.usage().0, 9);
        assert!(read(&packed, &blobs[9].0) == Some(blobs[9].1.clone()));
    }

    #[test]
    fn the_bound_holds_on_real_bytes_and_blobs_in_use_survive() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 2 << 20; // segments of 256 KiB
        let packed = Packed::open(dir.path(), bound, false, clock()).unwrap();
        packed.wait_for(Start::Done);
        let kept = blob(0, 4000);
        put(&packed, std::slice::from_ref(&kept));
        let mut first = None;
        for i in 1..2000u64 {
            let (digest, data) = blob(i, 4000);
            first.get_or_insert(digest);
            packed.put(&[(digest, &data)]).unwrap();
            // Read now and then: refreshed before its segment goes.
            if i % 50 == 0 {
                assert!(
                    read(&packed, &kept.0) == Some(kept.1.clone()),
                    "kept blob at {i}"
                );
            }
            let on_disk: u64 = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(on_disk <= bound, "{on_disk} bytes on disk");
            assert_eq!(packed.usage().1, on_disk);
        }
        assert!(!packed.contains(&first.unwrap()), "the oldest went");
        assert!(packed.contains(&kept.0), "the blob in use stayed");
        assert!(packed.contains(&blob(1999, 4000).0));
        // The evicted blobs' slots are gone from the table too.
        let present = (0..2000u64).filter(|&i| packed.contains_now(&blob(i, 4000).0));
        assert_eq!(packed.usage().0, present.count());
    }

    #[test]
    fn start_up_reads_index_files_and_a_lagging_one_is_completed_from_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..200).map(|i| blob(i, 100 + i as usize)).collect();
        {
            let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
            put(&packed, &blobs[..100]);
            put(&packed, &blobs[100..]);
        }
        let index = index_path(dir.path(), 0);
        let whole = fs::read(&index).unwrap();
        // Lost at a crash: the second batch's entries and a few bytes of the first's.
        fs::write(&index, &whole[..whole.len() / 2 - 5]).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        for (digest, data) in &blobs {
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
        packed.wait_for(Start::Done);
        assert_eq!(fs::read(&index).unwrap(), whole, "rewritten whole");
        let (n, bytes) = packed.usage();
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!((n, bytes), (200, on_disk), "index files count in the bound");
        drop(packed);
        // No index file at all (a cache from before they existed): one is written.
        fs::remove_file(&index).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        packed.wait_for(Start::Done);
        assert_eq!(fs::read(&index).unwrap(), whole);
        assert_eq!(packed.usage().0, 200);
    }

    #[test]
    fn a_blob_the_index_file_lists_is_verified_before_it_is_served_or_reported() {
        let blobs: Vec<_> = (0..50).map(|i| blob(i, 300)).collect();
        let dir = stored(&blobs);
        // A bad disk block under blob 10's bytes, and a bit flipped in blob 20's index entry.
        let segment = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&segment).unwrap();
        let record = HEADER + 32 + 300;
        bytes[10 * record + HEADER + 32 + 7] ^= 1;
        fs::write(&segment, &bytes).unwrap();
        let index = index_path(dir.path(), 0);
        let mut entries = fs::read(&index).unwrap();
        entries[20 * (16 + 32) + 16 + 3] ^= 1;
        fs::write(&index, &entries).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        // Asked for whether or not the thread at start has reached it: refused either way.
        assert!(!packed.contains(&blobs[10].0));
        assert_eq!(read(&packed, &blobs[10].0), None);
        assert!(read(&packed, &blobs[11].0) == Some(blobs[11].1.clone()));
        packed.wait_for(Start::Done);
        assert!(!packed.contains(&blobs[10].0));
        assert!(packed.contains_now(&blobs[11].0), "verified by the thread");
        // The blob whose entry was garbled is found by reading the segment, and nothing is
        // served under the garbled digest.
        assert!(read(&packed, &blobs[20].0) == Some(blobs[20].1.clone()));
        assert_eq!(packed.usage().0, 49);
    }

    #[test]
    fn blobs_read_together_come_back_in_order_whatever_their_segment_or_state() {
        // Segment 0, written by an earlier run: not verified yet after the restart, and blob 10's
        // bytes damaged on the disk. Segment 1: verified as written.
        let old: Vec<_> = (0..30).map(|i| blob(i, 300)).collect();
        let dir = stored(&old);
        let segment = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&segment).unwrap();
        bytes[10 * (HEADER + 32 + 300) + HEADER + 32 + 7] ^= 1;
        fs::write(&segment, &bytes).unwrap();
        let packed = Packed::open(dir.path(), 1 << 30, true, clock()).unwrap();
        let new: Vec<_> = (100..130)
            .map(|i| blob(i, 1 + i as usize * 53 % 4000))
            .collect();
        put(&packed, &new);
        let absent = blob(999, 10).0;
        // Interleaved, repeated, absent, in reverse order of writing.
        let mut asked: Vec<Digest> = Vec::new();
        for i in (0..30).rev() {
            asked.extend([new[i].0, old[i].0]);
        }
        asked.extend([new[3].0, absent, old[3].0]);
        let expected = |digest: &Digest| {
            (*digest != old[10].0)
                .then(|| old.iter().chain(&new).find(|(d, _)| d == digest))
                .flatten()
                .map(|(_, data)| data.clone())
        };
        for round in 0..2 {
            let got = packed.read_together(&asked);
            assert_eq!(got.len(), asked.len());
            for (digest, got) in asked.iter().zip(got) {
                let got = got.unwrap().map(|b| b.to_vec());
                assert!(got == expected(digest), "round {round}: {digest}");
            }
            packed.wait_for(Start::Done); // the second round: every blob verified
        }
    }

    /// The bound set from the bytes counted at open (as a joint bound sets it), and an index file
    /// behind its segment (a crash between writing blobs and listing them): completing the index
    /// file adds bytes, and that evicts nothing.
    #[test]
    fn completing_a_lagging_index_file_at_start_evicts_nothing() {
        let blobs: Vec<_> = (0..600).map(|i| blob(i, 2000 + i as usize)).collect();
        let dir = tempfile::tempdir().unwrap();
        {
            let packed = Packed::open(dir.path(), 4 << 20, true, clock()).unwrap();
            for chunk in blobs.chunks(10) {
                put(&packed, chunk);
            }
        }
        assert!(files(dir.path(), "pack") >= 3);
        let newest = (0..)
            .take_while(|n| index_path(dir.path(), *n).exists())
            .last()
            .unwrap();
        let index = index_path(dir.path(), newest);
        let len = fs::metadata(&index).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let packed = Packed::open(dir.path(), on_disk, true, clock()).unwrap();
        packed.wait_for(Start::Done);
        for (digest, data) in &blobs {
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
        assert_eq!(packed.usage().0, blobs.len());
    }
}
