//! The connection broker: what lets a session reach a job whose node accepts
//! no inbound connection. Reverse connections through the shared port and
//! the daemon_sock dir, and the splice relay. Both ride on the schedd's one
//! TCP port (see `listener.rs`).

pub mod connect_back;
pub mod relay;
pub mod rendezvous;
pub mod shared_port;
mod splice;

pub use stj_proto::capability::unix_now as now;
