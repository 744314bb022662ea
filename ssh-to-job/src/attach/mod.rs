//! Getting a capability from the schedd and turning it into a connected,
//! authenticated socket to the job's starter. The schedd's reply is decoded
//! once into a [`Grant`]; each path (direct, reverse through the shared
//! port, relay) only dials and hands back a stream, and the handshake runs
//! here, in one place, whichever path brought the stream.

mod direct;
mod relay;
mod reverse;

pub use reverse::{daemon_sock_dir, DEFAULT_DAEMON_SOCK_DIR};

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::capability::Capability;
pub use stj_proto::handshake::Asks;
use stj_proto::handshake::{
    read_message, write_message, ClientHandshake, HandshakeError, DEADLINE, NONCE_LEN,
};
use stj_proto::job_ref::JobRef;
use stj_proto::session_id::SessionId;
use stj_proto::user::{RequestSessionReply, RequestSessionRequest};
use tokio::net::TcpStream;

use crate::client_error::ClientError;
use crate::host_ca::HostCa;

/// What the schedd granted for one session, decoded and checked once.
/// (Its Debug leaves out the secrets.)
#[derive(Clone)]
pub struct Grant {
    /// The capability in its canonical encoding, as the starter checks it.
    pub capability: Vec<u8>,
    pub session_id: SessionId,
    pub job_id: u64,
    pub client_pubkey: [u8; 32],
    /// HMAC key proving the capability; secret.
    pub k: [u8; 32],
    /// Presented to the schedd's relay; secret.
    pub relay_token: [u8; 32],
    /// Where the starter listens, when it listens anywhere.
    pub direct_addr: Option<String>,
    /// The schedd's one port, as this host dials it.
    pub broker_addr: String,
    pub node: String,
    /// The account the session logs in as.
    pub user: String,
    /// The schedd's daemon_sock dir, for reverse connections.
    pub daemon_sock_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("session_id", &self.session_id)
            .field("node", &self.node)
            .field("direct_addr", &self.direct_addr)
            .field("broker_addr", &self.broker_addr)
            .field("user", &self.user)
            .field("daemon_sock_dir", &self.daemon_sock_dir)
            .finish_non_exhaustive()
    }
}

impl Grant {
    pub fn decode(r: RequestSessionReply) -> Result<Grant> {
        let cap =
            Capability::decode(&r.capability).context("the schedd sent a malformed capability")?;
        let k =
            r.k.as_slice()
                .try_into()
                .context("the schedd sent a malformed session key")?;
        let relay_token = r
            .relay_token
            .as_slice()
            .try_into()
            .context("the schedd sent a malformed relay token")?;
        Ok(Grant {
            session_id: cap.session_id,
            job_id: cap.job_id,
            client_pubkey: cap.client_pubkey,
            capability: r.capability,
            k,
            relay_token,
            direct_addr: (!r.direct_addr.is_empty()).then_some(r.direct_addr),
            broker_addr: r.broker_addr,
            node: r.node,
            user: r.user,
            daemon_sock_dir: (!r.daemon_sock_dir.is_empty())
                .then(|| PathBuf::from(r.daemon_sock_dir)),
        })
    }
}

/// How long a request waits for room under the user's own caps (open
/// sessions, unused capabilities): a burst of attaches (Ansible's forks, an
/// editor's connections, a pdsh-style fan-out) queues up instead of being
/// refused, and a cap that stays full is still an error, after this.
pub const ROOM_WAIT: Duration = Duration::from_secs(30);

/// Which job a session goes into, as the user named it, and on which node
/// of its allocation (None: its batch host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: JobRef,
    pub node: Option<String>,
}

/// Our queue's job `id`, on its node.
impl From<u64> for Target {
    fn from(id: u64) -> Target {
        Target::job(JobRef::plain(id))
    }
}

impl Target {
    pub fn job(job: JobRef) -> Target {
        Target { job, node: None }
    }

    fn request(&self, client_pubkey: [u8; 32]) -> RequestSessionRequest {
        RequestSessionRequest {
            job_id: self.job.id,
            client_pubkey: client_pubkey.to_vec(),
            job: match self.job.part {
                None => String::new(),
                Some(_) => self.job.to_string(),
            },
            node: self.node.clone().unwrap_or_default(),
        }
    }
}

/// [`request_waiting`] with the default wait.
pub async fn request(socket: &Path, target: &Target, client_pubkey: [u8; 32]) -> Result<Grant> {
    request_waiting(socket, target, client_pubkey, ROOM_WAIT).await
}

