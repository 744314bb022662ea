//! Where a session lands, decided once per session before the handshake's
//! Ready (so a session that cannot land safely is refused with a reason):
//! the process whose namespaces it joins (the job's innermost container
//! unless the client asked for `--outer`), and what that process's program
//! sees — its working directory and environment — and the session's HOME
//! in that view.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::home::{self, Home};
use super::innermost;
use crate::container::Init;
use crate::job_locator::{JobTarget, Members, OuterView};

/// At most this much of a process's environment is taken into a session:
/// the job chooses it, and it ends up on one line of sshd's config.
pub const MAX_ENVIRON: usize = 128 * 1024;

/// How long reading a program's environment may take. It lives in the
/// program's memory, which a job can back with a file (FUSE) that never
/// answers; the reader is a helper process that is killed then.
const ENVIRON_DEADLINE: Duration = Duration::from_secs(2);

pub struct Landing {
    /// The process whose namespaces the session joins.
    pub at: Arc<Init>,
    /// The cgroups the session joins: that process's, inside the job's.
    pub cgroups: Vec<std::path::PathBuf>,
    /// An inner container the job made (its mount namespace is the job's
    /// to shape: sessions run with no_new_privs there).
    pub inner: bool,
    /// Where the session starts: that program's working directory.
    pub cwd: String,
    /// What the session's environment starts from: that program's.
    pub env: Vec<(String, String)>,
    pub home: Home,
}

/// Decides where a session into `target` lands.
pub async fn decide(target: &JobTarget, outer: bool) -> Result<Landing, home::Unsafe> {
    let spec = &target.spec;
    let passwd_home = super::passwd_home(spec);
    let (init, members) = (target.init.clone(), target.members.clone());
    let inner = match outer {
        true => None,
        // /proc walks are quick but blocking.
        false => tokio::task::spawn_blocking(move || innermost_container(&init, &members))
            .await
            .ok()
            .flatten(),
    };
    let Some((at, cwd)) = inner else {
        let at = target.init.clone();
        let (cwd, env) = match target.outer_view {
            OuterView::Spec => (spec.cwd.clone(), crate::container::job_env(spec)),
            OuterView::Process => (
                innermost::cwd(at.pid).unwrap_or_else(|| spec.cwd.clone()),
                environ(&at).await.unwrap_or_else(|why| {
                    tracing::warn!(job_id = spec.job_id, pid = at.pid, %why, "the job's environment cannot be read; the session starts from an empty one");
                    Vec::new()
                }),
            ),
        };
        let home = home::choose(&at, spec.uid, passwd_home.as_deref(), None)?;
        return Ok(Landing {
            cgroups: joined(&at, &target.cgroups),
            at,
            inner: false,
            cwd,
            env,
            home,
        });
    };
    let env = match environ(&at).await {
        Ok(env) => env,
        Err(why) => {
            tracing::warn!(job_id = spec.job_id, pid = at.pid, %why, "the inner program's environment cannot be read; the session gets the job's");
            crate::container::job_env(spec)
        }
    };
    let env_home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.clone());
    let home = home::choose(
        &at,
        spec.uid,
        passwd_home.as_deref(),
        Some(home::Inner {
            job_root: &target.init,
            env_home: env_home.as_deref(),
        }),
    )?;
    Ok(Landing {
        cgroups: joined(&at, &target.cgroups),
        at,
        inner: true,
        cwd,
        env,
        home,
    })
}

/// The cgroups a session beside `at` joins: its own, inside the job's
/// (read by pid, so valid only while the pidfd shows it alive).
fn joined(at: &Init, job: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let dirs = crate::cgroup::cgroups_of(at.pid, job);
    match at.alive() {
        true => dirs,
        false => Vec::new(),
    }
}

