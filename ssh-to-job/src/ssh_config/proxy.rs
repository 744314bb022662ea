//! The block's helpers: `ssh-to-job proxy` (ProxyCommand) and
//! `ssh-to-job known-hosts` (KnownHostsCommand), two children of one ssh
//! process that meet through a private file named after that process.

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::PublicKey;

use super::{account_home, host_ca, persistent_key};
use crate::attach;
use stj_proto::job_ref::JobRef;

/// The job a host name names: `stj-job-N` (N as users name jobs: `42`,
/// Slurm's `42_7`, `42+1`), also as `user@stj-job-N` or with a domain a
/// tool appended (`stj-job-N.example.org`).
fn job_of(host: &str) -> Result<JobRef> {
    let name = host.rsplit('@').next().unwrap_or(host);
    let name = name.split('.').next().unwrap_or(name);
    name.strip_prefix("stj-job-")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{host:?} is not stj-job-N (N: a job id)"))
}

/// Whether `dir` is a directory only `uid` can use.
fn private_dir_of(dir: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
}

/// Where one ssh process's session host key waits for its KnownHostsCommand:
/// in $XDG_RUNTIME_DIR when it is ours and private, else under the home
/// directory of our account — never a predictable name in a shared /tmp,
/// which another user could create first.
fn host_key_file(job: JobRef) -> Result<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| private_dir_of(p, uid));
    let dir = match runtime {
        Some(r) => r.join("stj-hostkeys"),
        None => {
            let account = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.dir)
                .filter(|d| d.is_dir());
            match account {
                Some(h) => h,
                None => account_home()?,
            }
            .join(".cache/stj/hostkeys")
        }
    };
    if !private_dir_of(&dir, uid) {
        if std::fs::symlink_metadata(&dir).is_ok() {
            bail!(
                "{} is not a private directory of yours (it must be a directory you own, mode 0700); remove it",
                dir.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // `recursive` applies the mode to new parents too; the leaf is what
        // must be private, and must be ours.
        if !private_dir_of(&dir, uid) {
            bail!(
                "{} is not a private directory of yours; remove it",
                dir.display()
            );
        }
    }
    // Both helpers are children of the same ssh process.
    let ssh = nix::unistd::getppid().as_raw();
    Ok(dir.join(format!("{ssh}-{job}")))
}

/// Forgets host keys of ssh processes that are gone.
fn prune(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                std::fs::remove_file(e.path()).ok();
            }
        }
    }
}

/// How the proxy hands the session to its ssh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Pass the socket over stdout (ProxyUseFdpass): ssh then talks to the
    /// node itself and the proxy exits.
    Fd,
    /// Relay bytes between stdin/stdout and the session: for clients that
    /// cannot take an fd (paramiko, Windows OpenSSH, ProxyUseFdpass no).
    Stdio,
}

impl Handoff {
    /// OpenSSH with ProxyUseFdpass gives its ProxyCommand a socketpair for
    /// stdout, and without it pipes: a socket gets the fd, anything else
    /// bytes. Clients that give a socketpair but want bytes (libssh-based
    /// ones) run the proxy with --stdio.
    pub fn detect() -> Handoff {
        let stdout_is_socket = nix::sys::stat::fstat(1)
            .map(|st| {
                nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                    .contains(nix::sys::stat::SFlag::S_IFSOCK)
            })
            .unwrap_or(false);
        if stdout_is_socket {
            Handoff::Fd
        } else {
            Handoff::Stdio
        }
    }
}

/// Reaches the job `host` names and hands the session to our ssh.
/// `client_key`: the public key ssh will log in with, when it is not the
/// user's stj key here (an ssh on a laptop, through this login node).
/// `job_host_key`: our ssh checks the job's own key from known_hosts
/// (paramiko; `host-key --add`) rather than a one-time key.
pub async fn proxy(
    host: &str,
    socket: &Path,
    daemon_sock: Option<&Path>,
    handoff: Handoff,
    client_key: Option<[u8; 32]>,
    job_host_key: bool,
) -> Result<()> {
    let job = job_of(host)?;
    let public = match client_key {
        Some(k) => k,
        None => persistent_key()?.1,
    };
    // For another machine's ssh, which cannot ask us for the exact key, the
    // key comes certified by the user's CA; ours checks it exactly.
    let ca = client_key.map(|_| host_ca()).transpose()?;
    let target = attach::Target::job(job);
    let grant = attach::request(socket, &target, public).await?;
    let dial = attach::Dial {
        socket,
        target: &target,
        daemon_sock,
        host_ca: ca.as_ref(),
        asks: attach::Asks {
            job_host_key,
            ..attach::Asks::default()
        },
    };
    let (stream, session, path) = attach::connect(attach::Mode::Auto, &dial, &grant).await?;
    tracing::debug!(%job, job_id = grant.job_id, path = path.as_str(), ?handoff, "connected");
    let file = host_key_file(job)?;
    if let Some(dir) = file.parent() {
        prune(dir);
    }
    let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(session.host_pubkey)), "");
    std::fs::write(&file, key.to_openssh()?)?;
    match handoff {
        // stdout is the socketpair ssh made for ProxyUseFdpass.
        Handoff::Fd => stj_cli::fd_passing::send_on_stdout(stream.as_fd())
            .context("cannot pass the socket to ssh (the ssh_config block needs ProxyUseFdpass yes, or run the proxy with --stdio)"),
        Handoff::Stdio => relay_stdio(stream).await,
    }
}

/// Copies stdin to the session and the session to stdout until the node
/// closes; the end of stdin becomes a half-close, so the far side sees EOF
/// and can still answer. (stdin may never end: ssh keeps it open.)
async fn relay_stdio(stream: std::net::TcpStream) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(stream)?;
    let (mut from_node, mut to_node) = tcp.into_split();
    let up = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut to_node).await?;
        to_node.shutdown().await
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_node, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut down => return r.context("relaying the session to stdout"),
            r = &mut up, if !up_done => {
                up_done = true;
                r.context("relaying stdin to the session")?;
            }
        }
    }
}

/// Prints the session's host key for `host` (`%n`), under the name ssh
/// looks it up by (`%H`: `[stj-job-N]:PORT` for another port, or a
/// HostKeyAlias), so no Port or HostKeyAlias of the user's breaks the check.
pub fn known_hosts(host: &str, lookup: Option<&str>) -> Result<()> {
    let job = job_of(host)?;
    let file = host_key_file(job)?;
    if let Ok(key) = std::fs::read_to_string(&file) {
        println!("{} {}", lookup.unwrap_or(host), key.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_that_name_a_job() {
        assert_eq!(job_of("stj-job-42").unwrap(), JobRef::plain(42));
        assert_eq!(job_of("alice@stj-job-7").unwrap(), JobRef::plain(7));
        assert_eq!(
            job_of("stj-job-9.cluster.example").unwrap(),
            JobRef::plain(9)
        );
        assert_eq!(job_of("stj-job-9_3").unwrap().to_string(), "9_3");
        assert!(job_of("stj-job-9_3;x").is_err());
        assert!(job_of("stj-job-").is_err());
        assert!(job_of("login1").is_err());
        assert!(job_of("[stj-job-1]:2222").is_err());
    }
}
