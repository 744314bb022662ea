//! How much of a node's handshake capacity one peer can hold. Work (key
//! generation, files, sshd) is bounded by a node-wide number of slots, and
//! no slot goes to a connection before its Hello proved it holds a real
//! capability (see `handshake.rs`). Beyond that:
//! - one user's handshakes wait for a per-user share of the slots, so a
//!   user with many capabilities slows only themselves;
//! - one capability serves one connection at a time;
//! - direct connections that have not sent their Hello yet (they hold
//!   nothing but a socket) are bounded per source address and in all; when
//!   a bound is reached the *oldest* silent one is closed, so a flood evicts
//!   its own connections first and a real client, which sends its Hello at
//!   once, still gets in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Handshakes doing work at once on this node.
pub const MAX_HANDSHAKES: usize = 1024;
/// Of those, the most one user's capabilities may hold; more wait.
pub const MAX_HANDSHAKES_PER_USER: usize = 32;
/// Direct connections not heard from yet, per source address and in all
/// (well below the daemon's fd limit).
pub const MAX_UNHEARD_PER_SOURCE: usize = 1024;
pub const MAX_UNHEARD: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Admission {
    slots: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
    in_flight: Arc<Mutex<HashSet<[u8; 16]>>>,
    unheard: Arc<Mutex<Unheard>>,
    per_user_cap: usize,
    unheard_per_source: usize,
    unheard_total: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(
            MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_USER,
            MAX_UNHEARD_PER_SOURCE,
            MAX_UNHEARD,
        )
    }
}

/// Direct connections waiting for their Hello, oldest first.
#[derive(Default)]
struct Unheard {
    next: u64,
    live: HashMap<u64, (IpAddr, oneshot::Sender<()>)>,
    order: VecDeque<u64>,
    by_source: HashMap<IpAddr, VecDeque<u64>>,
}

impl Unheard {
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

/// Held while a handshake works; releases its share when dropped.
pub struct Slot {
    _node: OwnedSemaphorePermit,
    _user: UserShare,
}

struct UserShare {
    permit: Option<OwnedSemaphorePermit>,
    uid: u32,
    map: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
}

impl Drop for UserShare {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Forget users with nothing in flight, so the map stays small.
        let mut m = lock(&self.map);
        if m.get(&self.uid).is_some_and(|s| Arc::strong_count(s) == 1) {
            m.remove(&self.uid);
        }
    }
}

/// Marks a session id as in a handshake; freed when dropped.
pub struct InFlight {
    id: [u8; 16],
    set: Arc<Mutex<HashSet<[u8; 16]>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

/// A direct connection not heard from yet. `evicted` resolves when a
/// newer connection took its place; dropping it (the Hello came, or the
/// connection ended) releases its place.
pub struct UnheardConn {
    id: u64,
    evicted: oneshot::Receiver<()>,
    book: Arc<Mutex<Unheard>>,
}

impl UnheardConn {
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
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

impl Admission {
    pub fn new(
        slots: usize,
        per_user: usize,
        unheard_per_source: usize,
        unheard_total: usize,
    ) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(slots)),
            per_user: Arc::default(),
            in_flight: Arc::default(),
            unheard: Arc::default(),
            per_user_cap: per_user,
            unheard_per_source,
            unheard_total,
        }
    }

    /// The session id is now in a handshake; None if another connection
    /// already uses it.
    pub fn claim(&self, id: [u8; 16]) -> Option<InFlight> {
        lock(&self.in_flight).insert(id).then(|| InFlight {
            id,
            set: self.in_flight.clone(),
        })
    }

    /// Waits for a slot within `uid`'s share. The caller bounds the wait
    /// (the handshake deadline): a burst is backpressure, not a refusal.
    pub async fn slot(&self, uid: u32) -> Slot {
        let sem = lock(&self.per_user)
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user_cap)))
            .clone();
        let user = UserShare {
            permit: Some(
                sem.acquire_owned()
                    .await
                    .expect("the per-user semaphore is never closed"),
            ),
            uid,
            map: self.per_user.clone(),
        };
        let node = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        Slot {
            _node: node,
            _user: user,
        }
    }

    /// A new direct connection from `ip`, not heard from yet. Over a bound,
    /// the oldest silent connection of the same source (or, over the total,
    /// of any source) is evicted to make room.
    pub fn unheard(&self, ip: IpAddr) -> UnheardConn {
        let mut b = lock(&self.unheard);
        if b.by_source.get(&ip).map_or(0, |q| q.len()) >= self.unheard_per_source {
            if let Some(oldest) = b.by_source.get(&ip).and_then(|q| q.front().copied()) {
                b.evict(oldest);
            }
        }
        while b.live.len() >= self.unheard_total {
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
            book: self.unheard.clone(),
        }
    }

    #[cfg(test)]
    fn tracked_users(&self) -> usize {
        lock(&self.per_user).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_user_cannot_take_every_slot() {
        let a = Admission::new(4, 2, 8, 8);
        let _a1 = a.slot(1000).await;
        let _a2 = a.slot(1000).await;
        // A third handshake of the same user waits...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.slot(1000))
                .await
                .is_err()
        );
        // ...while another user still gets in.
        let b = tokio::time::timeout(Duration::from_millis(50), a.slot(1001))
            .await
            .expect("another user is not blocked");
        drop(b);
        drop(_a1);
        assert_eq!(
            a.tracked_users(),
            1,
            "users with nothing in flight are forgotten"
        );
    }

    #[test]
    fn a_capability_serves_one_connection_at_a_time() {
        let a = Admission::default();
        let first = a.claim([1; 16]).unwrap();
        assert!(a.claim([1; 16]).is_none());
        assert!(a.claim([2; 16]).is_some());
        drop(first);
        assert!(a.claim([1; 16]).is_some());
    }

    #[test]
    fn a_flood_evicts_its_own_oldest_silent_connections_first() {
        let a = Admission::new(4, 2, 2, 2);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let mut f1 = a.unheard(flood);
        let mut f2 = a.unheard(flood);
        // The source's third connection evicts its first.
        let _f3 = a.unheard(flood);
        assert!(f1.evicted.try_recv().is_ok());
        assert!(f2.evicted.try_recv().is_err());
        // Another source over the total evicts the oldest of all.
        let mut real = a.unheard("10.0.0.2".parse().unwrap());
        assert!(f2.evicted.try_recv().is_ok());
        assert!(real.evicted.try_recv().is_err());
        // A connection that was heard leaves: room without evicting.
        drop(_f3);
        let _again = a.unheard(flood);
        assert!(real.evicted.try_recv().is_err());
        assert!(lock(&a.unheard).live.len() <= 2);
    }
}
