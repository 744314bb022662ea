//! Sessions: a data connection arrives, the handshake of DESIGN §3 checks
//! its capability, and sshd runs on that very socket inside the job.

mod handshake;
mod replay;
mod sshd;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::jobs::Jobs;

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
    pub jobs: Arc<Jobs>,
    pub sshd: SshdConfig,
    /// The sshd kit, or why this node cannot serve sessions.
    pub kit: Result<crate::kit::Kit, String>,
    replay: replay::ReplayCache,
    /// Bounds handshakes doing work (key generation, files, sshd). Taken only
    /// once a Hello has arrived: a connection that says nothing holds no
    /// slot, and is dropped at the handshake deadline.
    pub(crate) pending: Semaphore,
}

const MAX_PENDING_HANDSHAKES: usize = 256;

impl Sessions {
    pub fn new(
        node: String,
        key: Arc<StarterKey>,
        jobs: Arc<Jobs>,
        sshd: SshdConfig,
        kit: Result<crate::kit::Kit, String>,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            node,
            key,
            jobs,
            sshd,
            kit,
            replay: replay::ReplayCache::default(),
            pending: Semaphore::new(MAX_PENDING_HANDSHAKES),
        })
    }

    /// Runs the handshake on a fresh data connection and, if it succeeds,
    /// sshd inside the job on the same socket.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let accepted = handshake::run(&self, stream, peer).await;
        let Some(accepted) = accepted else { return };
        if let Err(e) = sshd::run(&self, accepted).await {
            tracing::error!(%peer, error = %format!("{e:#}"), "session failed");
        }
    }
}

/// Direct mode: accept data connections on `listener`.
pub async fn listen(sessions: Arc<Sessions>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stream.set_nodelay(true).ok();
                tokio::spawn(sessions.clone().serve(stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "session accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
