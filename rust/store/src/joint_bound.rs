//! One bound over the local CAS's two layouts: packed small blobs and a file per larger blob.
//!
//! Each layout enforces a bound of its own, and the two bounds always add up to the configured
//! `max_size_bytes`. When a write would make one layout evict, the budget moves to it from the
//! other layout first if that one has budget it does not use, or holds the older data (its least
//! recently used item was used before this layout's): the other layout then evicts instead. So a
//! cache of small blobs only, or of large ones only, gets the whole bound, and across both what
//! goes first is what was used longest ago (at a segment's granularity for packed blobs).

use crate::packed::Budget;
use std::sync::{Arc, Mutex, Weak};

/// A store under a joint bound.
pub(crate) trait Member: Send + Sync {
    /// Its own bound, in bytes.
    fn max_bytes(&self) -> u64;
    /// Sets its bound, evicting down to it at once.
    fn set_max_bytes(&self, max_bytes: u64);
    /// The bytes it holds, and reserves for writes in progress.
    fn footprint(&self) -> u64;
    /// When its least recently used evictable item was last used (seconds since the epoch);
    /// None when it has nothing to evict.
    fn oldest_use(&self) -> Option<u64>;
    /// The least bound it works with.
    fn floor(&self) -> u64;
    /// Whether everything it found at start is counted: until then, budgets stay as they are.
    fn settled(&self) -> bool;
}

pub(crate) struct JointBound {
    files: Arc<dyn Member>,
    packed: Arc<dyn Member>,
    /// The least budget moved at a time, so that it does not move on every write.
    step: u64,
    /// Held while budget moves (one move at a time keeps the sum of the bounds exact).
    moving: Mutex<()>,
    /// Held by a file write from its check for room until its reservation is made, as the packed
    /// writer's lock does for packing: otherwise a racing writer takes the room moved for this
    /// one, and this one's reservation evicts the files' newest data instead of older packed data.
    reserving_file: Mutex<()>,
}

impl JointBound {
    /// The two layouts, whose bounds add up to the joint bound.
    pub(crate) fn new(files: Arc<dyn Member>, packed: Arc<dyn Member>, step: u64) -> Self {
        JointBound {
            files,
            packed,
            step,
            moving: Mutex::new(()),
            reserving_file: Mutex::new(()),
        }
    }

    /// Reserves room for a file of `incoming` bytes (`reserve` does, and may evict the files' own
    /// least recently used): budget moves to the files first if it should, and no other file
    /// write checks for room or reserves in between.
    pub(crate) fn reserve_file<R>(&self, incoming: u64, reserve: impl FnOnce() -> R) -> R {
        let _one_at_a_time = self.reserving_file.lock().unwrap();
        self.make_room(&*self.files, &*self.packed, incoming);
        reserve()
    }

    /// Reserves room that is free already (`reserve` evicts nothing), unless another file write
    /// is reserving: None then, and the caller takes [`JointBound::reserve_file`]'s way. Never
    /// waits, so the runtime's threads may call it.
    pub(crate) fn reserve_free_file<R>(&self, reserve: impl FnOnce() -> Option<R>) -> Option<R> {
        let _one_at_a_time = self.reserving_file.try_lock().ok()?;
        reserve()
    }

    /// Before `incoming` more bytes are packed: budget moves to the packed blobs if it should.
    pub(crate) fn room_for_packed(&self, incoming: u64) {
        self.make_room(&*self.packed, &*self.files, incoming);
    }

    /// Moves budget from `from` to `to` when `to` would otherwise evict: what `from` does not use,
    /// and more (making `from` evict) if `from` holds the older data or `to` could not fit the
    /// incoming bytes at all.
    fn make_room(&self, to: &dyn Member, from: &dyn Member, incoming: u64) {
        if to.footprint() + incoming <= to.max_bytes() || !to.settled() || !from.settled() {
            return;
        }
        let _moving = self.moving.lock().unwrap();
        let need = (to.footprint() + incoming).saturating_sub(to.max_bytes());
        if need == 0 {
            return;
        }
        let want = need.max(self.step);
        let from_max = from.max_bytes();
        let unused = unused(from);
        let older = match (from.oldest_use(), to.oldest_use()) {
            (Some(theirs), Some(ours)) => theirs < ours,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let cannot_fit = incoming > to.max_bytes();
        let give = if older || cannot_fit {
            want.min(from_max.saturating_sub(from.floor()))
        } else {
            want.min(unused)
        };
        if give == 0 {
            return;
        }
        // Shrunk first, so the two bounds never add up to more than the joint one.
        from.set_max_bytes(from_max - give);
        to.set_max_bytes(to.max_bytes() + give);
    }
}

/// Budget `member` holds and does not use (beyond its floor).
fn unused(member: &dyn Member) -> u64 {
    member
        .max_bytes()
        .saturating_sub(member.footprint().max(member.floor()))
}

/// The packed blobs' side of a joint bound. Weak: the bound holds the packed store.
pub(crate) struct PackedBudget(pub(crate) Weak<JointBound>);

impl Budget for PackedBudget {
    fn make_room(&self, incoming: u64) {
        if let Some(bound) = self.0.upgrade() {
            bound.room_for_packed(incoming);
        }
    }

