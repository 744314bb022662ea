//! Each session id is accepted once. Entries live until their capability
//! expires; after that the expiry check refuses the capability anyway.

use std::sync::Mutex;
use stj_proto::session_id::SessionId;

use stj_cli::expiring::ExpiringMap;

#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<ExpiringMap<SessionId, ()>>,
}

impl ReplayCache {
    /// Records `id`; false if it was already used.
    pub fn first_use(&self, id: SessionId, expiry: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.prune(now);
        if seen.contains_key(&id) {
            return false;
        }
        seen.insert(id, expiry, (), now);
        true
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_refused_until_expiry_pruning() {
        let c = ReplayCache::default();
        assert!(c.first_use(SessionId([1; 16]), 100, 50));
        assert!(!c.first_use(SessionId([1; 16]), 100, 60));
        assert!(c.first_use(SessionId([2; 16]), 100, 60));
        // Pruned once expired (the expiry check refuses it by then anyway).
        assert!(c.first_use(SessionId([1; 16]), 300, 200));
    }
}
