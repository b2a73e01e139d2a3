//! The packed blobs' index in memory, compact so that a million blobs load in tens of
//! milliseconds and cost tens of bytes each.
//!
//! Each segment's index entries are kept as the bytes of its index file (see [`List`]: the
//! entries of blobs written since start appended), with a bit per entry set once its blob has
//! hashed to its digest since start, and a [`Table`] maps the first 8 bytes of a blob's hash to
//! where its entry is: 16 bytes a slot, where a map from whole digests to locations took over
//! a hundred and spent most of a start inserting them. A lookup compares the whole digest with
//! the entry, so blobs whose hashes share their first 8 bytes (the same bytes under two
//! functions, or chance) are told apart.

use super::format::{entries, entry_at, Entry, MIN_ENTRY};
use super::list::List;
use super::table::{Slot, Table};
use clientd_digest::Digest;
use std::collections::BTreeMap;

/// Where a blob's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub segment: u32,
    pub offset: u64,
    /// Whether the bytes have hashed to the digest since start.
    pub verified: bool,
}

#[derive(Default)]
pub(super) struct Index {
    table: Table,
    lists: BTreeMap<u32, Listed>,
}

/// A segment's entries, in its index file's format, and which of their blobs are verified.
#[derive(Default)]
struct Listed {
    list: List,
    /// A bit per [`MIN_ENTRY`] bytes of the list: entries are at least that far apart.
    verified: Vec<u64>,
}

impl Listed {
    fn bit(at: usize) -> (usize, u64) {
        let n = at / MIN_ENTRY;
        (n / 64, 1 << (n % 64))
    }

    fn verified(&self, at: usize) -> bool {
        let (word, bit) = Self::bit(at);
        self.verified.get(word).is_some_and(|w| w & bit != 0)
    }

    fn set_verified(&mut self, at: usize, verified: bool) {
        let (word, bit) = Self::bit(at);
        if self.verified.len() <= word {
            self.verified.resize(word + 1, 0);
        }
        match verified {
            true => self.verified[word] |= bit,
            false => self.verified[word] &= !bit,
        }
    }
}

fn tag(hash: &[u8]) -> u64 {
    u64::from_le_bytes(
        hash[..8]
            .try_into()
            .expect("every hash is longer than 8 bytes"),
    )
}

/// Points the blob of `new`, `segment`'s entry at byte `entry`, there, unless a newer segment
/// holds it (a copy made since start, when an older segment is read at start).
fn point(table: &mut Table, lists: &BTreeMap<u32, Listed>, segment: u32, entry: usize, new: Entry) {
    let slot = Slot {
        tag: tag(new.hash),
        segment,
        entry: entry as u32,
    };
    let same = |held: &Slot| entry_in(lists, held).is_some_and(|e| e.same_blob(&new));
    table.put(slot, same, |held| held.segment <= segment);
}

/// Removes the slot pointing at `segment`'s entry at byte `at` (`entry`); false if none does
/// (its blob is indexed in a newer segment, or was removed).
fn unpoint(table: &mut Table, segment: u32, at: usize, entry: &Entry) -> bool {
    let here = |slot: &Slot| (slot.segment, slot.entry) == (segment, at as u32);
    table.remove(tag(entry.hash), here)
}

/// The entry `slot` points at; None for a slot left by a segment forgotten since (stale, see
/// [`Index::forget_segment`]).
fn entry_in<'a>(lists: &'a BTreeMap<u32, Listed>, slot: &Slot) -> Option<Entry<'a>> {
    let listed = lists.get(&slot.segment)?;
    Some(entry_at(&listed.list, slot.entry as usize).expect("slots point at entries"))
}

impl Index {
    /// Room for `more` blobs, made at once: growing the table moves all it holds.
    pub fn reserve(&mut self, more: usize) {
        self.table.reserve(more);
    }

    fn slot(&self, digest: &Digest) -> Option<Slot> {
        let is = |slot: &Slot| entry_in(&self.lists, slot).is_some_and(|e| e.is(digest));
        self.table.find(tag(digest.hash()), is)
    }

