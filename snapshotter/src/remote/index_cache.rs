//! Decoded layer indexes kept in memory, bounded in entries and in the bytes they hold
//! ([`chunksnap_format::budget::held_size`]): an index may legitimately hold hundreds of MB (a layer of a million files,
//! its tar-split records), so a count of entries alone would not bound the daemon's memory.
//!
//! Inserting evicts the least recently used indexes until the new one fits; an index larger
//! than the whole budget is not kept (its callers hold it while they use it, and the node's
//! index files on disk remain).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use chunksnap_format::pb::LayerIndex;

/// See the module docs.
#[derive(Debug)]
pub struct IndexCache<K> {
    entries: HashMap<K, Held>,
    max_entries: usize,
    max_bytes: u64,
    bytes: u64,
    /// Use counter: a larger value is more recent.
    tick: u64,
}

#[derive(Debug)]
struct Held {
    index: Arc<LayerIndex>,
    size: u64,
    used: u64,
}

impl<K: Eq + Hash + Clone> IndexCache<K> {
    /// At most `max_entries` indexes (at least one) holding at most `max_bytes` together.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            tick: 0,
        }
    }

    /// The index cached under `key`.
    pub fn get(&mut self, key: &K) -> Option<Arc<LayerIndex>> {
        self.tick += 1;
        let held = self.entries.get_mut(key)?;
        held.used = self.tick;
        Some(held.index.clone())
    }

    /// Caches `index`, which holds `size` bytes (`held_size`, measured outside the cache's
    /// lock), under `key`, evicting the least recently used to make room; an index larger than
    /// the budget replaces nothing and is not kept.
    pub fn insert(&mut self, key: K, index: Arc<LayerIndex>, size: u64) {
        self.remove(&key);
        if size > self.max_bytes {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, h)| h.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        self.bytes += size;
        let used = self.tick;
        self.entries.insert(key, Held { index, size, used });
    }

    /// Drops `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(h) = self.entries.remove(key) {
            self.bytes -= h.size;
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let mut freed = 0;
        self.entries.retain(|k, h| {
            let kept = keep(k);
            if !kept {
                freed += h.size;
            }
            kept
        });
        self.bytes -= freed;
    }

    /// Bytes the cached indexes hold together.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix() -> Arc<LayerIndex> {
        Arc::new(LayerIndex::default())
    }

    #[test]
    fn evicts_the_least_recently_used_until_the_new_index_fits() {
        let mut c = IndexCache::new(10, 100);
        c.insert(1, ix(), 40);
        c.insert(2, ix(), 40);
        assert!(c.get(&1).is_some(), "1 is now more recent than 2");
        c.insert(3, ix(), 40);
        assert!(c.get(&2).is_none());
        assert!(c.get(&1).is_some() && c.get(&3).is_some());
        assert_eq!(c.bytes(), 80);
    }

    #[test]
    fn bounded_in_entries_too() {
        let mut c = IndexCache::new(2, u64::MAX);
        for k in 0..5 {
            c.insert(k, ix(), 1);
        }
        assert_eq!(c.entries.len(), 2);
        assert!(c.get(&4).is_some() && c.get(&3).is_some());
    }

    #[test]
    fn an_index_above_the_budget_is_not_kept_and_replaces_nothing_else() {
        let mut c = IndexCache::new(10, 100);
        c.insert(1, ix(), 60);
        c.insert(2, ix(), 101);
        assert!(c.get(&2).is_none());
        assert!(c.get(&1).is_some());
        // Replacing a key with a too-large index drops the old one.
        c.insert(1, ix(), 500);
        assert!(c.get(&1).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn retain_and_remove_free_their_bytes() {
        let mut c = IndexCache::new(10, 100);
        c.insert((1, 'a'), ix(), 10);
        c.insert((1, 'b'), ix(), 20);
        c.insert((2, 'a'), ix(), 30);
        c.retain(|(l, _)| *l != 1);
        assert_eq!(c.bytes(), 30);
        c.remove(&(2, 'a'));
        assert_eq!(c.bytes(), 0);
    }
}
