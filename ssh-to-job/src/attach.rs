//! Getting a capability from the schedd and turning it into a connected,
//! authenticated socket to the job's starter.

use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::handshake::{
    read_message, write_message, ClientHandshake, HandshakeError, DEADLINE, NONCE_LEN,
};
use stj_proto::user::{RequestSessionReply, RequestSessionRequest};
use tokio::net::TcpStream;

use crate::schedd_client::{connect, status_error};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut c = connect(socket).await?;
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
    let (hs, hello) = ClientHandshake::start(grant.capability.clone(), &k, nonce);
    write_message(stream, &hello).await?;
    let (challenge, _) = read_message(stream).await?;
    let (proof, host) = hs.on_challenge(challenge)?;
    write_message(stream, &proof).await?;
    let (ready, _) = read_message(stream).await?;
    let user = hs.on_ready(ready)?;
    Ok(Session {
        host_pubkey: host,
        user: if user.is_empty() {
            grant.user.clone()
        } else {
            user
        },
    })
}

pub fn explain(e: HandshakeError, job_id: u64, node: &str) -> anyhow::Error {
    match e {
        HandshakeError::BadProof => anyhow::anyhow!(
            "the peer that answered for node {node} could not prove it is the starter running job {job_id}: refusing to connect (a fake or misconfigured starter; tell your admin)"
        ),
        HandshakeError::Remote { message, .. } => anyhow::anyhow!("node {node} refused the session: {message}"),
        other => anyhow::anyhow!("handshake with node {node} failed: {other}"),
    }
}

/// Direct mode: dial the address the starter advertises.
pub async fn direct(grant: &RequestSessionReply, job_id: u64) -> Result<(StdTcpStream, Session)> {
    if grant.direct_addr.is_empty() {
        bail!(
            "node {} accepts no direct connections (its admin did not set session_listen); this ssh-to-job supports only --mode direct",
            grant.node
        );
    }
    let mut stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&grant.direct_addr))
        .await
        .with_context(|| {
            format!(
                "dialing node {} at {} timed out",
                grant.node, grant.direct_addr
            )
        })?
        .with_context(|| {
            format!(
                "cannot connect to node {} at {}",
                grant.node, grant.direct_addr
            )
        })?;
    stream.set_nodelay(true).ok();
    let session = tokio::time::timeout(DEADLINE, handshake(&mut stream, grant))
        .await
        .map_err(|_| anyhow::anyhow!("handshake with node {} timed out", grant.node))?
        .map_err(|e| explain(e, job_id, &grant.node))?;
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok((std, session))
}
