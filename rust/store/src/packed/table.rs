//! An open-addressing hash table of index slots: the first 8 bytes of a blob's hash (its tag)
//! and where its index entry is, 16 bytes a slot, probed linearly.
//!
//! Why not a standard map: loading a million blobs at start is a million inserts, each a cache
//! miss. Here an insert touches one slot (no separate control bytes), and inserts that do not
//! depend on each other overlap their misses; two blobs with the same tag simply take two
//! slots, told apart by the caller's test of the whole entry. Deletion shifts later slots back
//! (no tombstones), so lookups stay short however much is evicted.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// A blob's tag and its index entry: a segment, and where the entry starts in its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub tag: u64,
    pub segment: u32,
    pub entry: u32,
}

/// A free slot (no list reaches 4 GiB).
const FREE: Slot = Slot {
    tag: 0,
    segment: 0,
    entry: u32::MAX,
};

impl Slot {
    fn is_free(&self) -> bool {
        self.entry == FREE.entry
    }
}

pub(super) struct Table {
    /// A power of two of them, at most three quarters taken.
    slots: Vec<Slot>,
    len: usize,
    /// Mixed into where a tag goes, so that blobs made to crowd one place cannot be.
    seed: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            slots: vec![FREE; 16],
            len: 0,
            seed: RandomState::new().hash_one(0u64),
        }
    }
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where a tag's probe starts.
    fn home(&self, tag: u64) -> usize {
        let mixed = (tag ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 32) as usize & self.mask()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `more` slots, made at once.
    pub fn reserve(&mut self, more: usize) {
        let needed = (self.len + more) * 4 / 3 + 1;
        if needed > self.slots.len() {
            self.resize(needed.next_power_of_two());
        }
    }

    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![FREE; capacity]);
        for slot in old.into_iter().filter(|s| !s.is_free()) {
            let at = self.probe(slot.tag, |_| false).expect_err("not there");
            self.slots[at] = slot;
        }
    }

    /// The position of the slot with `tag` that `is` accepts, or of the free slot that ends
    /// the probe.
    fn probe(&self, tag: u64, is: impl Fn(&Slot) -> bool) -> Result<usize, usize> {
        let mut at = self.home(tag);
        loop {
            let slot = &self.slots[at];
            if slot.is_free() {
                return Err(at);
            }
            if slot.tag == tag && is(slot) {
                return Ok(at);
            }
            at = (at + 1) & self.mask();
        }
    }

    /// Reads the slots where the probes for `tags` start, together, so that the cache misses of
    /// the puts that follow overlap instead of taking turns (most of the time a load takes).
    pub fn warm(&self, tags: impl Iterator<Item = u64>) {
        let free = tags.fold(false, |any, tag| any | self.slots[self.home(tag)].is_free());
        std::hint::black_box(free);
    }

    /// The slot with `tag` that `is` accepts.
    pub fn find(&self, tag: u64, is: impl Fn(&Slot) -> bool) -> Option<Slot> {
        self.probe(tag, is).ok().map(|at| self.slots[at])
    }

    /// Puts `slot` in place of the one with its tag that `same` accepts, if `replace` accepts
    /// that one, or else in a free slot.
    pub fn put(
        &mut self,
        slot: Slot,
        same: impl Fn(&Slot) -> bool,
        replace: impl Fn(&Slot) -> bool,
    ) {
        match self.probe(slot.tag, same) {
            Ok(at) if replace(&self.slots[at]) => self.slots[at] = slot,
            Ok(_) => {}
            Err(at) => {
                self.slots[at] = slot;
                self.len += 1;
                if self.len * 4 > self.slots.len() * 3 {
                    self.resize(self.slots.len() * 2);
                }
            }
        }
    }

    /// Removes the slot with `tag` that `is` accepts; false if there is none.
    pub fn remove(&mut self, tag: u64, is: impl Fn(&Slot) -> bool) -> bool {
        let Ok(mut hole) = self.probe(tag, is) else {
            return false;
        };
        // Slots after the hole whose probe passes it move back into it.
        let mask = self.mask();
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let slot = self.slots[at];
            if slot.is_free() {
                break;
            }
            let home = self.home(slot.tag);
            // Whether `home` lies cyclically in (hole, at]: then the slot is reachable as it is.
            let stays = match hole <= at {
                true => hole < home && home <= at,
                false => hole < home || home <= at,
            };
            if !stays {
                self.slots[hole] = slot;
                hole = at;
            }
        }
        self.slots[hole] = FREE;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tag: u64, entry: u32) -> Slot {
        Slot {
            tag,
            segment: 0,
            entry,
        }
    }

    #[test]
    fn slots_are_found_replaced_and_removed_among_shared_tags_and_crowded_places() {
        let mut table = Table::default();
        let by_entry = |entry: u32| move |s: &Slot| s.entry == entry;
        // Few tags for many slots: long runs, wrapping round the end, several growths.
        let n = 2000u32;
        for entry in 0..n {
            table.put(slot(entry as u64 % 7, entry), by_entry(entry), |_| true);
        }
        assert_eq!(table.len(), n as usize);
        // Replacing keeps the count; `replace` can refuse.
        table.put(slot(3, 3), by_entry(3), |_| false);
        table.put(
            Slot {
                segment: 9,
                ..slot(3, 3)
            },
            by_entry(3),
            |_| true,
        );
        assert_eq!(table.len(), n as usize);
        assert_eq!(table.find(3, by_entry(3)).unwrap().segment, 9);
        // Remove every other one; the rest are all still found.
        for entry in (0..n).step_by(2) {
            assert!(table.remove(entry as u64 % 7, by_entry(entry)));
        }
        assert!(!table.remove(0, by_entry(0)));
        assert_eq!(table.len(), n as usize / 2);
        for entry in 0..n {
            let found = table.find(entry as u64 % 7, by_entry(entry));
            assert_eq!(found.is_some(), entry % 2 == 1, "{entry}");
        }
    }
}
