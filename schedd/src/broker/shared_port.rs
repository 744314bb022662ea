//! Shared port: a starter dials the schedd's port and names, in a routing
//! preamble, the UNIX socket a client made in the daemon_sock dir; the
//! schedd passes it the accepted TCP connection (SCM_RIGHTS). The client
//! needs no port of its own, so a firewalled submit host works.
//!
//! The socket is opened with O_PATH|O_NOFOLLOW and checked on that very
//! inode (a socket, owned by the session's user, not a symlink), then
//! connected through /proc/self/fd: no window between check and use.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::fd::AsFd;
use stj_proto::preamble::valid_name;

/// Opens `dir/name` as the routing target for a session of `uid`.
pub fn open_socket(dir: &Path, name: &str, uid: u32) -> Result<OwnedFd> {
    if !valid_name(name) {
        bail!("routing name {name:?} is not 1-64 characters of [A-Za-z0-9._-]");
    }
    let path = dir.join(name);
    let fd = nix::fcntl::open(
        &path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| {
        format!(
            "no socket {} (is the daemon_sock dir right?)",
            path.display()
        )
    })?;
    // SAFETY: a fresh fd from open().
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // fstat works on O_PATH fds and describes the link itself, not its target.
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        bail!("{} is a symlink; refused", path.display());
    }
    if kind != libc::S_IFSOCK {
        bail!("{} is not a socket; refused", path.display());
    }
    if st.st_uid != uid {
        bail!(
            "{} belongs to uid {}, not to the session's uid {uid}; refused",
            path.display(),
            st.st_uid
        );
    }
    Ok(fd)
}

/// Hands `conn` to the client listening on the socket behind `target`.
pub fn pass(target: &OwnedFd, conn: &std::net::TcpStream) -> Result<()> {
    let client =
        std::os::unix::net::UnixStream::connect(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .context("cannot connect to the client's socket")?;
    stj_cli::fd_passing::send_one(&client, conn.as_fd()).context("cannot pass the connection")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_symlinks_files_and_foreign_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let _l = std::os::unix::net::UnixListener::bind(d.join("good")).unwrap();
        std::os::unix::fs::symlink(d.join("good"), d.join("link")).unwrap();
        std::fs::write(d.join("file"), "").unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert!(open_socket(d, "good", me).is_ok());
        for (name, why) in [
            ("../good", "routing name"),
            (&"x".repeat(65), "routing name"),
            ("link", "symlink"),
            ("file", "not a socket"),
            ("missing", "no socket"),
        ] {
            let e = format!("{:#}", open_socket(d, name, me).unwrap_err());
            assert!(e.contains(why), "{name}: {e}");
        }
        let e = format!("{:#}", open_socket(d, "good", me + 1).unwrap_err());
        assert!(e.contains("belongs to uid"), "{e}");
    }
}
