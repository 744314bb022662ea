//! How much of a node's handshake capacity one peer can hold. Work (key
//! generation, files, sshd) is bounded by a node-wide number of slots, and
//! no slot goes to a connection before its Hello proved it holds a real
//! capability (see `handshake.rs`). Beyond that (`stj_cli::shares`):
//! - one user's handshakes wait for a per-user share of the slots, so a
//!   user with many capabilities slows only themselves;
//! - one capability serves one connection at a time;
//! - direct connections that have not sent their Hello yet are bounded per
//!   source address and in all, the oldest silent one evicted first.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use stj_proto::session_id::SessionId;

use stj_cli::shares::{KeyedShares, Share, Unheard, UnheardConn};

/// Handshakes doing work at once on this node.
pub const MAX_HANDSHAKES: usize = 1024;
/// Of those, the most one user's capabilities may hold; more wait.
pub const MAX_HANDSHAKES_PER_USER: usize = 32;
/// Direct connections not heard from yet, per source address and in all
/// (well below the daemon's fd limit).
pub const MAX_UNHEARD_PER_SOURCE: usize = 1024;
pub const MAX_UNHEARD: usize = 4096;

pub struct Admission {
    slots: KeyedShares<u32>,
    in_flight: Arc<Mutex<HashSet<SessionId>>>,
    unheard: Unheard,
}

impl Admission {
    /// The caps, as shares of the starter's fd limit where it is small:
    /// silent connections take at most an eighth of it (a quarter of that
    /// per source), handshakes at most an eighth, so a flood of the session
    /// port never leaves jobs without the fds they need to start.
    pub fn for_fd_limit(limit: u64) -> Admission {
        let eighth = (limit / 8) as usize;
        let unheard = MAX_UNHEARD.min(eighth).max(16);
        Admission {
            slots: KeyedShares::new(MAX_HANDSHAKES.min(eighth).max(8), MAX_HANDSHAKES_PER_USER),
            in_flight: Arc::default(),
            unheard: Unheard::new(MAX_UNHEARD_PER_SOURCE.min(unheard / 4).max(4), unheard),
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::for_fd_limit(u64::MAX)
    }
}

/// Marks a session id as in a handshake; freed when dropped.
pub struct InFlight {
    id: SessionId,
    set: Arc<Mutex<HashSet<SessionId>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Admission {
    /// The session id is now in a handshake; None if another connection
    /// already uses it.
    pub fn claim(&self, id: SessionId) -> Option<InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
            .then(|| InFlight {
                id,
                set: self.in_flight.clone(),
            })
    }

    /// Waits for a slot within `uid`'s share. The caller bounds the wait
    /// (the handshake deadline): a burst is backpressure, not a refusal.
    pub async fn slot(&self, uid: u32) -> Share<u32> {
        self.slots.acquire(uid).await
    }

    /// A new direct connection from `ip`, not heard from yet.
    pub fn unheard(&self, ip: IpAddr) -> UnheardConn {
        self.unheard.arrived(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_serves_one_connection_at_a_time() {
        let a = Admission::default();
        let first = a.claim(SessionId([1; 16])).unwrap();
        assert!(a.claim(SessionId([1; 16])).is_none());
        assert!(a.claim(SessionId([2; 16])).is_some());
        drop(first);
        assert!(a.claim(SessionId([1; 16])).is_some());
    }
}
