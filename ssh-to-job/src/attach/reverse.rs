//! Reverse mode through the shared port: we make a UNIX socket in the
//! daemon_sock dir, ask the schedd to have the starter dial back, and the
//! schedd hands us the starter's connection over that socket. The submit
//! host needs no open port of its own.

use std::net::TcpStream as StdTcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::user::ConnectBackRequest;
use tokio::net::{TcpStream, UnixListener};

use super::Grant;
use crate::client_error::ClientError;
use crate::schedd_client::connect as schedd;

pub use stj_cli::paths::DAEMON_SOCK_DIR as DEFAULT_DAEMON_SOCK_DIR;
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// `--daemon-sock-dir`, else `$STJ_DAEMON_SOCK_DIR`; None: the schedd's.
pub fn daemon_sock_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("STJ_DAEMON_SOCK_DIR").map(PathBuf::from))
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
    if !stj_cli::paths::is_daemon_sock_dir(dir) {
        bail!(
            "the daemon_sock dir {} is not root's with mode 1733 (another user's, who could remove our socket?): an admin should remove it and run `stj-schedd init-daemon-sock`",
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

/// Connections the schedd hands over on our socket, until the deadline.
pub struct Callbacks {
    listener: UnixListener,
    _file: SocketFile,
    schedd_uid: u32,
    node: String,
    deadline: tokio::time::Instant,
}

/// Makes our socket and asks the schedd to have the starter dial it.
pub async fn ask(socket: &Path, grant: &Grant, dir: &Path) -> Result<Callbacks> {
    usable(dir)?;
    let mut rnd = [0u8; 8];
    SystemRandom::new()
        .fill(&mut rnd)
        .map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let name = format!("stj-{}", hex_lower(&rnd));
    let path = dir.join(&name);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let file = SocketFile(path.clone());
    // Only the schedd (which runs as root) needs to connect.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let schedd_uid = std::fs::metadata(socket).map(|m| m.uid()).unwrap_or(0);

    let mut c = schedd(socket).await?;
    c.connect_back(ConnectBackRequest {
        session_id: grant.session_id.to_vec(),
        route_name: name,
    })
    .await
    .map_err(ClientError::from_status)?;
    Ok(Callbacks {
        listener,
        _file: file,
        schedd_uid,
        node: grant.node.clone(),
        deadline: tokio::time::Instant::now() + STEP_TIMEOUT,
    })
}

impl Callbacks {
    /// The next connection the schedd passes us; an error once the
    /// deadline passes.
    pub async fn next(&mut self) -> Result<TcpStream> {
        loop {
            let (conn, _) = tokio::time::timeout_at(self.deadline, self.listener.accept())
                .await
                .map_err(|_| {
                    ClientError::TimedOut(format!(
                        "node {} did not call back within {} s",
                        self.node,
                        STEP_TIMEOUT.as_secs()
                    ))
                })??;
            // Connections come from the schedd only; anyone else is ignored.
            let from = conn.peer_cred()?.uid();
            if from != self.schedd_uid && from != 0 {
                tracing::warn!(
                    peer_uid = from,
                    "ignored a connection to our daemon_sock socket from another user"
                );
                continue;
            }
            let conn = conn.into_std()?;
            conn.set_nonblocking(false)?;
            let Ok(fd) = stj_cli::fd_passing::recv_one(&conn) else {
                continue;
            };
            let tcp = StdTcpStream::from(fd);
            tcp.set_nonblocking(true)?;
            return Ok(TcpStream::from_std(tcp)?);
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
