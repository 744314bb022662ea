//! Relay mode: dial the schedd's port with the session id and our relay
//! token; the broker asks the starter to do the same and splices the two.
//! The broker sees only the handshake's MACs and SSH ciphertext.

use std::time::Duration;

use anyhow::{Context, Result};
use stj_proto::preamble::{Preamble, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Grant;
use crate::client_error::ClientError;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn dial(grant: &Grant) -> Result<TcpStream> {
    let addr = &grant.broker_addr;
    let mut stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            ClientError::TimedOut(format!("dialing the schedd's relay at {addr} timed out"))
        })?
        .with_context(|| format!("cannot connect to the schedd's relay at {addr}"))?;
    let preamble = Preamble::Relay {
        role: Role::Client,
        session_id: grant.session_id,
        token: grant.relay_token,
    };
    stream.write_all(&preamble.encode()).await?;
    Ok(stream)
}
