//! The session's home directory. Shells run files from it as the job's
//! user (`.profile`, `.bashrc`, X11's `.Xauthority`), so it must be a place
//! no one else controls. The job's working directory is often not such a
//! place (a shared project dir), so it is only where the session *starts*.
//!
//! The rule, checked in the job's own view of the filesystem (an image may
//! have its own /home):
//! - the account's home from the node's passwd, when the job runs as its
//!   owner and that directory exists in the job's view, and it and every
//!   directory above it belong to root or the job's user and are not
//!   group- or world-writable (sshd's StrictModes rule);
//! - a fresh private directory per session when there is no such home
//!   (slot users, images without it, accounts without a passwd entry);
//! - a refusal naming the directory and the fix when the home exists but
//!   someone else could change what is in it.
//! `~/.ssh/rc` is never run (`PermitUserRC no`): sshd would look for it in
//! the session's start directory, the job's working directory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use crate::container::Init;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// The account's own home, as the job sees it.
    Own(String),
    /// No home in the job's view: a private directory for this session.
    Private,
}

/// Why a home cannot be used; the message names the path and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe(pub String);

/// Applies the rule to `home` (absolute, in the job's view) for `uid`.
pub fn check(root: &OwnedFd, home: &str, uid: u32) -> Result<Home, Unsafe> {
    let mut prefix = String::new();
    let mut dirs = vec!["/".to_string()];
    for c in Path::new(home).components() {
        if let Component::Normal(n) = c {
            prefix.push('/');
            prefix.push_str(&n.to_string_lossy());
            dirs.push(prefix.clone());
        }
    }
    for dir in &dirs {
        let fd = match crate::in_root::open(root, dir, libc::O_PATH) {
            Ok(fd) => fd,
            // Not there in this job's view: no home to protect.
            Err(_) => return Ok(Home::Private),
        };
        let st = match nix::sys::stat::fstat(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(_) => return Ok(Home::Private),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(Home::Private);
        }
        let mode = st.st_mode & 0o7777;
        if st.st_uid != 0 && st.st_uid != uid {
            return Err(Unsafe(format!(
                "the home directory {home} is not safe for a session: {dir} belongs to uid {}, who could change the files your shell runs there (.profile, .bashrc); ask the admin to give {dir} to you or to root",
                st.st_uid
            )));
        }
        if mode & 0o022 != 0 {
            return Err(Unsafe(format!(
                "the home directory {home} is not safe for a session: {dir} is writable by {} (mode {mode:04o}), who could change the files your shell runs there (.profile, .bashrc); fix it with `chmod go-w {dir}`",
                if mode & 0o002 != 0 { "everyone" } else { "its group" }
            )));
        }
    }
    Ok(Home::Own(home.to_string()))
}

/// A session landing in a container the job made (landing.rs).
pub struct Inner<'a> {
    /// The job's own init, whose view the session dir is visible in.
    pub job_root: &'a Init,
    /// HOME in the environment of the program the session lands beside.
    pub env_home: Option<&'a str>,
}

/// The session's home in the view of the process `at` whose namespaces a
/// session joins, running as `uid`; `passwd_home` is the account's home on
/// the node (None for slot users and accounts without an entry).
///
/// A private directory lives in the session's files, which a container
/// that changed its root (runc's pivot_root) does not see; there the
/// program's own HOME, then `/`, are taken if they pass the rule, and a
/// container offering neither is refused (`--outer` still works).
pub fn choose(
    at: &Init,
    uid: u32,
    passwd_home: Option<&str>,
    inner: Option<Inner>,
) -> Result<Home, Unsafe> {
    let Ok(root) = crate::in_root::open_dir(Path::new(&format!("/proc/{}/root", at.pid))) else {
        return Ok(Home::Private);
    };
    // The pid named that process when we opened its root only if it still
    // runs now (the pidfd says so, whatever pids were reused).
    if !at.alive() {
        return Ok(Home::Private);
    }
    if let Some(home) = passwd_home.filter(|h| h.starts_with('/')) {
        if let own @ Home::Own(_) = check(&root, home, uid)? {
            return Ok(own);
        }
    }
    let Some(inner) = inner else {
        return Ok(Home::Private);
    };
    if super::landing::same_root(at, inner.job_root) {
        return Ok(Home::Private);
    }
    let candidates = inner
        .env_home
        .filter(|h| h.starts_with('/'))
        .into_iter()
        .chain(["/"]);
    let mut why = Vec::new();
    for c in candidates {
        match check(&root, c, uid) {
            Ok(own @ Home::Own(_)) => return Ok(own),
            Ok(Home::Private) => why.push(format!("{c} does not exist there")),
            Err(Unsafe(w)) => why.push(w),
        }
    }
    Err(Unsafe(format!(
        "the container the job's program runs in has no home directory a session could use safely ({}); `ssh-to-job --outer` lands in the job's own container",
        why.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_rule() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::set_permissions(r, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(r.join("home/alice")).unwrap();
        for d in ["home", "home/alice"] {
            fs::set_permissions(r.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let fd = crate::in_root::open_dir(r).unwrap();
        // Owned by root (the test runs as root): fine for any uid.
        assert_eq!(
            check(&fd, "/home/alice", 1000),
            Ok(Home::Own("/home/alice".into()))
        );
        assert_eq!(check(&fd, "/home/bob", 1000), Ok(Home::Private));
        // A symlink resolves inside the job's root, never to the host's.
        std::os::unix::fs::symlink("/home/alice", r.join("home/link")).unwrap();
        assert_eq!(
            check(&fd, "/home/link", 1000),
            Ok(Home::Own("/home/link".into()))
        );
        fs::set_permissions(r.join("home/alice"), fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&fd, "/home/alice", 1000).unwrap_err().0;
        assert!(
            e.contains("chmod go-w /home/alice") && e.contains("everyone"),
            "{e}"
        );
        fs::set_permissions(r.join("home/alice"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(r.join("home"), fs::Permissions::from_mode(0o775)).unwrap();
        let e = check(&fd, "/home/alice", 1000).unwrap_err().0;
        assert!(e.contains("/home is writable by its group"), "{e}");
        fs::set_permissions(r.join("home"), fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&r.join("home/alice"), Some(4242.into()), None).unwrap();
        let e = check(&fd, "/home/alice", 1000).unwrap_err().0;
        assert!(e.contains("belongs to uid 4242"), "{e}");
        assert_eq!(
            check(&fd, "/home/alice", 4242),
            Ok(Home::Own("/home/alice".into()))
        );
    }
}