/// The job's innermost container, when it has one (innermost.rs): its
/// process, held by a pidfd, and the working directory it has.
fn innermost_container(init: &Init, members: &Members) -> Option<(Arc<Init>, String)> {
    let (pid, start) = innermost::innermost(init.pid, members);
    if pid == init.pid {
        return None;
    }
    let pidfd = crate::container::pidfd_open(pid).ok()?;
    // The pidfd pins whatever process has the pid now: it must still be the
    // one chosen (same start, still the job's), or a process that took the
    // pid meanwhile would stand in.
    if !innermost::still_ours(pid, start, members) {
        return None;
    }
    let cwd = innermost::cwd(pid)?;
    let at = Init { pidfd, pid };
    at.alive().then(|| (Arc::new(at), cwd))
}

/// The environment of the process `at`, read by a forked child of the
/// starter that is killed if it takes longer than ENVIRON_DEADLINE (the
/// memory behind it may be a FUSE file that never answers). The child
/// only makes system calls — open, read, write, _exit — which is what a
/// child of a multi-threaded process may do; a fresh exec of a helper
/// would cost a few milliseconds more on every session.
async fn environ(at: &Init) -> Result<Vec<(String, String)>, String> {
    let path =
        std::ffi::CString::new(format!("/proc/{}/environ", at.pid)).map_err(|e| e.to_string())?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_ENVIRON];
    // SAFETY: the child calls only async-signal-safe functions on memory
    // allocated before the fork, and leaves with _exit.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                libc::_exit(1);
            }
            let mut n = 0usize;
            while n < MAX_ENVIRON {
                let r = libc::read(fd, buf.as_mut_ptr().add(n).cast(), MAX_ENVIRON - n);
                if r <= 0 {
                    break;
                }
                n += r as usize;
            }
            let w = std::os::fd::AsRawFd::as_raw_fd(&wr);
            let mut done = 0usize;
            while done < n {
                let r = libc::write(w, buf.as_ptr().add(done).cast(), n - done);
                if r <= 0 {
                    libc::_exit(1);
                }
                done += r as usize;
            }
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(wr);
    drop(buf);
    let mut out = tokio::fs::File::from_std(std::fs::File::from(rd));
    let mut raw = Vec::new();
    let mut limited = (&mut out).take(MAX_ENVIRON as u64);
    let read = tokio::time::timeout(ENVIRON_DEADLINE, limited.read_to_end(&mut raw)).await;
    if read.is_err() {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    let status = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(child, None))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    match (read, status) {
        (Err(_), _) => return Err(format!("not read within {ENVIRON_DEADLINE:?}")),
        (Ok(Err(e)), _) => return Err(e.to_string()),
        (Ok(Ok(_)), nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
        (Ok(Ok(_)), s) => return Err(format!("the reader failed ({s:?})")),
    }
    // Read by pid: only a process that is still alive now had that pid
    // all along (the pidfd pins it), so the environment is its own.
    if !at.alive() {
        return Err("the process ended".into());
    }
    Ok(parse_environ(&raw))
}

/// A variable cut at MAX_ENVIRON is left out.
fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    let mut raw = &raw[..raw.len().min(MAX_ENVIRON)];
    if raw.len() == MAX_ENVIRON {
        raw = &raw[..raw.iter().rposition(|&b| b == 0).map_or(0, |p| p + 1)];
    }
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether two processes see the same root directory.
pub fn same_root(a: &Init, b: &Init) -> bool {
    let root = |i: &Init| {
        crate::in_root::open_dir(std::path::Path::new(&format!("/proc/{}/root", i.pid)))
            .ok()
            .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok())
            .map(|st| (st.st_dev, st.st_ino))
    };
    let (ra, rb) = (root(a), root(b));
    ra.is_some() && ra == rb && a.alive() && b.alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_is_parsed_and_bounded() {
        let env = parse_environ(b"A=1\0B=two=2\0=nokey\0junk\0C=\0");
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two=2".into()),
                ("C".into(), "".into())
            ]
        );
        let big = vec![b'x'; MAX_ENVIRON * 2];
        assert!(parse_environ(&big).is_empty());
    }
}
