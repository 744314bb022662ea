//! The starters connected right now, when the others were last seen, and
//! what `stj nodes` says of each.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use stj_proto::starter::ScheddMessage;
use tokio::sync::mpsc;

pub struct StarterHandle {
    pub conn_id: u64,
    pub slots: u32,
    pub tx: mpsc::Sender<Box<ScheddMessage>>,
    /// Signs this starter's capabilities (rotated per registration).
    pub key: [u8; 32],
    /// Where it takes direct sessions; empty if nowhere.
    pub session_addr: String,
}

/// What the capability issuer needs about a connected starter.
pub struct SessionTarget {
    pub key: [u8; 32],
    pub session_addr: String,
}

/// How a starter's link stands, for `stj nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// No heartbeat for three periods.
    Silent,
    /// Closed or reset.
    Gone,
}

/// What the registry keeps of a starter it has seen since start.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub state: LinkState,
    /// Unix time the state began.
    pub since: i64,
    pub slots: u32,
    pub version: String,
    pub address: String,
    /// Unix time anything was last heard on its link (shared with the link,
    /// which bumps it on every frame).
    pub last_heard: Arc<AtomicI64>,
}

/// Why a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    Silent,
    Closed,
}

#[derive(Default)]
struct Inner {
    connected: HashMap<String, StarterHandle>,
    gone_since: HashMap<String, Instant>,
    seen: BTreeMap<String, NodeView>,
}

fn unix_now() -> i64 {
    stj_proto::capability::unix_now() as i64
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets the current connection of `name`, if any: dropping its sender
    /// ends that connection's writer, so a starter that re-registers replaces
    /// its stale self.
    pub fn disconnect(&self, name: &str) {
        let mut g = self.lock();
        if g.connected.remove(name).is_some() {
            g.gone_since.insert(name.to_string(), Instant::now());
        }
    }

    /// `name` registered: connected from `address`, running `version`;
    /// `last_heard` is the link's, bumped on every frame.
    pub fn insert(
        &self,
        name: &str,
        handle: StarterHandle,
        address: String,
        version: String,
        last_heard: Arc<AtomicI64>,
    ) {
        let mut g = self.lock();
        g.gone_since.remove(name);
        g.seen.insert(
            name.to_string(),
            NodeView {
                state: LinkState::Connected,
                since: unix_now(),
                slots: handle.slots,
                version,
                address,
                last_heard,
            },
        );
        g.connected.insert(name.to_string(), handle);
    }

    /// Removes `name` only if it is still the connection `conn_id`, which
    /// ended as `how`.
    pub fn remove_if(&self, name: &str, conn_id: u64, how: Lost) {
        let mut g = self.lock();
        if g.connected.get(name).map(|h| h.conn_id) == Some(conn_id) {
            g.connected.remove(name);
            g.gone_since.insert(name.to_string(), Instant::now());
            if let Some(v) = g.seen.get_mut(name) {
                (v.state, v.since) = match how {
                    // Silent since it was last heard, not since we noticed.
                    Lost::Silent => (LinkState::Silent, v.last_heard.load(Ordering::Relaxed)),
                    Lost::Closed => (LinkState::Gone, unix_now()),
                };
            }
        }
    }

    /// Every starter seen since start, by name.
    pub fn views(&self) -> Vec<(String, NodeView)> {
        self.views_after("", usize::MAX)
    }

    /// The first `limit` starters seen since start whose names sort after
    /// `after` ("": from the first), by name: a page of `stj nodes`.
    pub fn views_after(&self, after: &str, limit: usize) -> Vec<(String, NodeView)> {
        let g = self.lock();
        g.seen
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Queues a message for a connected starter. False if it is not connected
    /// or its queue is full (the link is then too slow to be healthy, and
    /// reconciliation at its next registration repairs what was missed).
    pub fn send(&self, name: &str, msg: ScheddMessage) -> bool {
        let g = self.lock();
        match g.connected.get(name) {
            Some(h) => h.tx.try_send(Box::new(msg)).is_ok(),
            None => false,
        }
    }

    pub fn session_target(&self, name: &str) -> Option<SessionTarget> {
        self.lock().connected.get(name).map(|h| SessionTarget {
            key: h.key,
            session_addr: h.session_addr.clone(),
        })
    }

    pub fn is_connected(&self, name: &str) -> bool {
        self.lock().connected.contains_key(name)
    }

    pub fn slots(&self) -> Vec<(String, u32)> {
        self.lock()
            .connected
            .iter()
            .map(|(n, h)| (n.clone(), h.slots))
            .collect()
    }

    /// When `name` was last connected; None if it is connected now or was
    /// never seen since this schedd started.
    pub fn gone_since(&self, name: &str) -> Option<Instant> {
        self.lock().gone_since.get(name).copied()
    }
}
