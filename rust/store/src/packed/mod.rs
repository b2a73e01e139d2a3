//! Small blobs packed into append-only segment files, in the spirit of Buildbarn's block-device
//! blob access: a file per 100-byte blob costs a 4 KiB block, an inode and an fsync, so a cache
//! of small blobs occupies many times its size and stores a few thousand blobs a second.
//!
//! The rules that keep it safe:
//! - Segments are `<seq>.pack` (16 hex digits), written only by appending. A batch of blobs is one
//!   `pwrite` and (with `sync_writes`) one `fdatasync`, shared with the batches written while it
//!   waited (group commit), and becomes visible to readers only after both: nobody reads a blob
//!   that a crash could take back. A full segment is synced before the next one starts.
//! - Each record carries its digest, and a blob is indexed at start only if its bytes hash to
//!   it: a damaged one is never served. A torn tail (power loss before a sync) ends the segment
//!   there and is cut off. Each start writes to a new segment, so old ones are never appended to
//!   again.
//! - The bound counts the segments' real bytes. When a batch would pass it, the oldest segment is
//!   deleted with every blob in it (an open file stays readable, so a reader in flight is not cut
//!   short). A read of a blob whose segment goes within the next quarter of the bound copies it
//!   to the newest, so blobs in use survive (LRU, approximately, at a segment's granularity).
//! - At start only the directory is listed; a thread reads the segments and indexes their blobs.
//!   Until it is done, a lookup of a blob the index lacks waits for it, so a committed blob is
//!   never reported missing.

use crate::error::{StoreError, StoreResult};
use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// Blobs up to this size are packed; larger ones get a file each (where a block's waste is at
/// most a quarter, and reads stream).
pub const PACKED_MAX_BLOB: u64 = 16 << 10;

/// `cdp1`: the start of every record.
const MAGIC: [u8; 4] = *b"cdp1";
/// Magic, digest function, three bytes of padding, the blob's length (u32, little-endian).
const HEADER: usize = 12;

/// What an append is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Append {
    /// New blobs: those already here are skipped, and the rest synced if so configured.
    Store,
    /// A copy of a blob in an old segment, to the newest, not synced (the original is).
    Refresh,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
    /// The blobs indexed in it (some may since have been indexed in a newer segment).
    keys: Vec<Digest>,
}

struct State {
    index: HashMap<Digest, Location>,
    /// Oldest first; the last one is being appended to (once its first write created it).
    segments: BTreeMap<u64, Segment>,
    bytes: u64,
}

/// Blobs just written to a segment, not visible yet.
struct Written {
    segment: u64,
    file: Arc<File>,
    /// The segment's length after them.
    end: u64,
    /// Each blob, and where its bytes start.
    placed: Vec<(Digest, u64)>,
}

/// The segment being appended to: its number and length.
struct Writer {
    segment: u64,
    len: u64,
    /// Whether its file exists: it is created by the first write, so a start costs no sync.
    created: bool,
}

pub struct Packed {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    sync_writes: bool,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    /// (segment, length) up to which the segments are synced (held while syncing).
    synced: Mutex<(u64, u64)>,
    /// True until the segments found at start are indexed.
    loading: Mutex<bool>,
    loaded: Condvar,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.pack"))
}

fn function_code(function: DigestFunction) -> u8 {
    DigestFunction::ALL
        .iter()
        .position(|f| *f == function)
        .expect("every function is in ALL") as u8
}

/// One record: header, hash, bytes.
fn encode(digest: &Digest, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[function_code(digest.function()), 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(digest.hash());
    out.extend_from_slice(data);
}

/// The records of a segment's bytes that verify, with where each blob's bytes start, and the
/// length of the whole records: a torn record, or a header that is not one, ends them; a whole
/// record whose bytes do not hash to its digest (a damaged disk block) is skipped.
fn decode(bytes: &[u8]) -> (Vec<(Digest, u64)>, u64) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let function = DigestFunction::ALL.get(header[4] as usize);
        let (Some(function), true) = (function, header[..4] == MAGIC) else {
            break;
        };
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let hash_at = at + HEADER;
        let data_at = hash_at + function.hash_len();
        let Some(data) = bytes.get(data_at..data_at + len) else {
            break;
        };
        let digest = function.digest_of(data);
        if digest.hash() == &bytes[hash_at..data_at] {
            found.push((digest, data_at as u64));
        }
        at = data_at + len;
    }
    (found, at as u64)
}

