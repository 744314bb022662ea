//! `stj-starter session-enter SPEC`: the single-threaded helper that puts a
//! session into a running job. fd 0/1 are the session socket, fd 3 is a
//! pidfd of the process the session lands beside (the job's init, or the
//! program of a container the job made). It joins the job's cgroup, then
//! all of that process's namespaces but its user namespace at once (setns
//! on the pidfd), forks so the PID namespace applies, makes the session's
//! directory on the node its working directory (sshd reaches the kit and
//! its files through it: see sshd.rs), becomes the job's user and execs
//! sshd; it exits with sshd's status.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Uid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct EnterSpec {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    /// The session's files on the node: sshd's working directory.
    pub session_dir: std::path::PathBuf,
    pub job_id: u64,
    /// sshd's command line as the job sees it (through the kit's loader).
    pub argv: Vec<String>,
    /// The passwd line the shim answers with (`STJ_PASSWD`).
    pub passwd: String,
    /// The job's umask, for files the session creates.
    pub umask: u32,
    /// A slot-user job's session: confined like the job (`confine.rs`).
    pub confined: bool,
    /// Landing in a mount namespace the job shaped (an inner container):
    /// no set-id or file-capability program may gain privileges there.
    #[serde(default)]
    pub no_new_privs: bool,
    /// The job's cgroup (a directory per hierarchy), joined first.
    #[serde(default)]
    pub cgroups: Vec<std::path::PathBuf>,
}

pub fn main(spec_path: &Path) -> ! {
    match enter(spec_path) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cannot enter the job: {e:#}");
            std::process::exit(1)
        }
    }
}

fn enter(spec_path: &Path) -> Result<i32> {
    let spec: EnterSpec =
        serde_json::from_slice(&std::fs::read(spec_path)?).context("bad session spec")?;
    // Looked up on the node, before we switch to the job's mount namespace.
    let host_user = nix::unistd::User::from_uid(Uid::from_raw(spec.uid))
        .ok()
        .flatten();
    let groups = match (&host_user, CString::new(spec.user.clone())) {
        (Some(u), Ok(name)) if u.name == spec.user => {
            nix::unistd::getgrouplist(&name, Gid::from_raw(spec.gid)).unwrap_or_default()
        }
        _ => vec![],
    };
    // Opened on the node: inside the job's mount namespace a root process
    // opens nothing (an image's /dev may be the job user's to shape).
    let null = std::fs::File::open("/dev/null")?;
    let session_dir = nix::fcntl::open(
        &spec.session_dir,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", spec.session_dir.display()))?;
    // SAFETY: a fresh fd from open(), owned by nobody else.
    let session_dir = unsafe { OwnedFd::from_raw_fd(session_dir) };
    // Accounted, limited and ended with the job, like its own processes.
    crate::cgroup::join(&spec.cgroups).context("cannot join the job's cgroup")?;
    // SAFETY: fd 3 was placed here by the starter and is ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(3) };
    // Not its user namespace: the session runs as the job's owner, whose
    // uid a rootless container maps to its root (README: where a session
    // lands). Its network namespace, so `-L` reaches what listens there.
    setns(
        &pidfd,
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .context("setns into the job (has it ended?)")?;
    drop(pidfd);
    let passwd = spec.passwd.clone();

    // SAFETY: single-threaded process.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let e = exec_sshd(&spec, &groups, &passwd, &session_dir);
            eprintln!("cannot start sshd in the job: {e:#}");
            // SAFETY: leave without running atexit handlers.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            // Only sshd holds the socket now, so the connection closes the
            // moment sshd exits.
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1)?;
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => bail!("waitpid: {e}"),
                }
            }
        }
    }
}

fn exec_sshd(spec: &EnterSpec, groups: &[Gid], passwd: &str, dir: &OwnedFd) -> anyhow::Error {
    let r = (|| -> Result<std::convert::Infallible> {
        if spec.uid == 0 {
            bail!("refusing to run a session as root");
        }
        nix::unistd::setgroups(groups).context("setgroups")?;
        nix::unistd::setgid(Gid::from_raw(spec.gid)).context("setgid")?;
        nix::unistd::setuid(Uid::from_raw(spec.uid)).context("setuid")?;
        if nix::unistd::geteuid().is_root() {
            bail!("could not drop root");
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(spec.umask));
        if spec.confined {
            super::confine::apply()?;
        } else if spec.no_new_privs {
            // SAFETY: prctl with constant arguments on this process.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                bail!(
                    "cannot set no_new_privs: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        // After setns, which moved it to the job's root: the kit is exec'd
        // through it, and the session files are read through fd 3 (sshd.rs;
        // the shim keeps it for sshd and from what sshd runs).
        let dir = std::os::fd::AsRawFd::as_raw_fd(dir);
        nix::unistd::fchdir(dir).context("fchdir")?;
        nix::unistd::dup2(dir, stj_preload::SESSION_FD).context("dup2")?;
        // A container whose /proc does not show this process cannot work.
        if std::fs::metadata("/proc/self/fd/3/sshd_config").is_err() {
            bail!("the container the session lands in has no /proc showing its processes (sshd reads its files through /proc/self/fd); `ssh-to-job --outer` lands in the job's own container");
        }
        let c = |s: &str| CString::new(s).context("NUL byte");
        let argv = spec.argv.iter().map(|a| c(a)).collect::<Result<Vec<_>>>()?;
        // The shim comes from the loader's --preload, not LD_PRELOAD, so the
        // user's session processes do not inherit it.
        let env = [
            format!("{}={passwd}", stj_preload::ENV),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ];
        let envp = env.iter().map(|e| c(e)).collect::<Result<Vec<_>>>()?;
        nix::unistd::execve(&argv[0], &argv, &envp)
            .with_context(|| format!("cannot execute {}", spec.argv[0]))
    })();
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
