//! The schedd's shared state: what the listener, the starter links, the
//! user API, the broker and the matchmaker all hold an `Arc` of.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Notify};

use crate::config::ScheddConfig;
use crate::{audit, broker, denials, enrolment, queue, registry, session_limits, user_socket};

/// State shared by the listener, the links, the user API and the matchmaker.
pub struct Schedd {
    pub config: ScheddConfig,
    pub queue: queue::Queue,
    pub(crate) registry: registry::Registry,
    /// Which key may register as which node name.
    pub(crate) enrolment: enrolment::Enrolment,
    /// Bumped on every job change; `Wait` calls watch it.
    pub(crate) changes: watch::Sender<u64>,
    /// Wakes the matchmaker.
    pub(crate) schedule: Notify,
    /// Serialises matchmaking with starter registration.
    pub(crate) pool_lock: tokio::sync::Mutex<()>,
    pub(crate) started: Instant,
    pub(crate) rendezvous: broker::rendezvous::Rendezvous,
    pub(crate) audit: audit::AuditLog,
    pub(crate) limits: session_limits::SessionLimits,
    /// The port as clients on this host dial it.
    pub(crate) broker_addr: String,
    /// What peers may hold, as shares of the fd limit.
    pub(crate) budget: Budget,
    /// Relayed sessions at once (each holds two sockets and two pipes).
    pub(crate) relays: Arc<tokio::sync::Semaphore>,
    /// Denied requests per user, for the audit's rate.
    pub(crate) denials: denials::Denials,
    /// Cancelled when the schedd drains: every connection task (starter
    /// links, relay halves, routing) ends and closes its sockets.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// Slurm, when the pool's jobs are Slurm's (`jobs = "slurm"`).
    pub(crate) slurm: Option<crate::slurm::SlurmSource>,
    /// Starter registrations at a bounded rate (a restart's storm).
    pub(crate) registrations: crate::pace::Pace,
    /// What Prometheus scrapes (metrics_listen).
    pub(crate) metrics: crate::metrics::Metrics,
    /// TCP connections on the port at once (budget.tcp of them).
    pub(crate) tcp_slots: Arc<tokio::sync::Semaphore>,
}

/// The schedd's fd limit, divided among what peers can make it hold, so
/// that no kind of peer can exhaust it for the others: half for TCP
/// connections (starter links, relay halves, routing), a quarter for the
/// pipes of relayed sessions (`relays` counts sessions, a sixteenth of the
/// limit: two pipes, four fds each), a sixteenth for users' connections to
/// the UNIX socket and a thirty-second for root's; the rest (database,
/// logs, dial-outs) stays free.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub tcp: usize,
    pub relays: usize,
    pub user_socket: user_socket::Caps,
}

impl Budget {
    pub fn for_fd_limit(limit: u64) -> Budget {
        Budget {
            tcp: (limit / 2).max(64) as usize,
            relays: (limit / 16).max(16) as usize,
            user_socket: user_socket::Caps::for_fd_limit(limit),
        }
    }
}

impl Schedd {
    /// Where capability issuance learns about jobs (the seam of DESIGN
    /// §12): this schedd's own queue, or Slurm.
    pub(crate) fn jobs(&self) -> &dyn crate::job_source::JobSource {
        match &self.slurm {
            Some(s) => s,
            None => &self.queue,
        }
    }

    /// The scrape's text: counters as they stand, gauges read now.
    pub(crate) fn metrics_text(&self) -> String {
        use crate::registry::LinkState;
        let views = self.registry.views();
        let count = |s: LinkState| views.iter().filter(|(_, v)| v.state == s).count() as i64;
        let (idle, running) = self.queue.live_counts().unwrap_or((0, 0));
        let held = |sem: &tokio::sync::Semaphore, cap: usize| {
            (cap - sem.available_permits().min(cap)) as i64
        };
        self.metrics.render(crate::metrics::Now {
            starters: [
                ("connected", count(LinkState::Connected)),
                ("silent", count(LinkState::Silent)),
                ("gone", count(LinkState::Gone)),
            ],
            jobs: [("idle", idle as i64), ("running", running as i64)],
            audit_backlog: self.audit.backlog() as i64,
            connections: vec![
                (
                    "tcp",
                    held(&self.tcp_slots, self.budget.tcp),
                    self.budget.tcp as i64,
                ),
                (
                    "relayed_sessions",
                    held(&self.relays, self.budget.relays),
                    self.budget.relays as i64,
                ),
            ],
        })
    }

    pub(crate) fn job_changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}