/// Asks the schedd for a capability into `target` for the holder of
/// `client_pubkey`, waiting up to `room_wait` (jittered backoff) while the
/// user's caps are full.
pub async fn request_waiting(
    socket: &Path,
    target: &Target,
    client_pubkey: [u8; 32],
    room_wait: Duration,
) -> Result<Grant> {
    let mut c = crate::schedd_client::connect(socket).await?;
    let deadline = tokio::time::Instant::now() + room_wait;
    let mut pause = Duration::from_millis(50);
    let job_id = target.job.id;
    loop {
        let refused = match c.request_session(target.request(client_pubkey)).await {
            Ok(reply) => return Grant::decode(reply.into_inner()),
            Err(s) => ClientError::from_status(s),
        };
        let wait = pause + jitter(pause);
        if !refused.is_full_cap() || tokio::time::Instant::now() + wait > deadline {
            return Err(refused.into());
        }
        tracing::debug!(job_id, error = %refused, wait_ms = wait.as_millis() as u64, "waiting for room under the user's caps");
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Up to half of `pause`, at random: a burst's retries spread out instead
/// of arriving together again.
fn jitter(pause: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = SystemRandom::new().fill(&mut b);
    pause.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0)
}

/// What a completed handshake established.
pub struct Session {
    /// The capability's session id (a fallback path may have used a fresh
    /// capability, so the first grant's id is not necessarily this one).
    pub session_id: SessionId,
    pub host_pubkey: [u8; 32],
    /// The account to log in as.
    pub user: String,
}

/// Runs the client side of the handshake on `stream`. On success the stream
/// carries SSH bytes from a starter that proved it holds this session's key.
pub async fn handshake(
    stream: &mut TcpStream,
    grant: &Grant,
    host_ca: Option<&HostCa>,
    asks: Asks,
) -> Result<Session, HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| HandshakeError::Decode)?;
    let (mut hs, hello) =
        ClientHandshake::start_asking(grant.capability.clone(), &grant.k, nonce, asks);
    write_message(stream, &hello).await?;
    let (challenge, _) = read_message(stream).await?;
    let (mut proof, host) = hs.on_challenge(challenge)?;
    // The starter proved itself: its host key is the session's; vouch for
    // it to ssh with the user's CA.
    if let Some(ca) = host_ca {
        let cert = ca
            .certify(host, grant.job_id, grant.session_id)
            .map_err(|e| HandshakeError::Io(std::io::Error::other(format!("{e:#}"))))?;
        proof = ClientHandshake::with_host_certificate(proof, cert);
    }
    write_message(stream, &proof).await?;
    let (ready, _) = read_message(stream).await?;
    let user = hs.on_ready(ready)?;
    Ok(Session {
        session_id: grant.session_id,
        host_pubkey: host,
        user: if user.is_empty() {
            grant.user.clone()
        } else {
            user
        },
    })
}

fn explain(e: HandshakeError, job_id: u64, node: &str) -> anyhow::Error {
    match e {
        HandshakeError::BadProof => ClientError::Impersonation {
            node: node.to_string(),
            job_id,
        }
        .into(),
        HandshakeError::Remote { code, message } => ClientError::NodeRefused {
            node: node.to_string(),
            code,
            message,
        }
        .into(),
        other => anyhow::anyhow!("handshake with node {node} failed: {other}"),
    }
}

fn is_node_refusal(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::NodeRefused { .. })
    )
}

fn is_impersonation(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Impersonation { .. })
    )
}

/// The way a data connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    Reverse,
    Relay,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Reverse => "reverse",
            Via::Relay => "relay",
        }
    }
}

/// `--mode`: one way only, or auto (each in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Only(Via),
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "auto" => Mode::Auto,
            "direct" => Mode::Only(Via::Direct),
            "reverse" => Mode::Only(Via::Reverse),
            "relay" => Mode::Only(Via::Relay),
            _ => return None,
        })
    }
}

/// Where to attach, besides the grant.
pub struct Dial<'a> {
    /// The schedd's user socket.
    pub socket: &'a Path,
    pub target: &'a Target,
    /// The daemon_sock dir the user named; None: the schedd's.
    pub daemon_sock: Option<&'a Path>,
    /// Certify the session's host key with this CA (host_ca.rs), for an
    /// ssh that checks host keys by @cert-authority.
    pub host_ca: Option<&'a HostCa>,
    /// What to ask the starter for: the job's own host key instead of a
    /// one-time one (a client that checks it against a known_hosts line:
    /// paramiko), the job's own namespaces instead of its innermost
    /// container.
    pub asks: Asks,
}