    pub fn get(&self, digest: &Digest) -> Option<Location> {
        let slot = self.slot(digest)?;
        Some(Location {
            segment: slot.segment,
            offset: entry_in(&self.lists, &slot)?.data_at,
            verified: self.lists[&slot.segment].verified(slot.entry as usize),
        })
    }

    /// The digest of the blob indexed under `name`'s hash (its size unknown: 0), if any.
    pub fn find_hash(&self, name: &Digest) -> Option<Digest> {
        let is = |slot: &Slot| {
            entry_in(&self.lists, slot)
                .is_some_and(|e| (e.function, e.hash) == (name.function(), name.hash()))
        };
        let slot = self.table.find(tag(name.hash()), is)?;
        Some(entry_in(&self.lists, &slot)?.digest())
    }

    /// Number of blobs indexed (with those of a forgotten segment until their slots are removed).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Lists blob `digest` as stored in `segment` with its bytes at `data_at`, and points it
    /// there (unless a newer segment holds it).
    pub fn insert(&mut self, segment: u32, digest: &Digest, data_at: u64, verified: bool) {
        let listed = self.lists.entry(segment).or_default();
        let entry = listed.list.len();
        listed.list.push_entry(digest, data_at);
        listed.set_verified(entry, verified);
        let Index { table, lists } = self;
        let new = entry_at(&lists[&segment].list, entry).expect("just listed");
        point(table, lists, segment, entry, new);
    }

    /// Takes the entries of `segment`'s index file (as [`super::format::decode_index`] accepted
    /// them, those from `verified_from` on verified), not pointed at yet: see
    /// [`Index::point_listed`].
    pub fn adopt(&mut self, segment: u32, list: List, verified_from: usize) {
        let mut listed = Listed {
            list,
            verified: Vec::new(),
        };
        let starts: Vec<usize> = entries(&listed.list, verified_from)
            .map(|(at, _)| at)
            .collect();
        for at in starts {
            listed.set_verified(at, true);
        }
        self.lists.insert(segment, listed);
    }

    /// Points up to `n` blobs of `segment`'s list from byte `from` at their entries; returns
    /// where it stopped (the list's length at its end).
    pub fn point_listed(&mut self, segment: u32, from: usize, n: usize) -> usize {
        let Index { table, lists } = self;
        let Some(Listed { list, .. }) = lists.get(&segment) else {
            return from;
        };
        let listed: Vec<(usize, Entry)> = entries(list, from).take(n).collect();
        // A group's slots read together, their cache misses overlapping, then filled.
        for group in listed.chunks(16) {
            table.warm(group.iter().map(|(_, entry)| tag(entry.hash)));
            for &(at, new) in group {
                point(table, lists, segment, at, new);
            }
        }
        listed.last().map_or(from, |(at, entry)| at + entry.bytes())
    }

    /// Marks the blob verified if it is still indexed at `offset` in `segment`; false if not.
    pub fn set_verified(&mut self, digest: &Digest, segment: u32, offset: u64) -> bool {
        let Some(slot) = self.slot(digest) else {
            return false;
        };
        if slot.segment != segment
            || entry_in(&self.lists, &slot).map(|e| e.data_at) != Some(offset)
        {
            return false;
        }
        let listed = self.lists.get_mut(&segment).expect("slots point at lists");
        listed.set_verified(slot.entry as usize, true);
        true
    }

    pub fn remove(&mut self, digest: &Digest) {
        let Index { table, lists } = self;
        table.remove(tag(digest.hash()), |slot| {
            entry_in(lists, slot).is_some_and(|e| e.is(digest))
        });
    }

    /// Drops the blobs indexed in `segment` that are not verified; returns them.
    pub fn drop_unverified(&mut self, segment: u32) -> Vec<Digest> {
        self.remove_from(segment, |listed, at| !listed.verified(at))
    }

