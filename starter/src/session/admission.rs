//! How much of a node's handshake capacity one peer can hold. Work (key
//! generation, files, sshd) is bounded by a node-wide number of slots, and
//! no slot goes to a connection before its Hello proved it holds a real
//! capability (see `handshake.rs`). Beyond that:
//! - one user's handshakes wait for a per-user share of the slots, so a
//!   user with many capabilities slows only themselves;
//! - one capability serves one connection at a time;
//! - one source address may hold only so many direct connections that have
//!   not finished their handshake (silent ones included).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshakes doing work at once on this node.
pub const MAX_HANDSHAKES: usize = 256;
/// Of those, the most one user's capabilities may hold; more wait.
pub const MAX_HANDSHAKES_PER_USER: usize = 32;
/// Direct connections from one address not yet through their handshake.
pub const MAX_UNFINISHED_PER_SOURCE: usize = 512;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Admission {
    slots: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
    in_flight: Arc<Mutex<HashSet<[u8; 16]>>>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_user_cap: usize,
    per_source_cap: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(
            MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_USER,
            MAX_UNFINISHED_PER_SOURCE,
        )
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

/// One unfinished direct connection of a source address.
pub struct SourceShare {
    ip: IpAddr,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut m = lock(&self.map);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(slots: usize, per_user: usize, per_source: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(slots)),
            per_user: Arc::default(),
            in_flight: Arc::default(),
            per_source: Arc::default(),
            per_user_cap: per_user,
            per_source_cap: per_source,
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

    /// Counts one more unfinished connection from `ip`; None over the cap.
    pub fn source(&self, ip: IpAddr) -> Option<SourceShare> {
        let mut m = lock(&self.per_source);
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_source_cap {
            return None;
        }
        *n += 1;
        Some(SourceShare {
            ip,
            map: self.per_source.clone(),
        })
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
        let a = Admission::new(4, 2, 8);
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
    fn sources_are_capped_and_released() {
        let a = Admission::new(4, 2, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let s1 = a.source(ip).unwrap();
        let _s2 = a.source(ip).unwrap();
        assert!(a.source(ip).is_none());
        assert!(a.source("10.0.0.2".parse().unwrap()).is_some());
        drop(s1);
        assert!(a.source(ip).is_some());
    }
}
