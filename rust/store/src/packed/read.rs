//! Finding and reading packed blobs: lookups that wait for the index files at start, blobs
//! hashed before they are first served, and reads that never wait when the bytes are in the
//! page cache.

use super::index::Location;
use super::start::Start;
use super::{Append, Found, Packed};
use crate::error::{StoreError, StoreResult};
use crate::nowait::read_cached;
use bytes::Bytes;
use clientd_digest::Digest;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Blobs read by [`Packed::read_together`] with one `pread` are at most this far apart in their
/// segment (a record's header lies between two blobs written together)...
const RUN_GAP: u64 = 4 << 10;
/// ...and the run at most this long.
const RUN_MAX: u64 = 4 << 20;

impl Packed {
    /// Where the blob is, waiting for the index files at start if the index lacks it; hashes a
    /// blob not verified yet (dropping it if it does not verify).
    pub(super) fn locate(&self, digest: &Digest) -> io::Result<Option<Found>> {
        let Some(found) = self.once_indexed(|| self.find_now(digest)) else {
            return Ok(None);
        };
        if found.location.verified {
            return Ok(Some(found));
        }
        self.verify(digest, found)
    }

    /// What `lookup` finds in the index; while the index files are being read at start, looked
    /// up again as entries come in until it finds something or they are all in.
    fn once_indexed<T>(&self, lookup: impl Fn() -> Option<T>) -> Option<T> {
        // The progress is read before the lookup: a blob missed while the index files were being
        // read is looked up again once more entries are in, even if they came just after the miss.
        let mut seen = self.progress();
        loop {
            if let Some(found) = lookup() {
                return Some(found);
            }
            if seen.stage != Start::Loading {
                return None;
            }
            self.wait_past(seen);
            seen = self.progress();
        }
    }

    /// The blob if the index has it now (verified or not), without waiting for the index.
    fn find_now(&self, digest: &Digest) -> Option<Found> {
        let state = self.state.read().unwrap();
        let location = state.index.get(digest)?;
        let file = state.segments[&location.segment].file.clone();
        // Old: its segment goes once less than a quarter of the bound more is written. While a
        // quarter of the bound is free no blob is, and the segments need not be summed; nor
        // while budget the store could have without evicting anything (a joint bound's other
        // layout leaves it unused) makes up the rest, as after a restart, when the bound is
        // what the store holds.
        let max_bytes = self.max_bytes();
        let quarter = max_bytes / 4;
        let free = max_bytes.saturating_sub(state.bytes);
        let newest = state.segments.keys().next_back() == Some(&location.segment);
        let before = match !newest && free < quarter {
            true => Some(
                state
                    .segments
                    .range(..=location.segment)
                    .map(|(_, s)| s.bytes)
                    .sum::<u64>(),
            ),
            false => None,
        };
        drop(state);
        let old = before.is_some_and(|before| free + before + self.spare() < quarter);
        Some(Found {
            location,
            file,
            old,
            data: None,
        })
    }

    /// Hashes a blob found but not verified yet: marks it verified, or drops it.
    fn verify(&self, digest: &Digest, mut found: Found) -> io::Result<Option<Found>> {
        let mut data = vec![0; digest.size() as usize];
        found.file.read_exact_at(&mut data, found.location.offset)?;
        let good = digest.function().digest_of(&data) == *digest;
        let mut state = self.state.write().unwrap();
        let Location {
            segment, offset, ..
        } = found.location;
        if !good {
            if state.index.get(digest) == Some(found.location) {
                tracing::warn!(dir = %self.dir.display(), "blob {digest} does not hash to its digest; dropped");
                state.index.remove(digest);
            }
            return Ok(None);
        }
        // If it moved or went meanwhile, the bytes read are still good.
        state.index.set_verified(digest, segment, offset);
        found.location.verified = true;
        found.data = Some(data);
        Ok(Some(found))
    }

