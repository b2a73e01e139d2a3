//! A bounded directory of immutable files with an in-memory LRU index.
//!
//! Both the local CAS and the local action cache are one of these. The rules that keep it safe:
//! - A file appears under its final name only by `rename(2)` of a fully written (and, if
//!   configured, fsynced) temporary file, so no reader ever sees a partial entry, and a crash leaves
//!   at worst a stray temporary file, removed at the next start.
//! - No system call runs under the index lock, which every lookup takes (freeing a large file's
//!   blocks on eviction can take milliseconds). An entry enters the index only once its file is
//!   renamed into place, and leaves it before its file is unlinked; while either is under way
//!   the key is busy, and a write of it waits, so the index and the directory agree even when a
//!   blob is evicted and written again at once.
//! - Readers open files and read outside the lock. Eviction unlinks, and an open file stays
//!   readable until closed: a blob being read is never deleted under its reader.
//! - At start the directory is scanned (names and sizes, no hashing) and ordered by mtime, which
//!   reads refresh at most every [`TOUCH_INTERVAL`], so LRU order survives restarts. The scan runs
//!   in the background, so the store answers at once whatever it holds: until it ends, a key the
//!   index lacks is looked up on disk, and eviction waits for the scan's byte count.
//! - Every byte on disk counts against the bound: an entry being written holds a [`Reservation`]
//!   of its footprint ([`DiskKey::footprint`]: whole blocks, for the caches) from before its first
//!   byte until it is inserted or abandoned.

use crate::clock::Clock;
use crate::error::{StoreError, StoreResult};
use crate::joint_bound::Member;
use crate::nowait::open_cached;
use lru::LruCache;
use std::collections::HashSet;
use std::fs::{self, File};
use std::hash::Hash;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::NamedTempFile;

/// How stale a file's mtime may get before a read refreshes it.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(600);

/// Entries indexed per hold of the index lock while loading, so requests interleave with the scan.
const LOAD_CHUNK: usize = 4096;

/// A key that names an entry's file under the store's root, and back.
pub trait DiskKey: Clone + Eq + Hash + Send + Sync + 'static {
    /// Relative path of the entry's file, e.g. `sha256/e3/e3b0...-0`.
    fn rel_path(&self) -> PathBuf;
    /// Inverse of [`DiskKey::rel_path`]; None for a file that is not an entry.
    fn from_rel_path(path: &Path) -> Option<Self>;
    /// The file length the key implies, if it implies one (CAS blobs do); a file of another length
    /// found at start (a torn write after power loss) is dropped.
    fn expected_len(&self) -> Option<u64> {
        None
    }
    /// Whether equal keys always mean equal content (CAS), so a second insert is discarded; when
    /// false (action cache) a second insert replaces the entry.
    const IMMUTABLE: bool = true;
    /// What an entry of `len` bytes counts against the bound: by default its length; the caches
    /// count the whole blocks its file occupies ([`in_blocks`]), so the bound holds on the disk.
    fn footprint(len: u64) -> u64 {
        len
    }
}

/// The file system block the caches' files are allocated in.
pub const BLOCK_BYTES: u64 = 4096;

/// `len` rounded up to whole [`BLOCK_BYTES`]: the disk space a file of `len` bytes occupies.
pub fn in_blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

#[derive(Debug, Clone, Copy)]
pub struct DiskLruOptions {
    /// Bound on the bytes of all entries together; the least recently used go first.
    pub max_bytes: u64,
    /// fsync each file before renaming it into place, so that after a power loss an entry is whole
    /// or absent, never torn (the rename is not synced: the newest entries can be lost).
    pub sync_writes: bool,
}

struct Entry {
    /// Its footprint ([`DiskKey::footprint`]).
    len: u64,
    /// Seconds since the epoch when the file's mtime was last set.
    touched: u64,
}

struct Index<K: DiskKey> {
    lru: LruCache<K, Entry>,
    bytes: u64,
    /// Keys whose files are being renamed into place or unlinked, outside the lock: a write of
    /// one waits until that is done.
    busy: HashSet<K>,
}

