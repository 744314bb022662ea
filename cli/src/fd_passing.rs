//! Handing one open socket to another process (SCM_RIGHTS, one byte of
//! payload): ssh-to-job to stj-proxy, stj-proxy (or the ssh_config proxy)
//! to ssh through ProxyUseFdpass, the schedd's shared port to a client.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use sendfd::{RecvWithFd, SendWithFd};

/// Sends `fd` over the connected UNIX socket `to`.
pub fn send_one(to: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
    to.send_with_fd(&[0], &[fd.as_raw_fd()]).map(|_| ())
}

/// Sends `fd` to the process at the other end of our stdout: the socketpair
/// ssh makes for a ProxyCommand when ProxyUseFdpass is set.
pub fn send_on_stdout(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd 1 stays open for the process's lifetime; ManuallyDrop
    // keeps us from closing it.
    let out = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(1) });
    send_one(&out, fd)
}

/// Receives exactly one fd from `from`; an error if the peer closed or sent
/// none.
pub fn recv_one(from: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut fds = [-1 as RawFd; 1];
    let (n, nfds) = from.recv_with_fd(&mut byte, &mut fds)?;
    if n == 0 || nfds != 1 || fds[0] < 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer sent no file descriptor",
        ));
    }
    // SAFETY: the kernel just installed this fd for us; we own it now.
    Ok(unsafe { OwnedFd::from_raw_fd(fds[0]) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn an_fd_crosses_and_a_bare_close_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut x, y) = UnixStream::pair().unwrap();
        send_one(&a, y.as_fd()).unwrap();
        let mut got = UnixStream::from(recv_one(&b).unwrap());
        x.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        got.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(a);
        assert!(recv_one(&b).is_err());
    }
}
