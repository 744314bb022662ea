//! The connection broker: what lets a session reach a job whose node accepts
//! no inbound connection. Reverse connections through the shared port and
//! the daemon_sock dir, and the splice relay. Both ride on the schedd's one
//! TCP port (see `listener.rs`).

pub mod relay;
pub mod rendezvous;
pub mod shared_port;
mod splice;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
