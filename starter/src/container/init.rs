//! The single-threaded side of a container: `stj-starter container-init SPEC`.
//!
//! Process tree:  starter ─ monitor (this process, outside the new PID
//! namespace) ─ init (pid 1 inside) ─ job.
//!
//! Status lines go to stdout (a pipe to the starter): `pid N` (the init's
//! host pid), then `started` or `error job|node MSG` (whose fault: see
//! `JobFault`), and at the end `exit code N` or
//! `exit signal N`. The monitor's stdin is a pipe the starter never writes:
//! when it reads EOF the starter is gone, and the monitor kills the container
//! so no job outlives its starter unseen.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use super::ContainerSpec;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn status(line: &str) {
    // One write per line so lines from the monitor and the init never mix.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes());
    let _ = out.flush();
}

/// The `error` status line for `e`: the job's fault or the node's.
fn failed(e: &anyhow::Error) {
    let whose = if e.downcast_ref::<super::JobFault>().is_some() {
        "job"
    } else {
        "node"
    };
    status(&format!("error {whose} {e:#}"));
}

pub fn main(spec_path: &Path) -> ! {
    let code = match monitor(spec_path) {
        Ok(code) => code,
        Err(e) => {
            failed(&e);
            1
        }
    };
    std::process::exit(code)
}

fn monitor(spec_path: &Path) -> Result<i32> {
    let spec: ContainerSpec = serde_json::from_slice(
        &fs::read(spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?,
    )
    .context("bad container spec")?;
    // The cgroup namespace is the init's to make, once it is in the job's
    // cgroup: the job then sees that cgroup as its root.
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC,
    )
    .context("cannot create the job's namespaces (the starter must run as root)")?;

    let _ = nix::sys::prctl::set_name(c"stj-monitor");
    // SAFETY: this process is single-threaded (it never started a runtime).
    match unsafe { fork() }.context("fork failed")? {
        ForkResult::Child => {
            let code = match init(&spec) {
                Ok(code) => code,
                Err(e) => {
                    failed(&e);
                    127
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            status(&format!("pid {child}"));
            watch(child)
        }
    }
}

/// Waits for the init to end, or for the starter to die (stdin EOF), which
/// kills the whole container: killing a PID namespace's pid 1 kills every
/// process in it.
fn watch(init: Pid) -> Result<i32> {
    // SAFETY: pidfd_open returns a fresh fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, init.as_raw(), 0) };
    if raw < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that only we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let stdin = std::io::stdin();
    loop {
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
            Ok(_) => {}
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer from fd 0.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                let _ = kill(init, Signal::SIGKILL);
                break;
            }
        }
    }
    loop {
        match waitpid(init, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                status(&format!("exit signal {}", sig as i32));
                return Ok(128 + sig as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waitpid: {e}"),
        }
    }
}

/// Signals the init handles itself; everything else keeps its default.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// pid 1 of the job's PID namespace.
fn init(spec: &ContainerSpec) -> Result<i32> {
    // If the monitor dies, so do we, and with us the namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // `ps` inside the job shows pid 1 as stj-init, not as the starter binary.
    let _ = nix::sys::prctl::set_name(c"stj-init");
    // Into the job's cgroup before anything of the job exists: all it
    // starts, and every session, is counted and limited there.
    crate::cgroup::join(&spec.cgroups).context("cannot join the job's cgroup")?;
    // When the job's memory limit is reached the kernel kills the job's
    // processes, not the reaper that reports how the job ended (the job
    // itself gets the default back before it starts). Needs
    // CAP_SYS_RESOURCE, which some sandboxes withhold; without it the OOM
    // killer may pick the init too, which ends the job all the same and is
    // reported the same way.
    let _ = set_oom_score_adj(-1000);
    unshare(CloneFlags::CLONE_NEWCGROUP).context("cannot create the job's cgroup namespace")?;
    let sigs = handled();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sigs), None)?;

    // Groups are looked up in the node's /etc/group, before any pivot_root.
    let groups = supplementary_groups(spec);
    super::view::setup(spec, &groups)?;

    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: single-threaded; the child only execs or exits.
    let job = match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            let err = exec_job(spec, &groups);
            let mut w = fs::File::from(wr);
            let _ = w.write_all(format!("{err:#}").as_bytes());
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(wr);
    let mut msg = String::new();
    fs::File::from(rd).read_to_string(&mut msg).ok();
    if !msg.is_empty() {
        let _ = waitpid(job, None);
        // What stopped exec (the command, its directory, its output files)
        // is the job's: it would fail on any node.
        return Err(super::JobFault(msg).into());
    }
    status("started");
    // Nothing in a job runs as root, pid 1 included: what is left for it to
    // do (reap, forward signals, kill what the job left) needs no privilege
    // over the job's own processes. Changing uid clears the parent-death
    // signal, so it is set again.
    become_job_user(spec, &groups)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if spec.confined {
        super::confine::apply()?;
    }

    loop {
        let sig = sigs.wait()?;
        if sig != Signal::SIGCHLD {
            // pid 1 forwards to everything in the namespace: the job,
            // whatever it spawned, and sessions.
            let _ = kill(Pid::from_raw(-1), sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == job => {
                    finish();
                    status(&format!("exit code {code}"));
                    return Ok(code);
                }
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == job => {
                    finish();
                    status(&format!("exit signal {}", s as i32));
                    return Ok(128 + s as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue, // a reaped orphan
            }
        }
    }
}

fn set_oom_score_adj(v: i32) -> Result<()> {
    fs::write("/proc/self/oom_score_adj", v.to_string()).context("cannot set oom_score_adj")
}

/// The job is over: nothing it left behind may outlive it.
fn finish() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
}

