//! Getting a capability from the schedd and turning it into a connected,
//! authenticated socket to the job's starter: directly, by reverse
//! connection through the schedd's shared port, or through its relay.

mod direct;
mod relay;
mod reverse;

pub use reverse::{daemon_sock_dir, DEFAULT_DAEMON_SOCK_DIR};

use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use stj_proto::session_id::SessionId;

use anyhow::Result;
use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::capability::Capability;
use stj_proto::handshake::{
    read_message, write_message, ClientHandshake, HandshakeError, DEADLINE, NONCE_LEN,
};
use stj_proto::user::{RequestSessionReply, RequestSessionRequest};
use tokio::net::TcpStream;

use crate::schedd_client::status_error;

pub struct Attached {
    pub stream: StdTcpStream,
    pub host_pubkey: [u8; 32],
    pub grant: RequestSessionReply,
    pub path: &'static str,
}

pub async fn request(
    socket: &Path,
    job_id: u64,
    client_pubkey: [u8; 32],
) -> Result<RequestSessionReply> {
    let mut c = crate::schedd_client::connect(socket).await?;
    let reply = c
        .request_session(RequestSessionRequest {
            job_id,
            client_pubkey: client_pubkey.to_vec(),
        })
        .await
        .map_err(status_error)?;
    Ok(reply.into_inner())
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
    grant: &RequestSessionReply,
) -> Result<Session, HandshakeError> {
    let k: [u8; 32] = grant
        .k
        .as_slice()
        .try_into()
        .map_err(|_| HandshakeError::Decode)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| HandshakeError::Decode)?;
    let (mut hs, hello) = ClientHandshake::start(grant.capability.clone(), &k, nonce);
    write_message(stream, &hello).await?;
    let (challenge, _) = read_message(stream).await?;
    let (proof, host) = hs.on_challenge(challenge)?;
    write_message(stream, &proof).await?;
    let (ready, _) = read_message(stream).await?;
    let user = hs.on_ready(ready)?;
    let session_id = Capability::decode(&grant.capability)
        .map_err(|_| HandshakeError::Decode)?
        .session_id;
    Ok(Session {
        session_id,
        host_pubkey: host,
        user: if user.is_empty() {
            grant.user.clone()
        } else {
            user
        },
    })
}

/// The peer failed the starter's proof: someone answered in its place.
#[derive(Debug, thiserror::Error)]
#[error("the peer that answered for node {node} could not prove it is the starter running job {job_id}: refusing to connect (a fake or misconfigured starter; tell your admin)")]
pub struct Impersonation {
    pub node: String,
    pub job_id: u64,
}

/// The node answered the handshake with a refusal (its code and reason).
#[derive(Debug, thiserror::Error)]
#[error("node {node} refused the session: {message}")]
pub struct NodeRefused {
    pub node: String,
    pub code: stj_proto::session::ErrorCode,
    pub message: String,
}

pub fn explain(e: HandshakeError, job_id: u64, node: &str) -> anyhow::Error {
    match e {
        // The starter's proof, or its Ready, did not verify: whoever
        // answered does not hold this session's key.
        HandshakeError::BadProof => Impersonation {
            node: node.to_string(),
            job_id,
        }
        .into(),
        HandshakeError::Remote { code, message } => NodeRefused {
            node: node.to_string(),
            code,
            message,
        }
        .into(),
        other => anyhow::anyhow!("handshake with node {node} failed: {other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Direct,
    Reverse,
    Relay,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "auto" => Mode::Auto,
            "direct" => Mode::Direct,
            "reverse" => Mode::Reverse,
            "relay" => Mode::Relay,
            _ => return None,
        })
    }
}

/// Runs the handshake on a fresh connection within the deadline, and hands
/// back a blocking std socket ready to be passed to ssh.
async fn finish(
    mut stream: TcpStream,
    grant: &RequestSessionReply,
    job_id: u64,
) -> Result<(StdTcpStream, Session)> {
    stream.set_nodelay(true).ok();
    let session = tokio::time::timeout(DEADLINE, handshake(&mut stream, grant))
        .await
        .map_err(|_| anyhow::anyhow!("handshake with node {} timed out", grant.node))?
        .map_err(|e| explain(e, job_id, &grant.node))?;
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok((std, session))
}

/// Makes the data connection the way `mode` says. In auto mode: direct when
/// the starter advertises an address, else reverse through the daemon_sock
/// dir, else the relay; each step has a short timeout, and `--debug` says
/// what was tried, why it failed and what worked.
pub async fn connect(
    mode: Mode,
    socket: &Path,
    grant: &RequestSessionReply,
    job_id: u64,
    daemon_sock: &Path,
) -> Result<(StdTcpStream, Session, &'static str)> {
    match mode {
        Mode::Direct => {
            return direct::connect(grant, job_id)
                .await
                .map(|(s, x)| (s, x, "direct"))
        }
        Mode::Reverse => {
            return reverse::connect(socket, grant, job_id, daemon_sock)
                .await
                .map(|(s, x)| (s, x, "reverse"))
        }
        Mode::Relay => {
            return relay::connect(grant, job_id)
                .await
                .map(|(s, x)| (s, x, "relay"))
        }
        Mode::Auto => {}
    }
    if grant.direct_addr.is_empty() {
        tracing::debug!(node = %grant.node, "direct: skipped, the node advertises no address");
    } else {
        match direct::connect(grant, job_id).await {
            Ok((s, x)) => return Ok((s, x, "direct")),
            // Another path still reaches the genuine starter (every path
            // authenticates it), but an impostor is worth telling about.
            Err(e) if e.downcast_ref::<Impersonation>().is_some() => {
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
    let fresh = |g: &RequestSessionReply| {
        let pubkey = Capability::decode(&g.capability).map(|c| c.client_pubkey);
        async move {
            request(
                socket,
                job_id,
                pubkey.map_err(|_| anyhow::anyhow!("malformed capability"))?,
            )
            .await
        }
    };
    let mut grant = if grant.direct_addr.is_empty() {
        grant.clone()
    } else {
        fresh(grant).await?
    };
    match reverse::usable(daemon_sock) {
        Ok(()) => match reverse::connect(socket, &grant, job_id, daemon_sock).await {
            Ok((s, x)) => return Ok((s, x, "reverse")),
            Err(e) => {
                tracing::debug!(node = %grant.node, error = %format!("{e:#}"), "reverse: failed");
                grant = fresh(&grant).await?;
            }
        },
        Err(e) => eprintln!("ssh-to-job: {e:#}; using the relay instead"),
    }
    relay::connect(&grant, job_id)
        .await
        .map(|(s, x)| (s, x, "relay"))
}