impl Packed {
    /// Opens (creating) the segments in `dir`, bounded to `max_bytes`; a thread indexes the
    /// segments found there.
    pub fn open(dir: &Path, max_bytes: u64, sync_writes: bool) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            let Some(number) = number else {
                continue;
            };
            let file = File::open(entry.path())?;
            let len = file.metadata()?.len();
            bytes += len;
            segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    bytes: len,
                    keys: Vec::new(),
                },
            );
        }
        let found: Vec<u64> = segments.keys().copied().collect();
        let first = found.last().map_or(0, |n| n + 1);
        let packed = Arc::new(Packed {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(256 << 10, 64 << 20),
            sync_writes,
            state: RwLock::new(State {
                index: HashMap::new(),
                segments,
                bytes,
            }),
            writer: Mutex::new(Writer {
                segment: first,
                len: 0,
                created: false,
            }),
            synced: Mutex::new((0, 0)),
            loading: Mutex::new(true),
            loaded: Condvar::new(),
        });
        let loader = packed.clone();
        std::thread::Builder::new()
            .name("packed-load".into())
            .spawn(move || loader.load(&found))?;
        Ok(packed)
    }

    fn create_segment(&self, number: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(&self.dir, number))?;
        if self.sync_writes {
            File::open(&self.dir)?.sync_all()?; // the new name survives power loss
        }
        self.state.write().unwrap().segments.insert(
            number,
            Segment {
                file: Arc::new(file),
                bytes: 0,
                keys: Vec::new(),
            },
        );
        Ok(())
    }

    /// Indexes the segments found at start, oldest first: each record that verifies; a torn tail
    /// is cut off.
    fn load(&self, found: &[u64]) {
        for &number in found {
            if let Err(e) = self.load_segment(number) {
                tracing::warn!(dir = %self.dir.display(), "segment {number:016x}: {e}; its blobs are not used");
            }
        }
        *self.loading.lock().unwrap() = false;
        self.loaded.notify_all();
        let mut state = self.state.write().unwrap();
        self.evict(&mut state, 0);
    }

    fn load_segment(&self, number: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, number);
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let (records, valid) = decode(&bytes);
        if valid < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), "cut off {} bytes after the last whole blob", bytes.len() as u64 - valid);
            OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
        }
        let mut state = self.state.write().unwrap();
        let State {
            index,
            segments,
            bytes: total,
        } = &mut *state;
        let Some(segment) = segments.get_mut(&number) else {
            return Ok(()); // evicted meanwhile
        };
        *total -= segment.bytes - valid;
        segment.bytes = valid;
        for (digest, offset) in records {
            if index.contains_key(&digest) {
                continue; // written again since start
            }
            index.insert(
                digest,
                Location {
                    segment: number,
                    offset,
                },
            );
            segment.keys.push(digest);
        }
        Ok(())
    }

    /// Where `digest` is, waiting for the load at start when the index lacks it.
    fn locate(&self, digest: &Digest) -> Option<(Location, Arc<File>, bool)> {
        let lookup = || {
            let state = self.state.read().unwrap();
            let location = *state.index.get(digest)?;
            let file = state.segments[&location.segment].file.clone();
            // Old: its segment goes once less than a quarter of the bound more is written. While
            // a quarter of the bound is free no blob is, and the segments need not be summed.
            let quarter = self.max_bytes / 4;
            let free = self.max_bytes.saturating_sub(state.bytes);
            let newest = state.segments.keys().next_back() == Some(&location.segment);
            let old = !newest
                && free < quarter
                && free
                    + state
                        .segments
                        .range(..=location.segment)
                        .map(|(_, s)| s.bytes)
                        .sum::<u64>()
                    < quarter;
            Some((location, file, old))
        };
        if let Some(found) = lookup() {
            return Some(found);
        }
        if !self.loading() {
            return None;
        }
        self.wait_loaded();
        lookup()
    }

    /// Whether the blob is here, waiting for the index at start if it lacks the blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.locate(digest).is_some()
    }

    /// Whether the index has the blob now (never waits).
    pub fn contains_now(&self, digest: &Digest) -> bool {
        self.state.read().unwrap().index.contains_key(digest)
    }

    /// Whether the segments found at start are still being indexed.
    pub fn loading(&self) -> bool {
        *self.loading.lock().unwrap()
    }

    /// `len` bytes of the blob from `offset` (the caller checks the range); None if absent.
    pub fn read(&self, digest: &Digest, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        let Some((location, file, old)) = self.locate(digest) else {
            return Ok(None);
        };
        let io_error = |e| StoreError::io(format!("reading packed blob {digest}"), e);
        if old {
            // Copied to the newest segment before the oldest go; the copy needs no sync (the
            // original is synced, and a torn copy is cut off at start).
            let mut data = vec![0; digest.size() as usize];
            file.read_exact_at(&mut data, location.offset)
                .map_err(io_error)?;
            if let Err(e) = self.append(&[(*digest, &data)], Append::Refresh) {
                tracing::debug!("refreshing packed blob {digest}: {e}");
            }
            let end = (offset + len) as usize;
            return Ok(Some(Bytes::from(data).slice(offset as usize..end)));
        }
        let mut data = vec![0; len as usize];
        file.read_exact_at(&mut data, location.offset + offset)
            .map_err(io_error)?;
        Ok(Some(Bytes::from(data)))
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
            let State {
                index, segments, ..
            } = &mut *state;
            let Some(entry) = segments.get_mut(&segment) else {
                continue; // evicted already (a bound smaller than a few batches)
            };
            for &(digest, offset) in &placed {
                index.insert(digest, Location { segment, offset });
            }
            entry.keys.extend(placed.iter().map(|(digest, _)| *digest));
        }
        Ok(())
    }

    /// Writes as many of `pending` as fit in the segment being written (at least one), starting
    /// a new segment first when it is full. The blobs are not visible yet.
    fn write_some<'a>(
        &self,
        pending: &mut std::iter::Peekable<impl Iterator<Item = &'a (Digest, &'a [u8])>>,
    ) -> io::Result<Written> {
        let mut writer = self.writer.lock().unwrap();
        if writer.created && writer.len >= self.segment_bytes {
            if self.sync_writes {
                // Sealed synced: a sync of a newer segment then covers every older one.
                let state = self.state.read().unwrap();
                state.segments[&writer.segment].file.sync_data()?;
            }
            *writer = Writer {
                segment: writer.segment + 1,
                len: 0,
                created: false,
            };
        }
        if !writer.created {
            self.create_segment(writer.segment)?;
            writer.created = true;
        }
        let mut records = Vec::new();
        let mut placed = Vec::new();
        while let Some((digest, data)) = pending.peek() {
            let data_at = records.len() + HEADER + digest.hash().len();
            let end = writer.len + (data_at + data.len()) as u64;
            if !records.is_empty() && end > self.segment_bytes {
                break;
            }
            let data_at = writer.len + data_at as u64;
            encode(digest, data, &mut records);
            placed.push((*digest, data_at));
            pending.next();
        }
        let n = records.len() as u64;
        let file = {
            let mut state = self.state.write().unwrap();
            self.evict(&mut state, n);
            state.segments[&writer.segment].file.clone()
        };
        file.write_all_at(&records, writer.len)?;
        writer.len += n;
        let mut state = self.state.write().unwrap();
        state.bytes += n;
        if let Some(entry) = state.segments.get_mut(&writer.segment) {
            entry.bytes = writer.len;
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
    fn sync(&self, segment: u64, file: &File, end: u64) -> io::Result<()> {
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

    /// Deletes the oldest segments (not the one being written) until `incoming` more bytes fit
    /// the bound. Nothing is deleted while the segments found at start are being indexed: the
    /// load evicts when it ends.
    fn evict(&self, state: &mut State, incoming: u64) {
        if *self.loading.lock().unwrap() {
            return;
        }
        while state.bytes + incoming > self.max_bytes && state.segments.len() > 1 {
            let (number, segment) = state.segments.pop_first().expect("more than one");
            state.bytes -= segment.bytes;
            for key in &segment.keys {
                if state.index.get(key).is_some_and(|l| l.segment == number) {
                    state.index.remove(key);
                }
            }
            if let Err(e) = fs::remove_file(segment_path(&self.dir, number)) {
                tracing::warn!(dir = %self.dir.display(), "removing segment {number:016x}: {e}");
            }
        }
    }

    /// Number of blobs and the segments' bytes.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.state.read().unwrap();
        (state.index.len(), state.bytes)
    }

    /// Waits until the segments found at start are indexed.
    fn wait_loaded(&self) {
        let mut loading = self.loading.lock().unwrap();
        while *loading {
            loading = self.loaded.wait(loading).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(seed: u64, len: usize) -> (Digest, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ seed as u8)
            .collect();
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    fn put(packed: &Packed, blobs: &[(Digest, Vec<u8>)]) {
        let batch: Vec<(Digest, &[u8])> = blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        packed.put(&batch).unwrap();
    }

    fn read(packed: &Packed, digest: &Digest) -> Option<Vec<u8>> {
        packed
            .read(digest, 0, digest.size())
            .unwrap()
            .map(|b| b.to_vec())
    }

    #[test]
    fn blobs_are_read_back_also_after_a_restart_and_ranges_too() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..100).map(|i| blob(i, 1 + i as usize * 37)).collect();
        let other = DigestFunction::Blake3.digest_of(b"blake3 blob");
        {
            let packed = Packed::open(dir.path(), 1 << 30, true).unwrap();
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
        let packed = Packed::open(dir.path(), 1 << 30, true).unwrap();
        for (digest, data) in &blobs {
            assert!(packed.contains(digest), "found while or after loading");
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
        assert_eq!(read(&packed, &other).unwrap(), b"blake3 blob");
        assert_eq!(read(&packed, &blob(999, 10).0), None);
        // Each start appends to a new segment.
        put(&packed, &[blob(1000, 10)]);
        let segments = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments, 2);
    }

    #[test]
    fn concurrent_writers_share_syncs_across_segments_and_every_blob_survives() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 256 KiB: the writers fill several, and nothing is evicted.
        let packed = Packed::open(dir.path(), 2 << 20, true).unwrap();
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
        let packed = Packed::open(dir.path(), 2 << 20, true).unwrap();
        for (digest, data) in all.iter().flatten() {
            assert!(read(&packed, digest).as_ref() == Some(data), "{digest}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_damaged_blob_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..10).map(|i| blob(i, 500)).collect();
        {
            let packed = Packed::open(dir.path(), 1 << 30, true).unwrap();
            put(&packed, &blobs);
        }
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
        let packed = Packed::open(dir.path(), 1 << 30, true).unwrap();
        packed.wait_loaded();
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
        let packed = Packed::open(dir.path(), 1 << 30, true).unwrap();
        packed.wait_loaded();
        assert!(!packed.contains(&blobs[1].0));
        assert_eq!(packed.usage().0, 9);
        assert!(read(&packed, &blobs[9].0) == Some(blobs[9].1.clone()));
    }

    #[test]
    fn the_bound_holds_on_real_bytes_and_blobs_in_use_survive() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 2 << 20; // segments of 256 KiB
        let packed = Packed::open(dir.path(), bound, false).unwrap();
        packed.wait_loaded();
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
    }
}
