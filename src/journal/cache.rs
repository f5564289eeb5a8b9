//! Data of the writes that the journal refers to instead of copying (tag-19 frames), held in
//! memory from the append until no mirror needs it: every mirror confirmed the record, or
//! applied it to files of its own (the directory mirror).
//!
//! `Journal::append_owned` moves a write's data here when the budget has room, and the
//! segment gets a short frame with the data's length, CRC32C and the backing file's
//! identity. `Reader` fills the write
//! back from here, so mirrors see an ordinary `Op::Write`. The mirror workers release the
//! data once the slowest mirror is done with it. When the budget is used up (a mirror is down
//! or far behind), writes go into the segment whole again, so memory stays bounded by the
//! budget whatever the backlog.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Seq, lock};

/// Maximum bytes of write data the journal keeps in memory.
pub const DATA_CACHE_BYTES: u64 = 8 << 20;

/// Smallest write whose data is held here rather than copied into the segment. Below it the
/// copy costs less than the bookkeeping.
pub const MIN_REFERENCED_BYTES: usize = 1024;

pub(super) struct DataCache {
    budget: u64,
    /// Data of each record held, by seq.
    by_seq: Mutex<BTreeMap<Seq, Vec<u8>>>,
    /// Bytes of the entries plus those reserved for appends in progress. Kept outside the
    /// lock, so that a write takes the lock once (to insert).
    bytes: AtomicU64,
}

impl DataCache {
    pub fn new(budget: u64) -> DataCache {
        DataCache {
            budget,
            by_seq: Mutex::new(BTreeMap::new()),
            bytes: AtomicU64::new(0),
        }
    }

    /// Reserves room for `len` bytes; false when the budget has none left.
    pub fn reserve(&self, len: usize) -> bool {
        let len = len as u64;
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                Some(bytes + len).filter(|requested| *requested <= self.budget)
            })
            .is_ok()
    }

    /// Gives back a reservation whose append failed.
    pub fn unreserve(&self, len: usize) {
        self.bytes.fetch_sub(len as u64, Ordering::Relaxed);
    }

    /// Stores the data of record `seq`, for which `reserve` made room.
    pub fn insert(&self, seq: Seq, data: Vec<u8>) {
        lock(&self.by_seq).insert(seq, data);
    }

    /// Returns a copy of the data of record `seq`, if still in memory.
    pub fn get(&self, seq: Seq) -> Option<Vec<u8>> {
        lock(&self.by_seq).get(&seq).cloned()
    }

    /// Drops the data of every record up to `seq`.
    pub fn release_up_to(&self, seq: Seq) {
        let mut entries = lock(&self.by_seq);
        let Some((&oldest, _)) = entries.first_key_value() else {
            return;
        };
        if oldest > seq {
            return;
        }
        let newer = entries.split_off(&Seq(seq.0.saturating_add(1)));
        let released = std::mem::replace(&mut *entries, newer);
        // The buffers are freed after unlocking, because FUSE threads take the lock per write.
        drop(entries);
        let freed: u64 = released.values().map(|data| data.len() as u64).sum();
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Returns the bytes stored and reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_reservations_and_release_frees_them() {
        let cache = DataCache::new(10_000);
        assert!(cache.reserve(4096));
        cache.insert(Seq(1), vec![1; 4096]);
        assert!(cache.reserve(4096));
        cache.insert(Seq(2), vec![2; 4096]);
        assert!(!cache.reserve(4096), "8192 + 4096 exceeds the budget");
        assert_eq!(cache.bytes(), 8192);

        assert_eq!(cache.get(Seq(2)), Some(vec![2; 4096]));
        cache.release_up_to(Seq(1));
        assert_eq!(cache.get(Seq(1)), None);
        assert_eq!(cache.get(Seq(2)), Some(vec![2; 4096]));
        assert_eq!(cache.bytes(), 4096);
        assert!(cache.reserve(4096));
        cache.unreserve(4096);
        cache.release_up_to(Seq(u64::MAX));
        assert_eq!(cache.bytes(), 0);
    }
}