    fn spare(&self) -> u64 {
        self.0.upgrade().map_or(0, |bound| unused(&*bound.files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member holding items of given sizes, last used at given times, evicting oldest first.
    #[derive(Default)]
    struct Fake {
        max: Mutex<u64>,
        /// (last used, bytes), oldest first.
        items: Mutex<Vec<(u64, u64)>>,
        floor: u64,
    }

    impl Fake {
        fn new(max: u64, items: &[(u64, u64)], floor: u64) -> Arc<Fake> {
            Arc::new(Fake {
                max: Mutex::new(max),
                items: Mutex::new(items.to_vec()),
                floor,
            })
        }

        /// What a write does: evicts its own oldest until `len` more fit, then adds it.
        fn write(&self, used: u64, len: u64) {
            let max = *self.max.lock().unwrap();
            let mut items = self.items.lock().unwrap();
            while items.iter().map(|i| i.1).sum::<u64>() + len > max && !items.is_empty() {
                items.remove(0);
            }
            items.push((used, len));
        }

        fn times(&self) -> Vec<u64> {
            self.items.lock().unwrap().iter().map(|i| i.0).collect()
        }
    }

    impl Member for Fake {
        fn max_bytes(&self) -> u64 {
            *self.max.lock().unwrap()
        }
        fn set_max_bytes(&self, max_bytes: u64) {
            *self.max.lock().unwrap() = max_bytes;
            let mut items = self.items.lock().unwrap();
            while items.iter().map(|i| i.1).sum::<u64>() > max_bytes {
                items.remove(0);
            }
        }
        fn footprint(&self) -> u64 {
            self.items.lock().unwrap().iter().map(|i| i.1).sum()
        }
        fn oldest_use(&self) -> Option<u64> {
            self.items.lock().unwrap().first().map(|i| i.0)
        }
        fn floor(&self) -> u64 {
            self.floor
        }
        fn settled(&self) -> bool {
            true
        }
    }

    fn joint(files: &Arc<Fake>, packed: &Arc<Fake>, step: u64) -> JointBound {
        JointBound::new(files.clone(), packed.clone(), step)
    }

    #[test]
    fn unused_budget_moves_to_the_layout_that_needs_it() {
        let files = Fake::new(75, &[], 0);
        let packed = Fake::new(25, &[(1, 20)], 10);
        let bound = joint(&files, &packed, 1);
        for t in 2..10 {
            bound.room_for_packed(10);
            packed.write(t, 10);
        }
        // Small blobs only: they get the whole bound but the files' floor.
        assert_eq!((packed.max_bytes(), files.max_bytes()), (100, 0));
        assert_eq!(packed.footprint(), 100);
        assert_eq!(packed.times(), (1..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_layout_with_the_older_data_evicts() {
        let files = Fake::new(60, &[(1, 30), (5, 30)], 0);
        let packed = Fake::new(40, &[(2, 20), (3, 20)], 20);
        let bound = joint(&files, &packed, 1);
        // Packed needs 20 more, and the files' oldest (1) is older than its own (2).
        bound.room_for_packed(20);
        packed.write(6, 20);
        assert_eq!((files.times(), packed.times()), (vec![5], vec![2, 3, 6]));
        // The files need 30 more, and packed's oldest (2) is older than theirs (5).
        bound.reserve_file(30, || files.write(7, 30));
        assert_eq!((files.times(), packed.times()), (vec![5, 7], vec![3, 6]));
        // Packed needs 20 more, and its own oldest (3) is the oldest: it evicts its own.
        bound.room_for_packed(20);
        packed.write(8, 20);
        assert_eq!((files.times(), packed.times()), (vec![5, 7], vec![6, 8]));
        assert_eq!(files.max_bytes() + packed.max_bytes(), 100);
        assert_eq!(files.footprint() + packed.footprint(), 100);
    }

    #[test]
    fn newer_data_stays_unless_a_write_cannot_fit_otherwise() {
        let files = Fake::new(50, &[(1, 50)], 0);
        let packed = Fake::new(50, &[(8, 25), (9, 25)], 10);
        let bound = joint(&files, &packed, 1);
        // The files need 30 more, and their own data is the oldest: they evict it.
        bound.reserve_file(30, || files.write(7, 30));
        assert_eq!((files.times(), packed.times()), (vec![7], vec![8, 9]));
        // A file larger than the files' bound takes budget from packed, down to its floor.
        bound.reserve_file(80, || {
            assert_eq!((files.max_bytes(), packed.max_bytes()), (90, 10));
            files.write(10, 80)
        });
        assert_eq!(files.times(), vec![10]);
        assert!(packed.footprint() <= 10);
    }
}
