//! The work at start: taking in the index files (and the segments' tails past them), then
//! hashing every blob they listed; and how lookups wait for it (see the module above).

use super::format::{decode, decode_index, SHA256_ENTRY};
use super::list::List;
use super::{index_path, segment_path, Packed, State, CHUNK};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What the start-up work has yet to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Start {
    /// Reading the index files: a blob the index lacks may yet be found.
    Loading,
    /// Hashing the blobs the index files listed: one not hashed yet is hashed when asked for.
    Verifying,
    Done,
}

/// How far the start-up work is: its stage, and how many chunks of index entries it has taken
/// in (a lookup that missed looks again after each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    pub(super) stage: Start,
    chunks: u64,
}

impl Progress {
    pub(super) const STARTED: Progress = Progress {
        stage: Start::Loading,
        chunks: 0,
    };
}

impl Packed {
    /// The work at start: the segments found are indexed, oldest first, from their index files
    /// (and, past where those end, from the segments); then the blobs the index files listed are
    /// verified.
    pub(super) fn load(&self, found: &[u32]) {
        let counted = self.state.read().unwrap().bytes;
        let mut listed = Vec::new();
        std::thread::scope(|scope| {
            // Room for the blobs the index files list, made at once (growing the table moves
            // all it holds), while the first index file is read.
            scope.spawn(|| {
                let mut state = self.state.write().unwrap();
                let index_bytes: u64 = state.segments.values().map(|s| s.index_bytes).sum();
                state.index.reserve((index_bytes / SHA256_ENTRY) as usize);
            });
            for &number in found {
                match self.load_segment(number) {
                    Ok(true) => listed.push(number),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), "segment {number:016x}: {e}; its blobs are not used")
                    }
                }
            }
        });
        self.advance(Start::Verifying);
        // Evicted now: only what is over the bound beyond what the loading itself added (index
        // files completed from their segments, writes meanwhile), i.e. a bound lowered since the
        // last run. The bound was set from the bytes counted before loading, so what loading
        // added is the store outgrowing nothing: the next write moves budget for it under the
        // joint bound, or evicts. (Evicting it here once lost a whole segment of acknowledged
        // blobs after every crash that left an index file behind its segment.)
        let evicted = {
            let mut state = self.state.write().unwrap();
            let added = state.bytes.saturating_sub(counted);
            self.evict_down_to(&mut state, self.max_bytes() + added)
        };
        self.remove(evicted);
        for number in listed {
            if let Err(e) = self.verify_segment(number) {
                tracing::warn!(dir = %self.dir.display(), "verifying segment {number:016x}: {e}");
            }
        }
        self.advance(Start::Done);
    }

    fn advance(&self, to: Start) {
        self.start.lock().unwrap().stage = to;
        self.loaded.notify_all();
    }

    /// Tells lookups waiting at start that more index entries are in.
    fn taken_in(&self) {
        self.start.lock().unwrap().chunks += 1;
        self.loaded.notify_all();
    }

    /// Indexes segment `number`: the entries its index file lists (not verified yet), then the
    /// records after them, verified; a torn tail is cut off, and an index file that lagged is
    /// rewritten. True if entries came from the index file.
    fn load_segment(&self, number: u32) -> io::Result<bool> {
        let Some((file, len)) = self.segment_file(number) else {
            return Ok(false); // evicted meanwhile
        };
        let mut list = List::open(&index_path(&self.dir, number)).unwrap_or_default();
        let index_bytes = list.len() as u64;
        let (believed, covered) = decode_index(&list, len);
        list.truncate(believed);
        let mut tail = vec![0; (len - covered) as usize];
        file.read_exact_at(&mut tail, covered)?;
        let (scanned, valid) = decode(&tail, covered);
        if valid < len {
            let path = segment_path(&self.dir, number);
            tracing::warn!(path = %path.display(), "cut off {} bytes after the last whole blob", len - valid);
            OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
        }
        for (digest, data_at) in &scanned {
            list.push_entry(digest, *data_at);
        }
        if !scanned.is_empty() {
            // The next start need not read the segment again.
            self.rewrite_index(number, &list)?;
            self.resize(number, valid, list.len() as u64);
        } else {
            self.resize(number, valid, index_bytes);
        }
        let end = list.len();
        self.state
            .write()
            .unwrap()
            .index
            .adopt(number, list, believed);
        let mut at = 0;
        while at < end {
            let mut state = self.state.write().unwrap();
            if !state.segments.contains_key(&number) {
                break; // evicted meanwhile
            }
            at = state.index.point_listed(number, at, CHUNK);
            drop(state);
            self.taken_in();
        }
        Ok(believed > 0)
    }

    fn segment_file(&self, number: u32) -> Option<(Arc<File>, u64)> {
        let state = self.state.read().unwrap();
        let segment = state.segments.get(&number)?;
        Some((segment.file.clone(), segment.bytes))
    }

    /// Replaces segment `number`'s index file with `list`.
    fn rewrite_index(&self, number: u32, list: &[u8]) -> io::Result<()> {
        let path = index_path(&self.dir, number);
        let temporary = path.with_extension("idx.new");
        fs::write(&temporary, list)?;
        fs::rename(temporary, path)
    }

    /// Sets what segment `number` and its index file occupy, as found at start.
    fn resize(&self, number: u32, bytes: u64, index_bytes: u64) {
        let mut state = self.state.write().unwrap();
        let State {
            segments,
            bytes: total,
            ..
        } = &mut *state;
        if let Some(segment) = segments.get_mut(&number) {
            *total = *total + bytes + index_bytes - segment.bytes - segment.index_bytes;
            segment.bytes = bytes;
            segment.index_bytes = index_bytes;
        }
    }

    /// Hashes the blobs of segment `number` that its index file listed: each one that verifies
    /// is marked so, and the others leave the index.
    fn verify_segment(&self, number: u32) -> io::Result<()> {
        let Some((file, len)) = self.segment_file(number) else {
            return Ok(());
        };
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let (records, _) = decode(&bytes, 0);
        for chunk in records.chunks(CHUNK) {
            let mut state = self.state.write().unwrap();
            if !state.segments.contains_key(&number) {
                return Ok(()); // evicted meanwhile
            }
            for (digest, offset) in chunk {
                if !state.index.set_verified(digest, number, *offset)
                    && state.index.get(digest).is_none()
                {
                    // Its index entry was damaged.
                    state.index.insert(number, digest, *offset, true);
                }
            }
        }
        for digest in self.state.write().unwrap().index.drop_unverified(number) {
            tracing::warn!(dir = %self.dir.display(), "segment {number:016x}: blob {digest} does not hash to its digest; dropped");
        }
        Ok(())
    }

    pub(super) fn stage(&self) -> Start {
        self.progress().stage
    }

    pub(super) fn progress(&self) -> Progress {
        *self.start.lock().unwrap()
    }

    /// Waits until the work at start has reached `stage`.
    #[cfg(test)]
    pub(super) fn wait_for(&self, stage: Start) {
        let mut start = self.start.lock().unwrap();
        while start.stage < stage {
            start = self.loaded.wait(start).unwrap();
        }
    }

    /// Waits until the work at start has gone past `seen`.
    pub(super) fn wait_past(&self, seen: Progress) {
        let mut start = self.start.lock().unwrap();
        while *start == seen {
            start = self.loaded.wait(start).unwrap();
        }
    }
}
