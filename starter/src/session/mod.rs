//! Sessions: a data connection arrives, the handshake of DESIGN §3 checks
//! its capability, and sshd runs on that very socket inside the job.

mod admission;
mod handshake;
mod home;
mod host_cert;
pub(crate) mod innermost;
mod landing;
mod replay;
mod sshd;
mod traffic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use stj_proto::session_id::SessionId;

use stj_proto::starter::{SessionEnded, SessionStarted};

use tokio::net::{TcpListener, TcpStream};

use crate::job_locator::JobLocator;
use crate::report::{Report, Reporter};

/// The key the schedd gave this starter at its latest registration; it
/// signs (HMAC) every capability for this node.
#[derive(Default)]
pub struct StarterKey(RwLock<Option<[u8; 32]>>);

impl StarterKey {
    pub fn set(&self, key: [u8; 32]) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }
    pub fn get(&self) -> Option<[u8; 32]> {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct SshdConfig {
    /// sshd_config lines from the admin's knobs (forwarding), then extras.
    pub extra: Vec<String>,
    pub debug: bool,
}

pub struct Sessions {
    pub node: String,
    pub key: Arc<StarterKey>,
    /// Where sessions enter jobs; nothing else of the jobs is theirs.
    pub jobs: Arc<dyn JobLocator>,
    pub sshd: SshdConfig,
    /// The sshd kit, or why this node cannot serve sessions.
    pub kit: Result<crate::kit::Kit, String>,
    replay: replay::ReplayCache,
    /// Handshake slots and who may hold how many of them. A slot is taken
    /// only once a Hello proved it holds a real capability: a connection
    /// that says nothing, or forges, holds no slot.
    admission: admission::Admission,
    /// Sessions whose sshd runs now, for the hello after a reconnect.
    open: Mutex<HashMap<SessionId, SessionStarted>>,
    reporter: Reporter,
    /// What Prometheus scrapes (metrics_listen).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How a data connection reached this node.
#[derive(Clone, Copy, Debug)]
pub enum DataPath {
    Direct,
    Reverse,
    Relay,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Direct => "direct",
            DataPath::Reverse => "reverse",
            DataPath::Relay => "relay",
        }
    }
}

/// The home of the account a job runs as, from the node's passwd: only when
/// the job runs as that account (a slot user borrows the uid of nobody).
fn passwd_home(spec: &crate::container::ContainerSpec) -> Option<String> {
    nix::unistd::User::from_uid(spec.uid.into())
        .ok()
        .flatten()
        .filter(|u| u.name == spec.user_name)
        .map(|u| u.dir.to_string_lossy().into_owned())
}

use stj_proto::capability::unix_now as now;

impl Sessions {
    pub fn new(
        node: String,
        key: Arc<StarterKey>,
        jobs: Arc<dyn JobLocator>,
        reporter: Reporter,
        sshd: SshdConfig,
        kit: Result<crate::kit::Kit, String>,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            node,
            key,
            sshd,
            kit,
            replay: replay::ReplayCache::default(),
            admission: admission::Admission::for_fd_limit(stj_cli::daemon::fd_limit()),
            open: Mutex::new(HashMap::new()),
            reporter,
            jobs,
            metrics: Arc::new(crate::metrics::Metrics::default()),
        })
    }

    /// Runs the handshake on a fresh data connection and, if it succeeds,
    /// sshd inside the job on the same socket.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, path: DataPath) {
        self.serve_with(stream, peer, path, None).await
    }

    /// `serve` for a direct connection that is evicted if a newer one needs
    /// its place before its Hello arrives.
    async fn serve_with(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        path: DataPath,
        unheard: Option<stj_cli::shares::UnheardConn>,
    ) {
        let accepted = handshake::run(&self, stream, peer, unheard, path.as_str()).await;
        let Some(accepted) = accepted else { return };
        let id = accepted.capability.session_id;
        let started = SessionStarted {
            session_id: id.to_vec(),
            job_id: accepted.capability.job_id,
            path: path.as_str().into(),
            started_at: now() as i64,
        };
        self.open_sessions().insert(id, started.clone());
        let _ = self.reporter.send(Report::SessionStarted(started.clone()));
        let (traffic, error) = match sshd::run(&self, accepted).await {
            Ok(t) => (t, String::new()),
            Err(e) => {
                tracing::error!(%peer, error = %format!("{e:#}"), "session failed");
                (Default::default(), format!("{e:#}"))
            }
        };
        // Report first, forget second: a hello in between then lists the
        // session as open *and* ended, never as neither.
        let _ = self.reporter.send(Report::SessionEnded(SessionEnded {
            session_id: started.session_id,
            job_id: started.job_id,
            path: started.path,
            started_at: started.started_at,
            ended_at: now() as i64,
            bytes_from_client: traffic.from_client,
            bytes_to_client: traffic.to_client,
            error,
        }));
        self.open_sessions().remove(&id);
    }

    fn open_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionStarted>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sessions open now, for the hello.
    pub fn open_list(&self) -> Vec<SessionStarted> {
        self.open_sessions().values().cloned().collect()
    }
}

/// Direct mode: accept data connections on `listener`. Connections that
/// have not said Hello yet are bounded (see `admission.rs`).
pub async fn listen(sessions: Arc<Sessions>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let unheard = sessions.admission.unheard(peer.ip());
                stream.set_nodelay(true).ok();
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    sessions
                        .serve_with(stream, peer, DataPath::Direct, Some(unheard))
                        .await
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "session accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