fn supplementary_groups(spec: &ContainerSpec) -> Vec<Gid> {
    let Ok(name) = CString::new(spec.user_name.clone()) else {
        return vec![];
    };
    match nix::unistd::User::from_uid(Uid::from_raw(spec.uid)) {
        Ok(Some(u)) if u.name == spec.user_name => {
            nix::unistd::getgrouplist(&name, Gid::from_raw(spec.gid)).unwrap_or_default()
        }
        _ => vec![],
    }
}

/// The environment the job's program starts with: what was submitted, and
/// defaults for what was not. Sessions start from the same (see sshd.rs).
pub fn job_env(spec: &ContainerSpec) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    let mut set_default = |k: &str, v: String| {
        if !env.iter().any(|(n, _)| n == k) {
            env.push((k.to_string(), v));
        }
    };
    set_default("PATH", DEFAULT_PATH.to_string());
    set_default("HOME", spec.cwd.clone());
    set_default("USER", spec.user_name.clone());
    set_default("LOGNAME", spec.user_name.clone());
    env.retain(|(k, _)| k != "STJ_JOB_ID");
    env.push(("STJ_JOB_ID".into(), spec.job_id.to_string()));
    env
}

/// Finds the program like execvp, but in the job's PATH, not ours.
fn resolve(program: &str, env: &[(String, String)]) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    bail!("command {program:?} not found in the job's PATH={path}")
}

/// The job's stdout/stderr: private to the job's user (0600), whatever the
/// umask; nobody else reads what a job prints unless its owner shares it.
fn open_output(path: &str) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open output file {path} as the job user; pass a writable --output/--error"
            )
        })?;
    Ok(f.into())
}

/// Becomes the job's user for good (groups, gid, uid), checked.
fn become_job_user(spec: &ContainerSpec, groups: &[Gid]) -> Result<()> {
    if spec.uid == 0 {
        bail!("refusing to run a job as root");
    }
    nix::unistd::setgroups(groups).context("setgroups")?;
    nix::unistd::setgid(Gid::from_raw(spec.gid)).context("setgid")?;
    nix::unistd::setuid(Uid::from_raw(spec.uid)).context("setuid")?;
    if nix::unistd::geteuid().is_root() || nix::unistd::getegid().as_raw() != spec.gid {
        bail!(
            "could not drop privileges to uid {} gid {}",
            spec.uid,
            spec.gid
        );
    }
    Ok(())
}

/// Becomes the job: only returns on failure.
fn exec_job(spec: &ContainerSpec, groups: &[Gid]) -> anyhow::Error {
    let r = (|| -> Result<std::convert::Infallible> {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        // Still root: this also lowers the floor the job could go back
        // down to without privilege.
        set_oom_score_adj(0)?;
        nix::unistd::setsid()?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(spec.umask));
        become_job_user(spec, groups)?;
        if spec.confined {
            super::confine::apply()?;
        }
        nix::unistd::chdir(spec.cwd.as_str()).with_context(|| {
            let hint = if spec.image.is_none() && (spec.cwd == "/tmp" || spec.cwd.starts_with("/tmp/")) {
                " (a job's /tmp is private and starts empty: submit from, or pass --cwd, a directory outside /tmp)"
            } else {
                ""
            };
            format!("cannot enter the working directory {} as uid {}{hint}", spec.cwd, spec.uid)
        })?;
        let out = open_output(&spec.stdout)?;
        let err = open_output(&spec.stderr)?;
        let null = fs::File::open("/dev/null")?;
        nix::unistd::dup2(null.as_raw_fd(), 0)?;
        nix::unistd::dup2(out.as_raw_fd(), 1)?;
        nix::unistd::dup2(err.as_raw_fd(), 2)?;
        let env = job_env(spec);
        let program = resolve(&spec.args[0], &env)?;
        let c = |s: &str| CString::new(s).context("NUL byte in argument or environment");
        let prog = CString::new(program.as_os_str().as_encoded_bytes())?;
        let args = spec.args.iter().map(|a| c(a)).collect::<Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| c(&format!("{k}={v}")))
            .collect::<Result<Vec<_>>>()?;
        nix::unistd::execve(&prog, &args, &envp)
            .with_context(|| format!("cannot execute {}", program.display()))
    })();
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