    /// Whether the blob is here, waiting for the index at start if it lacks the blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        match self.locate(digest) {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "looking up packed blob {digest}: {e}");
                false
            }
        }
    }

    /// The blob whose hash is `name`'s (whatever its size), if it is here: for clients that name
    /// blobs by hash alone. Waits for the index at start as [`Packed::contains`] does.
    pub fn digest_by_hash(&self, name: &Digest) -> Option<Digest> {
        let digest = self.once_indexed(|| self.state.read().unwrap().index.find_hash(name))?;
        self.contains(&digest).then_some(digest)
    }

    /// Whether the index has the blob, verified, now (never waits, never reads).
    pub fn contains_now(&self, digest: &Digest) -> bool {
        let state = self.state.read().unwrap();
        state.index.get(digest).is_some_and(|l| l.verified)
    }

    /// Whether a lookup may have to wait or read: the index files found at start are still
    /// being read, or their blobs hashed. Until then, [`Packed::contains_now`] may miss a blob
    /// that [`Packed::contains`] finds.
    pub fn settling(&self) -> bool {
        self.stage() != Start::Done
    }

    /// `len` bytes of the blob from `offset` (the caller checks the range) if they can be had
    /// without waiting for anything: the blob indexed and verified, not due to be copied to the
    /// newest segment, and its bytes in the page cache (`preadv2` with `RWF_NOWAIT` fails rather
    /// than wait for the disk). None otherwise, absent blobs included: [`Packed::read`] then
    /// answers, on a thread that may block. So a small read is served on the runtime's thread,
    /// without the hop to another thread that costs more than the read.
    pub fn read_now(&self, digest: &Digest, offset: u64, len: u64) -> Option<Bytes> {
        let found = self.find_now(digest)?;
        if !found.location.verified || found.old {
            return None;
        }
        read_cached(&found.file, found.location.offset + offset, len).map(Bytes::from)
    }

    /// `len` bytes of the blob from `offset` (the caller checks the range); None if absent.
    pub fn read(&self, digest: &Digest, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        let io_error = |e| StoreError::io(format!("reading packed blob {digest}"), e);
        let Some(found) = self.locate(digest).map_err(io_error)? else {
            return Ok(None);
        };
        let whole = match (found.data, found.old) {
            (Some(data), _) => Some(data),
            (None, true) => {
                let mut data = vec![0; digest.size() as usize];
                found
                    .file
                    .read_exact_at(&mut data, found.location.offset)
                    .map_err(io_error)?;
                Some(data)
            }
            (None, false) => None,
        };
        let Some(whole) = whole else {
            let mut data = vec![0; len as usize];
            found
                .file
                .read_exact_at(&mut data, found.location.offset + offset)
                .map_err(io_error)?;
            return Ok(Some(Bytes::from(data)));
        };
        if found.old {
            // Copied to the newest segment before the oldest go; the copy needs no sync (the
            // original is synced, and a torn copy is cut off at start).
            if let Err(e) = self.append(&[(*digest, &whole)], Append::Refresh) {
                tracing::debug!("refreshing packed blob {digest}: {e}");
            }
        }
        let end = (offset + len) as usize;
        Ok(Some(Bytes::from(whole).slice(offset as usize..end)))
    }

    /// Whole blobs, in the order asked, None for those absent. Blobs that are verified, not due
    /// to be copied to the newest segment, and near each other in one segment (as a batch
    /// written together is) are read with one `pread` per run of them; the others one by one as
    /// [`Packed::read`] does. BatchReadBlobs reads a thousand small blobs: a system call each
    /// was a fifth of its time.
    pub fn read_together(&self, digests: &[Digest]) -> Vec<StoreResult<Option<Bytes>>> {
        let mut results: Vec<Option<StoreResult<Option<Bytes>>>> = vec![None; digests.len()];
        // (segment, offset, index into digests, the segment's file) of the blobs read in runs.
        let mut runs: Vec<(u32, u64, usize, Arc<File>)> = Vec::new();
        for (i, digest) in digests.iter().enumerate() {
            match self.find_now(digest) {
                Some(found) if found.location.verified && !found.old => {
                    runs.push((found.location.segment, found.location.offset, i, found.file))
                }
                _ => results[i] = Some(self.read(digest, 0, digest.size())),
            }
        }
        runs.sort_unstable_by_key(|(segment, offset, _, _)| (*segment, *offset));
        let mut rest = &runs[..];
        while let Some((segment, start, first, file)) = rest.first() {
            // The run: the first blob, and each next one in the same segment near enough.
            let mut end = start + digests[*first].size();
            let mut n = 1;
            while let Some((s, offset, i, _)) = rest.get(n) {
                let next_end = offset + digests[*i].size();
                if s != segment || *offset > end + RUN_GAP || next_end - start > RUN_MAX {
                    break;
                }
                end = end.max(next_end);
                n += 1;
            }
            let (run, after) = rest.split_at(n);
            rest = after;
            let mut data = vec![0; (end - start) as usize];
            match file.read_exact_at(&mut data, *start) {
                Ok(()) => {
                    let data = Bytes::from(data);
                    for (_, offset, i, _) in run {
                        let from = (offset - start) as usize;
                        let blob = data.slice(from..from + digests[*i].size() as usize);
                        results[*i] = Some(Ok(Some(blob)));
                    }
                }
                Err(e) => {
                    for (_, _, i, _) in run {
                        let what = format!("reading packed blob {}", digests[*i]);
                        results[*i] = Some(Err(StoreError::io(
                            what,
                            io::Error::new(e.kind(), e.to_string()),
                        )));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every blob read"))
            .collect()
    }
}