/// Runs the handshake on a fresh connection within the deadline, and hands
/// back a blocking std socket ready to be passed to ssh.
async fn finish(
    mut stream: TcpStream,
    grant: &Grant,
    dial: &Dial<'_>,
) -> Result<(StdTcpStream, Session)> {
    stream.set_nodelay(true).ok();
    let session = tokio::time::timeout(
        DEADLINE,
        handshake(&mut stream, grant, dial.host_ca, dial.asks),
    )
    .await
    .map_err(|_| ClientError::TimedOut(format!("handshake with node {} timed out", grant.node)))?
    .map_err(|e| explain(e, grant.job_id, &grant.node))?;
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok((std, session))
}

/// One path, from dial to completed handshake.
async fn over(
    via: Via,
    grant: &Grant,
    dial: &Dial<'_>,
    daemon_sock: &Path,
) -> Result<(StdTcpStream, Session)> {
    match via {
        Via::Direct => finish(direct::dial(grant).await?, grant, dial).await,
        Via::Relay => finish(relay::dial(grant).await?, grant, dial).await,
        Via::Reverse => {
            let mut calls = reverse::ask(dial.socket, grant, daemon_sock).await?;
            loop {
                match finish(calls.next().await?, grant, dial).await {
                    Ok(done) => return Ok(done),
                    // The node itself said no (only a connection routed
                    // with the route's token reaches us): that is the answer.
                    Err(e) if is_node_refusal(&e) => return Err(e),
                    // Not the genuine starter: keep waiting for it.
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "a reverse connection failed the handshake; still waiting")
                    }
                }
            }
        }
    }
}

/// Makes the data connection the way `mode` says. In auto mode: direct when
/// the starter advertises an address, else reverse through the daemon_sock
/// dir, else the relay; each step has a short timeout, and `--debug` says
/// what was tried, why it failed and what worked. The daemon_sock dir is
/// the one the user named, else the schedd's own.
pub async fn connect(
    mode: Mode,
    dial: &Dial<'_>,
    grant: &Grant,
) -> Result<(StdTcpStream, Session, Via)> {
    let daemon_sock = dial
        .daemon_sock
        .map(Path::to_path_buf)
        .or_else(|| grant.daemon_sock_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_SOCK_DIR));
    let daemon_sock = daemon_sock.as_path();
    if let Mode::Only(via) = mode {
        return over(via, grant, dial, daemon_sock)
            .await
            .map(|(s, x)| (s, x, via));
    }
    if grant.direct_addr.is_none() {
        tracing::debug!(node = %grant.node, "direct: skipped, the node advertises no address");
    } else {
        match over(Via::Direct, grant, dial, daemon_sock).await {
            Ok((s, x)) => return Ok((s, x, Via::Direct)),
            // Another path still reaches the genuine starter (every path
            // authenticates it), but an impostor is worth telling about.
            Err(e) if is_impersonation(&e) => {
                eprintln!("ssh-to-job: warning: {e:#}; trying other paths")
            }
            Err(e) => {
                tracing::debug!(node = %grant.node, error = %format!("{e:#}"), "direct: failed")
            }
        }
    }
    // A path that failed may have got as far as burning the capability (a
    // handshake that timed out on our side but completed on the starter's):
    // every further path starts from a fresh one.
    let fresh = || request(dial.socket, dial.target, grant.client_pubkey);
    let mut grant = if grant.direct_addr.is_none() {
        grant.clone()
    } else {
        fresh().await?
    };
    match reverse::usable(daemon_sock) {
        Ok(()) => match over(Via::Reverse, &grant, dial, daemon_sock).await {
            Ok((s, x)) => return Ok((s, x, Via::Reverse)),
            Err(e) => {
                tracing::debug!(node = %grant.node, error = %format!("{e:#}"), "reverse: failed");
                grant = fresh().await?;
            }
        },
        Err(e) => eprintln!("ssh-to-job: {e:#}; using the relay instead"),
    }
    over(Via::Relay, &grant, dial, daemon_sock)
        .await
        .map(|(s, x)| (s, x, Via::Relay))
}
