//! Containers the starter makes itself: new mount, PID, UTS, IPC and cgroup
//! namespaces, a reaping init as pid 1, private /proc, /tmp and devpts, an
//! optional root filesystem, and the job as its owner.
//!
//! The namespace work happens in a fresh single-threaded process
//! (`stj-starter container-init SPEC`, see `init.rs`), never in the
//! multi-threaded daemon, where fork is unsafe.

mod confine;
pub mod enter;
mod init;
pub mod placeholder;
mod view;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub use init::{job_env, main as init_main};

/// Everything the init needs, written as JSON into the job's work dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub job_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub user_name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub image: Option<PathBuf>,
    pub stdout: String,
    pub stderr: String,
    /// The sshd kit on the node, mounted read-only at /.stj in image jobs.
    pub kit: Option<PathBuf>,
    /// This job's session files on the node (at /.stj/sessions in images).
    pub sessions: PathBuf,
    /// The submitter's umask, for the job and its sessions.
    pub umask: u32,
    /// A slot-user job: a read-only, nosuid view of the node outside its
    /// working directory, and no set-id files (see `view.rs`, `confine.rs`).
    pub confined: bool,
    /// A confined job's working directory as the starter opened it (device,
    /// inode): the init makes writable exactly that directory — the one
    /// the slot-user sweep walks — or refuses to start the job.
    pub writable_workdir: Option<(u64, u64)>,
    /// The job's cgroup, one directory per hierarchy: the init joins it
    /// before anything of the job starts (empty: the node has none).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// How a job ended, as the init (or its monitor) reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the job never started.
    pub error: String,
    /// It never started because of the node, not the job: to be requeued.
    pub node_fault: bool,
}

/// An error that is the job's (or its owner's) doing: a missing command,
/// a working directory it cannot enter, an image its owner cannot read.
/// Every other reason a job cannot start is the node's, and the job goes
/// back to the queue.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobFault(pub String);

/// The container's init (pid 1 of the job): a pidfd, which signals and
/// setns target safely whatever happens to pid numbers, and its host pid,
/// for looking into the job through /proc while the pidfd shows it alive.
pub struct Init {
    pub pidfd: OwnedFd,
    pub pid: i32,
}

impl Init {
    /// Whether the init still runs: a pid read before this check named it.
    pub fn alive(&self) -> bool {
        // Signal 0 only checks.
        signal_pidfd(&self.pidfd, 0)
    }
}

/// A running container. Dropping it does not stop the job; the monitor
/// kills the container when the starter process dies (its stdin closes).
pub struct Container {
    /// The container's init; None if the container ended before we could
    /// open a pidfd for it.
    pub init: Option<std::sync::Arc<Init>>,
    child: Child,
    _lifeline: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// An exit reported before the monitor's pid line (a very short job).
    early_exit: Option<Exit>,
}

pub enum Launch {
    Started(Container),
    /// The container or the job could not start; the job is over.
    Failed(Exit),
}

/// Gives the child `cmd` will start our `fd` as its fd 3 (`session-enter`
/// gets the job's init pidfd so).
pub fn pass_as_fd3(cmd: &mut tokio::process::Command, fd: std::os::fd::RawFd) {
    // SAFETY: only async-signal-safe calls (dup2/fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `sig` to the process behind a pidfd; false if it could not (it
/// is gone: ESRCH), which callers that only stop it may ignore.
pub fn signal_pidfd(fd: &impl AsRawFd, sig: libc::c_int) -> bool {
    // SAFETY: plain syscall on a valid fd; a null siginfo means "like kill()".
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

fn parse_exit(line: &str) -> Option<Exit> {
    let mut it = line.splitn(3, ' ');
    match (it.next(), it.next(), it.next()) {
        (Some("exit"), Some("code"), Some(n)) => Some(Exit {
            code: n.parse().ok(),
            ..Default::default()
        }),
        (Some("exit"), Some("signal"), Some(n)) => Some(Exit {
            signal: n.parse().ok(),
            ..Default::default()
        }),
        _ => None,
    }
}

pub async fn launch(spec: &ContainerSpec, job_dir: &Path) -> Result<Launch> {
    std::fs::create_dir_all(job_dir)
        .with_context(|| format!("cannot create {}", job_dir.display()))?;
    let spec_path = job_dir.join("spec.json");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&spec_path)
        .with_context(|| format!("cannot write {}", spec_path.display()))?;
    // One write, not one per JSON token.
    std::io::Write::write_all(&mut f, &serde_json::to_vec(spec)?)?;
    drop(f);

    let mut child = tokio::process::Command::new("/proc/self/exe")
        .arg("container-init")
        .arg(&spec_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the container init")?;
    let lifeline = child.stdin.take().context("no stdin pipe")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout pipe")?).lines();

    // The monitor's "pid" and the init's "started" race each other: accept
    // them in either order.
    let mut init_pid = None;
    let mut started = false;
    let mut early_exit = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(pid) = line.strip_prefix("pid ") {
            init_pid = Some(
                pid.parse::<i32>()
                    .context("bad pid from the container init")?,
            );
        } else if line == "started" {
            started = true;
        } else if let Some(e) = parse_exit(&line) {
            early_exit = Some(e);
        } else if let Some(msg) = line.strip_prefix("error ") {
            child.wait().await.ok();
            let (node_fault, msg) = match msg.split_once(' ') {
                Some(("job", m)) => (false, m),
                Some(("node", m)) => (true, m),
                _ => (true, msg),
            };
            return Ok(Launch::Failed(Exit {
                error: msg.to_string(),
                node_fault,
                ..Default::default()
            }));
        }
        if let (Some(pid), true) = (init_pid, started) {
            // ESRCH: the job was so short that the container is already
            // gone; its exit status is still on the way.
            let init = match pidfd_open(pid) {
                Ok(pidfd) => Some(std::sync::Arc::new(Init { pidfd, pid })),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
                Err(e) => return Err(e).context("cannot open a pidfd for the container init"),
            };
            return Ok(Launch::Started(Container {
                init,
                child,
                _lifeline: lifeline,
                lines,
                early_exit,
            }));
        }
    }
    let status = child.wait().await?;
    Ok(Launch::Failed(Exit {
        error: format!("the container init died before the job started ({status})"),
        node_fault: true,
        ..Default::default()
    }))
}

impl Container {
    /// Waits for the job to end and says how.
    pub async fn wait(mut self) -> Exit {
        let mut exit = self.early_exit.take();
        while let Ok(Some(line)) = self.lines.next_line().await {
            if let Some(e) = parse_exit(&line) {
                exit = Some(e);
            }
        }
        let status = self.child.wait().await;
        exit.unwrap_or_else(|| Exit {
            error: format!("the container ended without reporting an exit status ({status:?})"),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_lines() {
        assert_eq!(parse_exit("exit code 7").unwrap().code, Some(7));
        assert_eq!(parse_exit("exit signal 9").unwrap().signal, Some(9));
        assert!(parse_exit("started").is_none());
    }
}
