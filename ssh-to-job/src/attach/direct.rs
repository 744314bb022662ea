//! Direct mode: dial the address the starter advertises.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpStream;

use super::Grant;
use crate::client_error::ClientError;

const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn dial(grant: &Grant) -> Result<TcpStream> {
    let Some(addr) = &grant.direct_addr else {
        anyhow::bail!("node {} accepts no direct connections (it has no session_listen); use --mode auto, reverse or relay", grant.node);
    };
    tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            ClientError::TimedOut(format!(
                "dialing node {} at {addr} timed out (a firewall or NAT in between?)",
                grant.node
            ))
        })?
        .with_context(|| format!("cannot connect to node {} at {addr}", grant.node))
}
