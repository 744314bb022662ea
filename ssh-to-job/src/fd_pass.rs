//! Hands the session socket to `stj-proxy` (which ssh runs as its
//! ProxyCommand) over a UNIX socket in the private runtime dir, after
//! checking with SO_PEERCRED that the process asking is our own user's.

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::net::UnixListener;

pub fn bind(path: &Path) -> Result<UnixListener> {
    UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))
}

/// Serves the socket once to the first caller running as our uid; callers of
/// other uids get nothing and are logged. Returns after the fd was sent.
pub async fn serve(listener: UnixListener, session: TcpStream) -> Result<()> {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let (conn, _) = listener.accept().await?;
        let cred = conn.peer_cred()?;
        if cred.uid() != me {
            tracing::warn!(peer_uid = cred.uid(), peer_pid = ?cred.pid(), "refused the session socket to a process of another user");
            continue;
        }
        let conn = conn.into_std()?;
        conn.set_nonblocking(false)?;
        stj_cli::fd_passing::send_one(&conn, session.as_fd())
            .context("sending the session socket to stj-proxy")?;
        // Our copy closes here: ssh now holds the only one, so the session
        // ends exactly when ssh lets go of it.
        return Ok(());
    }
}
