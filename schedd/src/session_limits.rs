//! Per-user caps on ssh-to-job sessions: how many may be open at once, and
//! how many capabilities may be outstanding (granted, handshake not done
//! yet). Every handshake needs a fresh capability, so the second cap bounds
//! the handshakes one user can have pending on the nodes. Root is exempt.
//!
//! The table lives in memory and is rebuilt from the audit records when the
//! schedd starts; the starters' reports (started, ended, and the open list
//! in every hello) keep it right.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

pub use stj_proto::session_id::SessionId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Granted; the capability is good until `expiry` (unix seconds).
    Pending {
        expiry: i64,
    },
    Open,
}

struct Entry {
    uid: u32,
    node: String,
    state: State,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<SessionId, Entry>,
    by_uid: HashMap<u32, HashSet<SessionId>>,
}

pub struct SessionLimits {
    caps: Caps,
    inner: Mutex<Inner>,
}

#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_sessions: usize,
    pub max_pending: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyOpen(usize),
    TooManyPending(usize),
}

impl Inner {
    fn remove(&mut self, id: &SessionId) -> Option<Entry> {
        let e = self.by_id.remove(id)?;
        if let Some(set) = self.by_uid.get_mut(&e.uid) {
            set.remove(id);
            if set.is_empty() {
                self.by_uid.remove(&e.uid);
            }
        }
        Some(e)
    }

    fn insert(&mut self, id: SessionId, e: Entry) {
        self.by_uid.entry(e.uid).or_default().insert(id);
        self.by_id.insert(id, e);
    }

    /// (open, pending) for `uid`, dropping its expired capabilities.
    fn counts(&mut self, uid: u32, now: i64) -> (usize, usize) {
        let Some(ids) = self.by_uid.get(&uid) else {
            return (0, 0);
        };
        let mut expired = Vec::new();
        let (mut open, mut pending) = (0, 0);
        for id in ids {
            match self.by_id.get(id).map(|e| e.state) {
                Some(State::Open) => open += 1,
                Some(State::Pending { expiry }) if expiry >= now => pending += 1,
                _ => expired.push(*id),
            }
        }
        for id in expired {
            self.remove(&id);
        }
        (open, pending)
    }
}

impl SessionLimits {
    pub fn new(caps: Caps) -> SessionLimits {
        SessionLimits {
            caps,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new capability for `uid` if it is within the caps, counting
    /// it as pending from now on.
    pub fn admit(
        &self,
        uid: u32,
        id: SessionId,
        node: &str,
        expiry: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        // Root is not capped, so not counted either.
        if uid == 0 {
            return Ok(());
        }
        let mut inner = self.lock();
        let (open, pending) = inner.counts(uid, now);
        if open >= self.caps.max_sessions {
            return Err(Refusal::TooManyOpen(open));
        }
        if pending >= self.caps.max_pending {
            return Err(Refusal::TooManyPending(pending));
        }
        inner.insert(
            id,
            Entry {
                uid,
                node: node.to_string(),
                state: State::Pending { expiry },
            },
        );
        Ok(())
    }

    /// Restores an entry at start-up (from the audit records).
    pub fn restore(&self, uid: u32, id: SessionId, node: &str, open: bool, expiry: i64) {
        if uid == 0 {
            return;
        }
        let state = if open {
            State::Open
        } else {
            State::Pending { expiry }
        };
        self.lock().insert(
            id,
            Entry {
                uid,
                node: node.to_string(),
                state,
            },
        );
    }

    /// `node` says the session's sshd runs (only the session's own node
    /// is heard).
    pub fn started(&self, node: &str, id: &SessionId) {
        if let Some(e) = self.lock().by_id.get_mut(id).filter(|e| e.node == node) {
            e.state = State::Open;
        }
    }

    /// A capability that was never handed out stops counting.
    pub fn forget(&self, id: &SessionId) {
        self.lock().remove(id);
    }

    /// Sessions open on `node` now, as its reports say (`stj nodes`).
    pub fn open_on(&self, node: &str) -> usize {
        self.lock()
            .by_id
            .values()
            .filter(|e| e.node == node && e.state == State::Open)
            .count()
    }

    /// `node` says the session ended.
    pub fn ended(&self, node: &str, id: &SessionId) {
        let mut inner = self.lock();
        if inner.by_id.get(id).is_some_and(|e| e.node == node) {
            inner.remove(id);
        }
    }

    /// Sessions open on `node` other than `open_there` are over: the node
    /// registered again without them, or (an empty set) its starter died.
    pub fn reconcile(&self, node: &str, open_there: &HashSet<SessionId>) {
        let mut inner = self.lock();
        for id in open_there {
            if let Some(e) = inner.by_id.get_mut(id) {
                e.state = State::Open;
            }
        }
        let gone: Vec<SessionId> = inner
            .by_id
            .iter()
            .filter(|(id, e)| e.node == node && e.state == State::Open && !open_there.contains(*id))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            inner.remove(id);
        }
    }

    /// Sessions counted (open or pending) for `uid`.
    #[cfg(test)]
    fn tracked(&self, uid: u32) -> usize {
        self.lock().by_uid.get(&uid).map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_sessions: 2,
        max_pending: 1,
    };

    fn id(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn pending_cap_then_open_cap() {
        let t = SessionLimits::new(CAPS);
        t.admit(1000, id(1), "n", 100, 0).unwrap();
        // One outstanding capability is the cap.
        assert_eq!(
            t.admit(1000, id(2), "n", 100, 0),
            Err(Refusal::TooManyPending(1))
        );
        // Another user is not affected, nor is root (not even counted).
        t.admit(1001, id(3), "n", 100, 0).unwrap();
        t.admit(0, id(4), "n", 100, 0).unwrap();
        t.admit(0, id(5), "n", 100, 0).unwrap();
        assert_eq!(t.tracked(0), 0);
        t.started("n", &id(1));
        t.admit(1000, id(2), "n", 100, 0).unwrap();
        t.started("n", &id(2));
        assert_eq!(
            t.admit(1000, id(6), "n", 100, 0),
            Err(Refusal::TooManyOpen(2))
        );
        // Another node cannot end this node's session in the counts.
        t.ended("other", &id(1));
        assert!(t.admit(1000, id(6), "n", 100, 0).is_err());
        t.ended("n", &id(1));
        t.admit(1000, id(6), "n", 100, 0).unwrap();
    }

    #[test]
    fn expired_capabilities_stop_counting() {
        let t = SessionLimits::new(CAPS);
        t.admit(1000, id(1), "n", 10, 0).unwrap();
        assert!(t.admit(1000, id(2), "n", 20, 10).is_err());
        t.admit(1000, id(2), "n", 20, 11).unwrap();
    }

    #[test]
    fn reconcile_ends_what_the_node_no_longer_has() {
        let t = SessionLimits::new(Caps {
            max_sessions: 10,
            max_pending: 10,
        });
        for n in 1..=3 {
            t.admit(1000, id(n), if n == 3 { "other" } else { "n" }, 100, 0)
                .unwrap();
            t.started(if n == 3 { "other" } else { "n" }, &id(n));
        }
        t.reconcile("n", &HashSet::from([id(1)]));
        assert_eq!(t.tracked(1000), 2);
        t.reconcile("n", &HashSet::new());
        assert_eq!(t.tracked(1000), 1, "only the other node's is left");
        t.reconcile("other", &HashSet::new());
        assert_eq!(t.tracked(1000), 0);
    }
}
