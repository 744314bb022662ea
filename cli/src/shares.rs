//! Shares of a daemon's capacity, for what unauthenticated or barely
//! authenticated peers can make it hold. Both daemons use them:
//!
//! - `Unheard`: connections that have not said anything yet hold only a
//!   socket; they are bounded per source address and in all, and when a
//!   bound is reached the *oldest* silent one is closed, so a flood evicts
//!   its own connections first while a real peer, which speaks at once,
//!   still gets in.
//! - `KeyedShares`: a node- or daemon-wide number of working slots, of which
//!   one key (a user, a source address) holds at most a share; more of the
//!   same key wait (backpressure, bounded by the caller's deadline), other
//!   keys are not held up.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connections not heard from yet, oldest first.
pub struct Unheard {
    book: Arc<Mutex<Book>>,
    per_source: usize,
    total: usize,
}

#[derive(Default)]
struct Book {
    next: u64,
    live: HashMap<u64, (IpAddr, oneshot::Sender<()>)>,
    order: VecDeque<u64>,
    by_source: HashMap<IpAddr, VecDeque<u64>>,
}

impl Book {
    /// Closes connection `id` (its task sees the eviction).
    fn evict(&mut self, id: u64) {
        if let Some((ip, tx)) = self.live.remove(&id) {
            self.forget_source(ip, id);
            let _ = tx.send(());
        }
    }

    fn forget_source(&mut self, ip: IpAddr, id: u64) {
        if let Some(q) = self.by_source.get_mut(&ip) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                self.by_source.remove(&ip);
            }
        }
    }
}

/// A connection not heard from yet. `evicted` resolves when a newer one
/// took its place; dropping it (it spoke, or it ended) frees its place.
pub struct UnheardConn {
    id: u64,
    evicted: oneshot::Receiver<()>,
    book: Arc<Mutex<Book>>,
}

impl UnheardConn {
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }

    /// Whether it was evicted already (no waiting).
    pub fn was_evicted(&mut self) -> bool {
        self.evicted.try_recv().is_ok()
    }
}

impl Drop for UnheardConn {
    fn drop(&mut self) {
        let mut b = lock(&self.book);
        if let Some((ip, _)) = b.live.remove(&self.id) {
            b.forget_source(ip, self.id);
        }
    }
}

impl Unheard {
    pub fn new(per_source: usize, total: usize) -> Unheard {
        Unheard {
            book: Arc::default(),
            per_source,
            total,
        }
    }

    /// A new connection from `ip`. Over a bound, the oldest silent
    /// connection of the same source (or, over the total, of any source) is
    /// evicted to make room.
    pub fn arrived(&self, ip: IpAddr) -> UnheardConn {
        let mut b = lock(&self.book);
        if b.by_source.get(&ip).map_or(0, |q| q.len()) >= self.per_source {
            if let Some(oldest) = b.by_source.get(&ip).and_then(|q| q.front().copied()) {
                b.evict(oldest);
            }
        }
        while b.live.len() >= self.total {
            let Some(oldest) = b.order.pop_front() else {
                break;
            };
            b.evict(oldest);
        }
        // `order` keeps ids that already left; drop them from the front.
        while b.order.front().is_some_and(|id| !b.live.contains_key(id)) {
            b.order.pop_front();
        }
        let id = b.next;
        b.next += 1;
        let (tx, rx) = oneshot::channel();
        b.live.insert(id, (ip, tx));
        b.order.push_back(id);
        b.by_source.entry(ip).or_default().push_back(id);
        UnheardConn {
            id,
            evicted: rx,
            book: self.book.clone(),
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.book).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Working slots, of which each key holds at most a share.
pub struct KeyedShares<K> {
    slots: Arc<Semaphore>,
    per_key: Arc<Mutex<HashMap<K, Arc<Semaphore>>>>,
    share: usize,
}

/// A slot and its key's share; both given back when dropped.
pub struct Share<K: Hash + Eq + Copy> {
    _slot: OwnedSemaphorePermit,
    _key: KeyShare<K>,
}

struct KeyShare<K: Hash + Eq + Copy> {
    permit: Option<OwnedSemaphorePermit>,
    key: K,
    map: Arc<Mutex<HashMap<K, Arc<Semaphore>>>>,
}

impl<K: Hash + Eq + Copy> Drop for KeyShare<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Forget keys with nothing held, so the map stays small.
        let mut m = lock(&self.map);
        if m.get(&self.key).is_some_and(|s| Arc::strong_count(s) == 1) {
            m.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq + Copy> KeyedShares<K> {
    pub fn new(slots: usize, share: usize) -> KeyedShares<K> {
        KeyedShares {
            slots: Arc::new(Semaphore::new(slots)),
            per_key: Arc::default(),
            share,
        }
    }

    /// Waits for a slot within `key`'s share (the caller bounds the wait).
    pub async fn acquire(&self, key: K) -> Share<K> {
        let sem = lock(&self.per_key)
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
            .clone();
        let key_share = KeyShare {
            permit: Some(
                sem.acquire_owned()
                    .await
                    .expect("a share semaphore is never closed"),
            ),
            key,
            map: self.per_key.clone(),
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        Share {
            _slot: slot,
            _key: key_share,
        }
    }

    /// Keys holding something now.
    pub fn keys(&self) -> usize {
        lock(&self.per_key).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_cannot_take_every_slot() {
        let a = KeyedShares::new(4, 2);
        let _a1 = a.acquire(1000u32).await;
        let a2 = a.acquire(1000).await;
        // A third of the same key waits...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.acquire(1000))
                .await
                .is_err()
        );
        // ...while another key still gets in.
        let b = tokio::time::timeout(Duration::from_millis(50), a.acquire(1001))
            .await
            .expect("another key is not blocked");
        drop(b);
        drop(a2);
        assert_eq!(a.keys(), 1, "keys holding nothing are forgotten");
    }

    #[test]
    fn a_flood_evicts_its_own_oldest_silent_connections_first() {
        let a = Unheard::new(2, 2);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let mut f1 = a.arrived(flood);
        let mut f2 = a.arrived(flood);
        // The source's third connection evicts its first.
        let f3 = a.arrived(flood);
        assert!(f1.was_evicted());
        assert!(!f2.was_evicted());
        // Another source over the total evicts the oldest of all.
        let mut real = a.arrived("10.0.0.2".parse().unwrap());
        assert!(f2.was_evicted());
        assert!(!real.was_evicted());
        // A connection that spoke leaves: room without evicting.
        drop(f3);
        let _again = a.arrived(flood);
        assert!(!real.was_evicted());
        assert!(a.len() <= 2);
    }
}
