//! `stj-starter session-enter SPEC`: the single-threaded helper that puts a
//! session into a running job. fd 0/1 are the session socket, fd 3 is a
//! pidfd of the process the session lands beside (the job's init, or the
//! program of a container the job made). It takes read-only detached
//! copies of the session's directory and of the sshd kit (open_tree), joins
//! the job's cgroup, then all of that process's namespaces but its user
//! namespace at once (setns on the pidfd), forks so the PID namespace
//! applies, hands sshd the two copies as fds 3 and 4 (sshd reaches its
//! files and the kit through them: see sshd.rs), becomes the job's user and
//! execs sshd; it exits with sshd's status.
//!
//! Why copies: sshd runs in the job's mount namespace and reads what is
//! there (OpenSSL's config, NSS modules), so code the job chose can run
//! inside it. A handle on a directory of the node's own mount tree would
//! let that code walk `..` to the node's `/`; the root of a detached copy
//! is a root of its own, `..` stays inside it, and it is read-only.

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
    /// The session's files on the node (sshd's fd 3).
    pub session_dir: std::path::PathBuf,
    /// The sshd kit on the node (sshd's fd 4 until it starts).
    pub kit_dir: std::path::PathBuf,
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
    let nothing_runs = libc::MOUNT_ATTR_NOEXEC as u64;
    let session_dir = detached_copy(&spec.session_dir, nothing_runs)?;
    let kit = detached_copy(&spec.kit_dir, 0)?;
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
    ptys_for_a_non_root_sshd()?;
    let passwd = spec.passwd.clone();

    // SAFETY: single-threaded process.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let e = exec_sshd(&spec, &groups, &passwd, &session_dir, &kit);
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

/// sshd, not being root, can give the session's pty to its user only if
/// the devpts it comes from makes ptys with the tty group (gid=5), as the
/// job's own devpts in our containers does. A job in the node's namespaces
/// (Slurm's) may have a devpts without it; the session then gets a devpts
/// instance of its own, in a copy of the job's mount namespace that sees
/// the job's mounts come and go (slave) and shares nothing back.
fn ptys_for_a_non_root_sshd() -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let usable = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/dev/pts"))
        .last()
        .and_then(|l| l.split_once(" - "))
        .is_some_and(|(_, fs)| {
            fs.starts_with("devpts ") && fs.split([',', ' ']).any(|o| o == "gid=5")
        });
    if usable {
        return Ok(());
    }
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("unshare for the session's ptys")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("cannot make the session's mounts one-way")?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )
    .context("cannot mount the session's devpts")?;
    mount(
        Some("/dev/pts/ptmx"),
        "/dev/ptmx",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("cannot bind the session's ptmx")?;
    Ok(())
}

/// A read-only (nosuid, nodev, and `extra`) copy of the directory `path`,
/// detached from every mount tree: its root is its own.
fn detached_copy(path: &Path, extra: u64) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; open_tree returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot copy the mount of {}", path.display()));
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    super::view::set_mount_attrs_at(Some(&fd), path, attrs as u64 | extra, 0, false)?;
    Ok(fd)
}

fn exec_sshd(
    spec: &EnterSpec,
    groups: &[Gid],
    passwd: &str,
    dir: &OwnedFd,
    kit: &OwnedFd,
) -> anyhow::Error {
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
        // Where sshd finds its files and the kit (sshd.rs); the shim keeps
        // fd 3 for sshd's life and from what sshd runs; fd 4 goes at sshd's
        // start-up, once the loader has loaded the kit's libraries.
        let raw = std::os::fd::AsRawFd::as_raw_fd;
        nix::unistd::dup2(raw(dir), stj_preload::SESSION_FD).context("dup2")?;
        nix::unistd::dup2(raw(kit), stj_preload::SESSION_FD + 1).context("dup2")?;
        nix::unistd::chdir("/").context("chdir")?;
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
