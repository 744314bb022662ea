//! What the starter tells the schedd about its jobs and sessions. Jobs and
//! sessions send these into one channel; the link forwards them, and keeps
//! what must survive a reconnect (see `link.rs`).

use stj_proto::starter::{JobExited, SessionEnded, SessionStarted};
use tokio::sync::mpsc;

pub enum Report {
    JobStarted(u64),
    JobExited(JobExited),
    SessionStarted(SessionStarted),
    SessionEnded(SessionEnded),
}

pub type Reporter = mpsc::UnboundedSender<Report>;
pub type Reports = mpsc::UnboundedReceiver<Report>;
