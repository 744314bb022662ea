//! Relay mode: dial the schedd's port with the session id and our relay
//! token; the broker asks the starter to do the same and splices the two.
//! The broker sees only the handshake's MACs and SSH ciphertext.

use std::net::TcpStream as StdTcpStream;
use std::time::Duration;

use anyhow::{Context, Result};
use stj_proto::capability::Capability;
use stj_proto::preamble::{Preamble, Role};
use stj_proto::user::RequestSessionReply;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{finish, Session};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn connect(grant: &RequestSessionReply, job_id: u64) -> Result<(StdTcpStream, Session)> {
    let cap =
        Capability::decode(&grant.capability).context("the schedd sent a malformed capability")?;
    let token: [u8; 32] = grant
        .relay_token
        .as_slice()
        .try_into()
        .context("the schedd sent no relay token")?;
    let mut stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&grant.broker_addr))
        .await
        .with_context(|| {
            format!(
                "dialing the schedd's relay at {} timed out",
                grant.broker_addr
            )
        })?
        .with_context(|| {
            format!(
                "cannot connect to the schedd's relay at {}",
                grant.broker_addr
            )
        })?;
    let preamble = Preamble::Relay {
        role: Role::Client,
        session_id: cap.session_id,
        token,
    };
    stream.write_all(&preamble.encode()).await?;
    finish(stream, grant, job_id).await
}
