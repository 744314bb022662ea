//! Direct mode: dial the address the starter advertises.

use std::net::TcpStream as StdTcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use stj_proto::user::RequestSessionReply;
use tokio::net::TcpStream;

use super::{finish, Session};

const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn connect(grant: &RequestSessionReply, job_id: u64) -> Result<(StdTcpStream, Session)> {
    if grant.direct_addr.is_empty() {
        bail!("node {} accepts no direct connections (it has no session_listen); use --mode auto, reverse or relay", grant.node);
    }
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&grant.direct_addr))
        .await
        .with_context(|| {
            format!(
                "dialing node {} at {} timed out (a firewall or NAT in between?)",
                grant.node, grant.direct_addr
            )
        })?
        .with_context(|| {
            format!(
                "cannot connect to node {} at {}",
                grant.node, grant.direct_addr
            )
        })?;
    finish(stream, grant, job_id).await
}
