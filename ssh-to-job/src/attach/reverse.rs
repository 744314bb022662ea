//! Reverse mode through the shared port: we make a UNIX socket in the
//! daemon_sock dir, ask the schedd to have the starter dial back, and the
//! schedd hands us the starter's connection over that socket. The submit
//! host needs no open port of its own.

use std::net::TcpStream as StdTcpStream;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ring::rand::{SecureRandom, SystemRandom};
use sendfd::RecvWithFd;
use stj_proto::capability::Capability;
use stj_proto::user::{ConnectBackRequest, RequestSessionReply};
use tokio::net::{TcpStream, UnixListener};

use super::{finish, Session};
use crate::schedd_client::{connect as schedd, status_error};

pub const DEFAULT_DAEMON_SOCK_DIR: &str = "/var/lock/stj/daemon_sock";
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// `--daemon-sock-dir`, else `$STJ_DAEMON_SOCK_DIR`, else the default.
pub fn daemon_sock_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("STJ_DAEMON_SOCK_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_SOCK_DIR))
}

/// Whether we can make our socket in the daemon_sock dir, with the admin
/// step that fixes it when not.
pub fn usable(dir: &Path) -> Result<()> {
    if !dir.is_dir()
        || nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_err()
    {
        bail!(
            "the daemon_sock dir {} is missing or not writable: create it with `stj-schedd init-daemon-sock` or set daemon_sock_dir",
            dir.display()
        );
    }
    Ok(())
}

/// Removes our socket on every exit path.
struct SocketFile(PathBuf);
impl Drop for SocketFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

pub async fn connect(
    socket: &Path,
    grant: &RequestSessionReply,
    job_id: u64,
    dir: &Path,
) -> Result<(StdTcpStream, Session)> {
    usable(dir)?;
    let cap =
        Capability::decode(&grant.capability).context("the schedd sent a malformed capability")?;
    let mut rnd = [0u8; 8];
    SystemRandom::new()
        .fill(&mut rnd)
        .map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let name = format!("stj-{}", hex_lower(&rnd));
    let path = dir.join(&name);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let _file = SocketFile(path.clone());
    // Only the schedd (which runs as root) needs to connect.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let schedd_uid = std::fs::metadata(socket).map(|m| m.uid()).unwrap_or(0);

    let mut c = schedd(socket).await?;
    c.connect_back(ConnectBackRequest {
        session_id: cap.session_id.to_vec(),
        route_name: name,
    })
    .await
    .map_err(status_error)?;

    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let (conn, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .with_context(|| {
                format!(
                    "node {} did not call back within {} s",
                    grant.node,
                    STEP_TIMEOUT.as_secs()
                )
            })??;
        // Connections come from the schedd only; anyone else is ignored.
        let from = conn.peer_cred()?.uid();
        if from != schedd_uid && from != 0 {
            tracing::warn!(
                peer_uid = from,
                "ignored a connection to our daemon_sock socket from another user"
            );
            continue;
        }
        let conn = conn.into_std()?;
        conn.set_nonblocking(false)?;
        let mut byte = [0u8; 1];
        let mut fds = [-1 as RawFd; 1];
        let (_, n) = conn.recv_with_fd(&mut byte, &mut fds)?;
        if n != 1 {
            continue;
        }
        // SAFETY: the kernel just installed this fd for us.
        let tcp = unsafe { StdTcpStream::from_raw_fd(fds[0]) };
        tcp.set_nonblocking(true)?;
        let tcp = TcpStream::from_std(tcp)?;
        match finish(tcp, grant, job_id).await {
            Ok(done) => return Ok(done),
            // The node itself said no (only a connection routed with the
            // route's token reaches us): its reason is the answer.
            Err(e) if e.downcast_ref::<super::NodeRefused>().is_some() => return Err(e),
            // Not the genuine starter: keep waiting for it.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "a reverse connection failed the handshake; still waiting")
            }
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