    /// Forgets segment `segment` (it is being deleted): its blobs are not found from now on, and
    /// its list is returned, to take their slots out of the table with
    /// [`Index::remove_stale`] a chunk at a time: a segment of tiny blobs has a million.
    pub fn forget_segment(&mut self, segment: u32) -> Option<List> {
        self.lists.remove(&segment).map(|listed| listed.list)
    }

    /// Removes the slots of up to `n` entries of forgotten segment `segment`'s `list` from byte
    /// `from`; returns where it stopped (the list's length at its end).
    pub fn remove_stale(&mut self, segment: u32, list: &[u8], from: usize, n: usize) -> usize {
        let mut end = from;
        for (at, entry) in entries(list, from).take(n) {
            unpoint(&mut self.table, segment, at, &entry);
            end = at + entry.bytes();
        }
        end
    }

    /// Removes the blobs indexed in `segment` (not in a newer one) whose entries pass `filter`;
    /// returns them.
    fn remove_from(
        &mut self,
        segment: u32,
        filter: impl Fn(&Listed, usize) -> bool,
    ) -> Vec<Digest> {
        let Index { table, lists } = self;
        let Some(listed) = lists.get(&segment) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for (at, entry) in entries(&listed.list, 0).filter(|(at, _)| filter(listed, *at)) {
            if unpoint(table, segment, at, &entry) {
                removed.push(entry.digest());
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientd_digest::DigestFunction;

    fn digest(seed: u32) -> Digest {
        DigestFunction::Sha256.digest_of(&seed.to_le_bytes())
    }

    /// A digest whose hash shares `of`'s first 8 bytes.
    fn twin(of: &Digest) -> Digest {
        let mut hash = of.hash().to_vec();
        hash[31] ^= 1;
        Digest::from_raw(of.function(), &hash, of.size()).unwrap()
    }

    #[test]
    fn blobs_are_found_moved_and_removed_also_when_their_tags_collide() {
        let mut index = Index::default();
        let (a, b) = (digest(1), digest(2));
        let (a2, other_size) = (
            twin(&a),
            Digest::from_raw(a.function(), a.hash(), 9).unwrap(),
        );
        index.insert(0, &a, 100, false);
        index.insert(0, &b, 200, true);
        index.insert(0, &a2, 300, true);
        assert_eq!(index.len(), 3);
        let at = |segment, offset, verified| {
            Some(Location {
                segment,
                offset,
                verified,
            })
        };
        assert_eq!(index.get(&a), at(0, 100, false));
        assert_eq!(index.get(&a2), at(0, 300, true));
        assert_eq!(index.get(&other_size), None);
        // A copy in a newer segment wins; loading an older segment's list later changes nothing.
        index.insert(2, &a2, 50, true);
        let mut old = List::default();
        old.push_entry(&a2, 7);
        let end = old.len();
        index.adopt(1, old, 0);
        assert_eq!(index.point_listed(1, 0, 10), end);
        assert_eq!(index.get(&a2), at(2, 50, true));
        // Verifying marks the blob only where it is indexed.
        assert!(!index.set_verified(&a, 0, 999));
        assert!(index.set_verified(&a, 0, 100));
        assert_eq!(index.get(&a), at(0, 100, true));
        // Deleting segment 0 forgets a and b at once, not a2 (now in segment 2); their slots
        // go a chunk at a time.
        let list = index.forget_segment(0).unwrap();
        assert_eq!((index.get(&a), index.get(&b)), (None, None));
        assert_eq!(index.get(&a2), at(2, 50, true));
        let first = index.remove_stale(0, &list, 0, 1);
        assert_eq!(index.len(), 2);
        assert_eq!(index.remove_stale(0, &list, first, 10), list.len());
        assert_eq!(index.len(), 1);
        // Pointing segment 1's list again still leaves a2 with its newer copy; a, stored again
        // unverified in segment 3, is what dropping segment 3's unverified blobs forgets.
        index.point_listed(1, 0, 10);
        index.insert(3, &a, 10, false);
        assert_eq!(index.get(&a2), at(2, 50, true));
        assert_eq!(index.drop_unverified(3), vec![a]);
        assert_eq!((index.get(&a), index.len()), (None, 1));
    }
}
