//! A map whose entries expire: the daemons' tables of short-lived session
//! ids (granted capabilities, used ids, reverse routes). Expired entries are
//! dropped in insertion order, a few at a time, so each insertion costs
//! O(1) however many thousands of entries are live; scanning the whole
//! table on every insertion made issuance quadratic under load.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct ExpiringMap<K, V> {
    map: HashMap<K, (u64, V)>,
    /// (expiry, key) in insertion order. With one lifetime for all entries,
    /// that is also expiry order; an entry whose expiry is out of order
    /// lingers (still refused by `get`) until those before it expire.
    order: VecDeque<(u64, K)>,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// Drops what expired before `now`.
    pub fn prune(&mut self, now: u64) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry >= now {
                break;
            }
            let Some((expiry, key)) = self.order.pop_front() else {
                break;
            };
            // The key may have been removed, or inserted again since.
            if self.map.get(&key).is_some_and(|(e, _)| *e == expiry) {
                self.map.remove(&key);
            }
        }
    }

    /// Inserts (or replaces) `key`, live until `expiry`; prunes first.
    pub fn insert(&mut self, key: K, expiry: u64, value: V, now: u64) {
        self.prune(now);
        self.order.push_back((expiry, key.clone()));
        self.map.insert(key, (expiry, value));
    }

    /// The live entry for `key` at `now`.
    pub fn get_mut(&mut self, key: &K, now: u64) -> Option<&mut V> {
        self.map
            .get_mut(key)
            .filter(|(e, _)| *e >= now)
            .map(|(_, v)| v)
    }

    pub fn get(&self, key: &K, now: u64) -> Option<&V> {
        self.map.get(key).filter(|(e, _)| *e >= now).map(|(_, v)| v)
    }

    /// Whether `key` is held at all, expired or not (pruned or not).
    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Takes the live entry for `key`.
    pub fn remove(&mut self, key: &K, now: u64) -> Option<V> {
        self.map
            .remove(key)
            .filter(|(e, _)| *e >= now)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_pruned_in_order() {
        let mut m = ExpiringMap::default();
        m.insert(1, 10, "a", 0);
        m.insert(2, 20, "b", 0);
        assert_eq!(m.get(&1, 10), Some(&"a"));
        assert_eq!(m.get(&1, 11), None, "expired entries are not returned");
        m.insert(3, 30, "c", 15);
        assert!(!m.contains_key(&1), "pruned on insert");
        assert!(m.contains_key(&2));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_key_inserted_again_is_not_pruned_by_its_old_expiry() {
        let mut m = ExpiringMap::default();
        m.insert(1, 10, "old", 0);
        m.insert(1, 50, "new", 5);
        m.prune(20);
        assert_eq!(m.get(&1, 20), Some(&"new"));
    }

    #[test]
    fn removed_keys_stay_removed() {
        let mut m = ExpiringMap::default();
        m.insert(1, 10, "a", 0);
        assert_eq!(m.remove(&1, 5), Some("a"));
        assert_eq!(m.remove(&1, 5), None);
        m.prune(100);
        assert!(m.is_empty());
    }

    #[test]
    fn a_hundred_thousand_live_entries_insert_in_constant_time_each() {
        // Not a timing test: it checks that pruning touches only the front.
        let mut m = ExpiringMap::default();
        for i in 0..100_000u64 {
            m.insert(i, 1_000 + i, (), 0);
        }
        assert_eq!(m.order.len(), 100_000);
        m.insert(100_000, 200_000, (), 1_010);
        assert_eq!(m.len(), 100_000 - 10 + 1);
    }
}