pub struct DiskLru<K: DiskKey> {
    root: PathBuf,
    tmp: PathBuf,
    options: DiskLruOptions,
    clock: Arc<dyn Clock>,
    index: Mutex<Index<K>>,
    /// Told when keys stop being busy.
    settled: Condvar,
    /// Bytes reserved by entries being written; they count against the bound with the entries.
    reserved: Arc<AtomicU64>,
    /// True until the entries found on disk at start are all in the index.
    loading: AtomicBool,
    /// The bound: `options.max_bytes` at first, moved by a [`JointBound`] the store is part of.
    ///
    /// [`JointBound`]: crate::joint_bound::JointBound
    max_bytes: AtomicU64,
}

/// Room for an entry being written, taken from the store's bound before its first byte. Dropping
/// it (an abandoned write) gives the room back; [`DiskLru::insert`] turns it into the entry's own.
#[must_use]
pub struct Reservation {
    reserved: Arc<AtomicU64>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl<K: DiskKey> DiskLru<K> {
    /// Opens (creating if needed) the store at `root`: removes leftover temporary files, and
    /// starts rebuilding the index from the files present on a thread of its own.
    pub fn open(
        root: &Path,
        options: DiskLruOptions,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Arc<Self>> {
        let store = Self::open_unloaded(root, options, clock)?;
        let loader = store.clone();
        std::thread::Builder::new()
            .name("index-load".into())
            .spawn(move || loader.load())?;
        Ok(store)
    }

    /// The store with an empty index, loading: [`DiskLru::load`] has yet to run.
    fn open_unloaded(
        root: &Path,
        options: DiskLruOptions,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Arc<Self>> {
        let tmp = root.join("tmp");
        let entries = root.join("entries");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        fs::create_dir_all(&entries)?;
        let store = Arc::new(DiskLru {
            root: entries,
            tmp,
            options,
            clock,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
                busy: HashSet::new(),
            }),
            settled: Condvar::new(),
            reserved: Arc::new(AtomicU64::new(0)),
            loading: AtomicBool::new(true),
            max_bytes: AtomicU64::new(options.max_bytes),
        });
        Ok(store)
    }

    /// Indexes the entries on disk, oldest last in LRU order and behind every entry written since
    /// start; drops files that are not valid entries; then evicts down to the bound.
    fn load(&self) {
        let start = std::time::Instant::now();
        let mut found = Vec::new();
        if let Err(e) = scan(&self.root, &mut found) {
            tracing::warn!(root = %self.root.display(), "scanning the store: {e}; entries not found are not used");
        }
        // Newest first, each moved to the LRU end: the oldest ends up evicted first.
        found.sort_by_key(|(_, _, mtime)| std::cmp::Reverse(*mtime));
        let mut junk = Vec::new();
        for chunk in found.chunks(LOAD_CHUNK) {
            let mut index = self.index.lock().unwrap();
            for (path, len, mtime) in chunk {
                let rel = path.strip_prefix(&self.root).expect("scanned below root");
                match K::from_rel_path(rel) {
                    Some(key) if key.expected_len().is_none_or(|want| want == *len) => {
                        if index.lru.contains(&key) || index.busy.contains(&key) {
                            continue; // written again since start, or being written
                        }
                        let len = K::footprint(*len);
                        index.bytes += len;
                        let touched = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        index.lru.put(key.clone(), Entry { len, touched });
                        index.lru.demote(&key);
                    }
                    _ => junk.push(path),
                }
            }
        }
        for path in &junk {
            let _ = fs::remove_file(path);
        }
        if !junk.is_empty() {
            tracing::warn!(root = %self.root.display(), dropped = junk.len(), "removed files that are not valid entries");
        }
        let index = self.index.lock().unwrap();
        self.loading.store(false, Ordering::Release);
        tracing::debug!(root = %self.root.display(), entries = index.lru.len(), bytes = index.bytes, "indexed in {:?}", start.elapsed());
        self.evict(index);
    }

    /// Whether the scan at start is still running.
    fn loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// Waits for the scan at start to end.
    #[cfg(test)]
    fn wait_loaded(&self) {
        while self.loading() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The file of an entry the index does not have yet, if it is on disk: asked when the index
    /// missed it while the scan at start was running (read before the index: the scan may have
    /// indexed it and ended since).
    fn unindexed(&self, key: &K) -> Option<File> {
        let file = File::open(self.root.join(key.rel_path())).ok()?;
        let len = file.metadata().ok()?.len();
        key.expected_len()
            .is_none_or(|want| want == len)
            .then_some(file)
    }

    /// Reserves room for an entry of `len` bytes about to be written, evicting the least recently
    /// used entries to make it. RESOURCE_EXHAUSTED, before anything is written, when `len` exceeds
    /// the bound or the room is held by other writes in progress.
    pub fn reserve(&self, len: u64) -> StoreResult<Reservation> {
        let len = K::footprint(len);
        let max = self.max_bytes();
        if len > max {
            return Err(StoreError::ResourceExhausted(format!(
                "{len} bytes do not fit in the store's bound of {max} bytes"
            )));
        }
        let index = self.index.lock().unwrap();
        let held = self.reserved.load(Ordering::Acquire);
        if held.saturating_add(len) > max {
            return Err(StoreError::ResourceExhausted(format!(
                "writes in progress hold {held} of the store's {max} bytes; {len} more do not fit"
            )));
        }
        let reservation = self.hold(len);
        self.evict(index);
        Ok(reservation)
    }

    /// Reserves room for `len` bytes only if it is free already: nothing is evicted, so no file
    /// is unlinked and the caller need not be on a thread that may block. None otherwise.
    pub fn reserve_free(&self, len: u64) -> Option<Reservation> {
        let len = K::footprint(len);
        let index = self.index.lock().unwrap();
        let held = self.reserved.load(Ordering::Acquire);
        (index.bytes + held + len <= self.max_bytes()).then(|| self.hold(len))
    }

    /// Counts `len` more bytes as reserved (under the index lock).
    fn hold(&self, len: u64) -> Reservation {
        self.reserved.fetch_add(len, Ordering::AcqRel);
        Reservation {
            reserved: self.reserved.clone(),
            len,
        }
    }

    /// The directory the entries' files are in (their [`DiskKey::rel_path`]s are relative to it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes reserved by writes in progress.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// A temporary file in the store's own directory (same file system, so rename works).
    pub fn temp_file(&self) -> StoreResult<NamedTempFile> {
        NamedTempFile::new_in(&self.tmp).map_err(|e| StoreError::io("creating a temporary file", e))
    }

    /// Starts writing `len` bytes at `offset` of a temporary file to the disk, without waiting, when
    /// entries are synced: a large file's fsync in `insert` then has only its tail left to write.
    pub fn start_writeback(&self, file: &NamedTempFile, offset: u64, len: u64) {
        if self.options.sync_writes {
            // SAFETY: a valid open descriptor; the call only schedules writeback. Failure is
            // harmless: the fsync in `insert` writes whatever is left, and reports errors.
            unsafe {
                libc::sync_file_range(
                    file.as_file().as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
    }

    /// Makes `file` the entry for `key`, in the room `reservation` held for it. If the key is
    /// already present, an immutable key's new file is discarded (equal keys mean equal content);
    /// a mutable key's entry is replaced atomically.
    pub fn insert(
        &self,
        key: &K,
        file: NamedTempFile,
        reservation: Reservation,
    ) -> StoreResult<()> {
        let what = || format!("storing {}", key.rel_path().display());
        let len = K::footprint(
            file.as_file()
                .metadata()
                .map_err(|e| StoreError::io(what(), e))?
                .len(),
        );
        if len > self.max_bytes() {
            return Err(StoreError::ResourceExhausted(format!(
                "{} is {len} bytes, more than the store's bound of {} bytes",
                key.rel_path().display(),
                self.max_bytes()
            )));
        }
        if self.options.sync_writes {
            file.as_file()
                .sync_data()
                .map_err(|e| StoreError::io(what(), e))?;
        }
        let path = self.root.join(key.rel_path());
        let mut index = self.index.lock().unwrap();
        while index.busy.contains(key) {
            index = self.settled.wait(index).unwrap();
        }
        if let Some(old) = index.lru.get(key) {
            if K::IMMUTABLE {
                return Ok(());
            }
            // Replaced: absent from the index until the new file is in place.
            let old_len = old.len;
            index.bytes -= old_len;
            index.lru.pop(key);
        }
        index.busy.insert(key.clone());
        drop(index);
        let placed = place(file, &path).map_err(|e| StoreError::io(what(), e));
        let mut index = self.index.lock().unwrap();
        index.busy.remove(key);
        self.settled.notify_all();
        placed?;
        let touched = self.now_secs();
        index.bytes += len;
        index.lru.put(key.clone(), Entry { len, touched });
        drop(reservation);
        self.evict(index);
        Ok(())
    }

    /// Opens the entry for reading, marking it recently used. None if absent.
    pub fn open_file(&self, key: &K) -> StoreResult<Option<File>> {
        let now = self.now_secs();
        let loading = self.loading();
        let touch = {
            let mut index = self.index.lock().unwrap();
            match index.lru.get_mut(key) {
                None => {
                    drop(index);
                    return Ok(loading.then(|| self.unindexed(key)).flatten());
                }
                Some(entry) if now.saturating_sub(entry.touched) >= TOUCH_INTERVAL.as_secs() => {
                    entry.touched = now;
                    true
                }
                Some(_) => false,
            }
        };
        let path = self.root.join(key.rel_path());
        match File::open(&path) {
            Ok(file) => {
                if touch {
                    // Best effort: a failed refresh only makes the order after a restart less exact.
                    let _ = file.set_modified(self.clock.now());
                }
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed behind our back (by hand, or evicted between lookup and open): forget it.
                self.forget(key);
                Ok(None)
            }
            Err(e) => Err(StoreError::io(format!("opening {}", path.display()), e)),
        }
    }

    /// [`DiskLru::open_file`] if it can be done without waiting for the disk: the index loaded,
    /// the entry's use not due to be written to its file's mtime, and the path's lookup in the
    /// kernel's caches ([`open_cached`]). None when it cannot: `open_file` then answers, on a
    /// thread that may wait. Some(None) when the entry is absent.
    pub fn open_file_now(&self, key: &K) -> Option<Option<File>> {
        if self.loading() {
            return None;
        }
        let now = self.now_secs();
        match self.index.lock().unwrap().lru.get(key) {
            None => return Some(None),
            Some(entry) if now.saturating_sub(entry.touched) >= TOUCH_INTERVAL.as_secs() => {
                return None
            }
            Some(_) => {}
        }
        match open_cached(&self.root.join(key.rel_path())) {
            Ok(file) => Some(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(key); // as open_file does
                Some(None)
            }
            Err(_) => None, // would wait, or failed: open_file says which
        }
    }

    /// For each key, whether it is present; present ones count as recently used.
    pub fn contains(&self, keys: &[K]) -> Vec<bool> {
        let loading = self.loading();
        let mut present: Vec<bool> = {
            let mut index = self.index.lock().unwrap();
            keys.iter().map(|k| index.lru.get(k).is_some()).collect()
        };
        if loading {
            for (key, present) in keys.iter().zip(&mut present) {
                *present = *present || self.unindexed(key).is_some();
            }
        }
        present
    }

    /// [`DiskLru::contains`] from the index alone, for callers that must not wait for the file
    /// system; None while the scan at start runs (absent keys are then looked for on disk).
    pub fn contains_now(&self, keys: &[K]) -> Option<Vec<bool>> {
        // Once over, the scan stays over: contains then asks the index alone.
        (!self.loading()).then(|| self.contains(keys))
    }

    /// Removes an entry from the index only (its file is already gone).
    fn forget(&self, key: &K) {
        let mut index = self.index.lock().unwrap();
        if let Some(entry) = index.lru.pop(key) {
            index.bytes -= entry.len;
        }
    }

    /// Number of entries and their total bytes.
    pub fn usage(&self) -> (usize, u64) {
        let index = self.index.lock().unwrap();
        (index.lru.len(), index.bytes)
    }

    /// Evicts least recently used entries until they and the reservations fit the bound: takes
    /// them out of the index, lets the lock go, then unlinks their files.
    fn evict(&self, mut index: MutexGuard<Index<K>>) {
        if self.loading() {
            // The index does not hold every entry yet: the scan evicts when it ends.
            return;
        }
        let mut evicted = Vec::new();
        while index.bytes + self.reserved.load(Ordering::Acquire) > self.max_bytes() {
            let Some((key, entry)) = index.lru.pop_lru() else {
                break;
            };
            index.bytes -= entry.len;
            index.busy.insert(key.clone());
            evicted.push(key);
        }
        drop(index);
        if evicted.is_empty() {
            return;
        }
        for key in &evicted {
            let path = self.root.join(key.rel_path());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Its room is counted free all the same: the next start finds the file again.
                Err(e) => tracing::warn!(path = %path.display(), "evicting: {e}"),
            }
        }
        let mut index = self.index.lock().unwrap();
        for key in &evicted {
            index.busy.remove(key);
        }
        self.settled.notify_all();
    }

    /// The store's bound.
    fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Acquire)
    }

    fn now_secs(&self) -> u64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl<K: DiskKey> Member for DiskLru<K> {
    fn max_bytes(&self) -> u64 {
        DiskLru::max_bytes(self)
    }

    fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Release);
        self.evict(self.index.lock().unwrap());
    }

    fn footprint(&self) -> u64 {
        self.index.lock().unwrap().bytes + self.reserved()
    }

    fn oldest_use(&self) -> Option<u64> {
        let index = self.index.lock().unwrap();
        index.lru.peek_lru().map(|(_, entry)| entry.touched)
    }

    fn floor(&self) -> u64 {
        0
    }

    fn settled(&self) -> bool {
        !self.loading()
    }
}

/// Renames `file` to `path`, creating its directory if need be.
fn place(file: NamedTempFile, path: &Path) -> io::Result<()> {
    let file = match file.persist(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::NotFound => e.file,
        Err(e) => return Err(e.error),
    };
    fs::create_dir_all(path.parent().expect("entries have a parent"))?;
    file.persist(path).map(|_| ()).map_err(|e| e.error)
}

fn scan(dir: &Path, found: &mut Vec<(PathBuf, u64, SystemTime)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            scan(&entry.path(), found)?;
        } else {
            found.push((entry.path(), meta.len(), meta.modified()?));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::io::{Read, Write};

    #[derive(Clone, PartialEq, Eq, Hash, Debug)]
    struct Name(String);

    impl DiskKey for Name {
        fn rel_path(&self) -> PathBuf {
            PathBuf::from("d").join(&self.0)
        }
        fn from_rel_path(path: &Path) -> Option<Self> {
            let rest = path.strip_prefix("d").ok()?;
            Some(Name(rest.to_str()?.to_string()))
        }
    }

    fn options(max_bytes: u64) -> DiskLruOptions {
        DiskLruOptions {
            max_bytes,
            sync_writes: false,
        }
    }

    fn put(store: &DiskLru<Name>, name: &str, data: &[u8]) -> StoreResult<()> {
        let reservation = store.reserve(data.len() as u64)?;
        let mut file = store.temp_file()?;
        file.write_all(data).unwrap();
        store.insert(&Name(name.into()), file, reservation)
    }

    fn read(store: &DiskLru<Name>, name: &str) -> Option<Vec<u8>> {
        let mut file = store.open_file(&Name(name.into())).unwrap()?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        Some(data)
    }

    /// The store once its index is loaded.
    fn opened(store: Arc<DiskLru<Name>>) -> Arc<DiskLru<Name>> {
        store.wait_loaded();
        store
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        ))
    }

    #[test]
    fn a_write_of_a_key_being_evicted_waits_until_its_old_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(100), clock()).unwrap());
        let a = Name("a".into());
        put(&store, "a", &[1; 10]).unwrap();
        // Where eviction leaves it: out of the index, its file not unlinked yet.
        {
            let mut index = store.index.lock().unwrap();
            let entry = index.lru.pop(&a).unwrap();
            index.bytes -= entry.len;
            index.busy.insert(a.clone());
        }
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || put(&store, "a", &[2; 10]))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!writer.is_finished(), "the write waits for the unlink");
        fs::remove_file(dir.path().join("entries/d/a")).unwrap();
        store.index.lock().unwrap().busy.remove(&a);
        store.settled.notify_all();
        writer.join().unwrap().unwrap();
        assert_eq!(read(&store, "a"), Some(vec![2; 10]), "the new file stays");
    }

    #[test]
    fn index_and_directory_agree_after_concurrent_writes_and_evictions_of_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(200), clock()).unwrap());
        let data = |name: &str| format!("{name:>10}").into_bytes();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let name = format!("k{}", (i * 7 + t) % 60);
                        put(&store, &name, &data(&name)).unwrap();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let indexed: HashSet<String> = {
            let index = store.index.lock().unwrap();
            assert!(index.busy.is_empty());
            index.lru.iter().map(|(k, _)| k.0.clone()).collect()
        };
        let on_disk: HashSet<String> = fs::read_dir(dir.path().join("entries/d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(indexed, on_disk);
        for name in &indexed {
            assert_eq!(read(&store, name), Some(data(name)));
        }
        assert_eq!(store.usage(), (indexed.len(), 10 * indexed.len() as u64));
        assert!(store.usage().1 <= 200);
    }

    #[test]
    fn evicts_least_recently_used_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(30), clock()).unwrap());
        put(&store, "a", &[1; 10]).unwrap();
        put(&store, "b", &[2; 10]).unwrap();
        put(&store, "c", &[3; 10]).unwrap();
        assert!(read(&store, "a").is_some()); // a is now the most recent
        put(&store, "d", &[4; 10]).unwrap(); // evicts b
        assert_eq!(
            store.contains(&[Name("a".into()), Name("b".into())]),
            vec![true, false]
        );
        assert_eq!(store.usage(), (3, 30));
        assert!(!dir.path().join("entries/d/b").exists());
    }

    #[test]
    fn reserve_free_takes_only_room_that_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(30), clock()).unwrap());
        put(&store, "a", &[1; 10]).unwrap();
        put(&store, "b", &[2; 10]).unwrap();
        let held = store.reserve_free(5).expect("10 bytes are free");
        assert!(store.reserve_free(10).is_none(), "5 are left");
        assert_eq!(
            (read(&store, "a"), store.reserved()),
            (Some(vec![1; 10]), 5)
        );
        drop(held);
        assert_eq!(store.reserved(), 0);
    }

    #[test]
    fn refuses_entries_larger_than_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(5), clock()).unwrap());
        let err = put(&store, "big", &[0; 6]).unwrap_err();
        assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err:?}");
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Entries being written count against the bound from before their first byte: room is
    /// made by evicting, refused when other writes hold it, and given back when a write is
    /// abandoned.
    #[test]
    fn writes_in_progress_count_against_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(30), clock()).unwrap());
        put(&store, "a", &[1; 10]).unwrap();
        put(&store, "b", &[2; 10]).unwrap();
        let first = store.reserve(15).unwrap(); // evicts a: 10 + 15 <= 30
        assert_eq!(store.usage(), (1, 10));
        assert_eq!(store.reserved(), 15);
        let second = store.reserve(15).unwrap(); // evicts b
        assert_eq!(store.usage(), (0, 0));
        let err = store.reserve(1).err().unwrap();
        assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err:?}");
        drop(first); // abandoned: its room is free again
        assert_eq!(store.reserved(), 15);
        let third = store.reserve(15).unwrap();
        let mut file = store.temp_file().unwrap();
        file.write_all(&[3; 15]).unwrap();
        store.insert(&Name("c".into()), file, third).unwrap();
        assert_eq!((store.usage(), store.reserved()), ((1, 15), 15));
        drop(second);
        assert_eq!(store.reserved(), 0);
        // A declared length over the bound is refused at once.
        let err = store.reserve(31).err().unwrap();
        assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err:?}");
    }

    #[test]
    fn open_reader_survives_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(10), clock()).unwrap());
        put(&store, "a", b"0123456789").unwrap();
        let mut reader = store.open_file(&Name("a".into())).unwrap().unwrap();
        put(&store, "b", b"abcdefghij").unwrap(); // evicts a while it is open
        assert!(read(&store, "a").is_none());
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"0123456789");
    }

    #[test]
    fn restart_keeps_entries_and_order_and_drops_junk() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        {
            let store =
                opened(DiskLru::<Name>::open(dir.path(), options(100), clock.clone()).unwrap());
            put(&store, "old", &[1; 10]).unwrap();
            clock.advance(Duration::from_secs(60));
            put(&store, "new", &[2; 10]).unwrap();
            // mtimes are real file times; make the order explicit.
            let old = File::open(dir.path().join("entries/d/old")).unwrap();
            old.set_modified(UNIX_EPOCH + Duration::from_secs(100))
                .unwrap();
            fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
            fs::write(dir.path().join("entries/stray"), b"not an entry").unwrap();
        }
        // Reopen with room for one entry: the older one goes.
        let store = opened(DiskLru::<Name>::open(dir.path(), options(10), clock).unwrap());
        assert_eq!(store.usage(), (1, 10));
        assert_eq!(read(&store, "new").unwrap(), vec![2; 10]);
        assert!(read(&store, "old").is_none());
        assert!(!dir.path().join("tmp/partial").exists());
        assert!(!dir.path().join("entries/stray").exists());
    }

    /// Until the scan at start has indexed them, entries on disk are found all the same (the
    /// store answers at once whatever it holds); new writes go first in LRU order, and the scan
    /// then evicts the oldest entries down to the bound.
    #[test]
    fn entries_are_found_while_the_index_loads() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        {
            let store =
                opened(DiskLru::<Name>::open(dir.path(), options(100), clock.clone()).unwrap());
            put(&store, "a", &[1; 10]).unwrap();
            put(&store, "b", &[2; 10]).unwrap();
            put(&store, "c", &[3; 10]).unwrap();
            for (name, secs) in [("a", 100), ("b", 200), ("c", 300)] {
                File::open(dir.path().join("entries/d").join(name))
                    .unwrap()
                    .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
                    .unwrap();
            }
        }
        let store = DiskLru::<Name>::open_unloaded(dir.path(), options(25), clock).unwrap();
        assert!(store.loading());
        assert_eq!(
            store.contains(&[Name("a".into()), Name("zz".into())]),
            vec![true, false]
        );
        assert_eq!(read(&store, "b").unwrap(), vec![2; 10]);
        assert_eq!(store.usage(), (0, 0));
        put(&store, "d", &[4; 10]).unwrap(); // no eviction yet: the count is not complete
        assert!(read(&store, "a").is_some());
        store.load();
        assert!(!store.loading());
        // 40 bytes on disk, room for 25: the two oldest of a, b, c go; d, written since, stays.
        assert_eq!(store.usage(), (2, 20));
        assert!(read(&store, "d").is_some());
        assert!(store.contains(&[Name("c".into())])[0]);
    }

    #[test]
    fn reads_refresh_mtime_at_most_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(100), clock.clone()).unwrap());
        put(&store, "a", b"x").unwrap();
        let path = dir.path().join("entries/d/a");
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        read(&store, "a");
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        clock.advance(TOUCH_INTERVAL + Duration::from_secs(5_000_000));
        read(&store, "a");
        assert_eq!(
            fs::metadata(&path).unwrap().modified().unwrap(),
            clock.now()
        );
    }

    #[test]
    fn file_removed_by_hand_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(100), clock()).unwrap());
        put(&store, "a", b"x").unwrap();
        fs::remove_file(dir.path().join("entries/d/a")).unwrap();
        assert!(read(&store, "a").is_none());
        assert_eq!(store.usage(), (0, 0));
    }

    /// contains_now answers from the index once the scan at start is over, and leaves the
    /// question to contains (which looks on disk) while it runs.
    #[test]
    fn contains_now_answers_from_the_index_once_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(100), clock()).unwrap());
        put(&store, "a", b"xyz").unwrap();
        let keys = [Name("a".into()), Name("b".into())];
        assert_eq!(store.contains_now(&keys), Some(vec![true, false]));
        store.loading.store(true, Ordering::Release);
        assert_eq!(store.contains_now(&keys), None);
        assert_eq!(store.contains(&keys), vec![true, false]);
    }

    /// What open_file would open, opened without a blocking thread; absent entries answered
    /// too; a read whose use is due to be written to the mtime, or a file removed by hand, left
    /// to open_file as before.
    #[test]
    fn open_file_now_opens_what_open_file_would_or_leaves_it_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let store = opened(DiskLru::<Name>::open(dir.path(), options(100), clock.clone()).unwrap());
        put(&store, "a", b"xyz").unwrap();
        put(&store, "b", b"b").unwrap();
        let mut data = String::new();
        let mut file = store.open_file_now(&Name("a".into())).unwrap().unwrap();
        std::io::Read::read_to_string(&mut file, &mut data).unwrap();
        assert_eq!(data, "xyz");
        assert!(store
            .open_file_now(&Name("absent".into()))
            .unwrap()
            .is_none());
        clock.advance(TOUCH_INTERVAL + Duration::from_secs(5_000_000));
        assert!(
            store.open_file_now(&Name("a".into())).is_none(),
            "the mtime is due"
        );
        read(&store, "a");
        assert!(store.open_file_now(&Name("a".into())).unwrap().is_some());
        fs::remove_file(dir.path().join("entries/d/b")).unwrap();
        read(&store, "b"); // due too: refreshed by open_file, which finds it gone
        assert!(store.open_file_now(&Name("b".into())).unwrap().is_none());
        assert_eq!(store.usage().0, 1);
        // Removed by hand when not due: forgotten here, or left to open_file if the kernel
        // cannot tell without the disk; never opened.
        fs::remove_file(dir.path().join("entries/d/a")).unwrap();
        match store.open_file_now(&Name("a".into())) {
            Some(found) => assert!(found.is_none() && store.usage().0 == 0),
            None => assert!(read(&store, "a").is_none()),
        }
    }
}
