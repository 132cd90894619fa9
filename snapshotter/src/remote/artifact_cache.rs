//! A small map bounded in entries and age, for the per-manifest artifact lookups of the remote
//! path: every image a node ever pulls used to leave its entry behind for the daemon's life.
//!
//! Entries older than the TTL are dropped when met; inserting into a full map drops the expired
//! ones, then the least recently used. Meant for a few hundred entries: eviction scans them.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    entries: HashMap<K, Slot<V>>,
    max_entries: usize,
    ttl: Duration,
    /// Use counter: a larger value is more recent.
    tick: u64,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    inserted: Instant,
    used: u64,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    /// At most `max_entries` (at least one), each for at most `ttl`.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            ttl,
            tick: 0,
        }
    }

    /// The value of `key`, unless absent or expired (then it is dropped).
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let expired = self.entries.get(key)?.inserted.elapsed() >= self.ttl;
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.tick += 1;
        let slot = self.entries.get_mut(key)?;
        slot.used = self.tick;
        Some(&slot.value)
    }

    /// Sets `key` to `value` (its age starts over), evicting to make room.
    pub fn insert(&mut self, key: K, value: V) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            self.entries.retain(|_, s| s.inserted.elapsed() < ttl);
            if self.entries.len() >= self.max_entries {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.tick += 1;
        let slot = Slot {
            value,
            inserted: Instant::now(),
            used: self.tick,
        };
        self.entries.insert(key, slot);
    }

    /// Drops `key` (an artifact whose layer failed verification).
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Entries held (expired ones included until met).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_map_drops_the_least_recently_used() {
        let mut m = BoundedMap::new(3, Duration::from_secs(3600));
        for k in 0..3 {
            m.insert(k, k * 10);
        }
        assert_eq!(m.get(&0), Some(&0)); // 1 is now the least recently used
        m.insert(3, 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&0), Some(&0));
        assert_eq!(m.get(&2), Some(&20));
        assert_eq!(m.get(&3), Some(&30));
        // Replacing a key does not evict another.
        m.insert(3, 31);
        assert_eq!(m.get(&3), Some(&31));
        assert_eq!(m.len(), 3);
        // However many keys pass through, the map stays within its bound.
        for k in 100..10_000 {
            m.insert(k, k);
        }
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn expired_entries_are_gone() {
        let mut m = BoundedMap::new(2, Duration::ZERO);
        m.insert("a", 1);
        assert_eq!(m.get(&"a"), None);
        assert!(m.is_empty());
        let mut m = BoundedMap::new(2, Duration::from_millis(20));
        m.insert("a", 1);
        m.insert("b", 2);
        std::thread::sleep(Duration::from_millis(30));
        // Both expired: inserting drops them rather than the least recently used alone.
        m.insert("c", 3);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&"c"), Some(&3));
    }
}
