//! Moves bytes between two sockets with splice(2) through a kernel pipe:
//! no copy through userspace, which is what lets the relay keep up with
//! direct TCP. Integrates with tokio's readiness so one thread serves many
//! relays.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

const PIPE_SIZE: usize = 1 << 20;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
    // A bigger pipe moves more per syscall; the default (64 KiB) still works.
    // SAFETY: fcntl on a pipe fd we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    Ok((r, w))
}

fn would_block(e: nix::errno::Errno) -> io::Error {
    if e == nix::errno::Errno::EAGAIN {
        io::ErrorKind::WouldBlock.into()
    } else {
        e.into()
    }
}

/// Copies `from` → `to` until `from` reaches EOF, then half-closes `to`.
/// Returns the bytes moved.
pub async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pw.as_fd(), None, PIPE_SIZE, flags).map_err(would_block)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // SAFETY: shutdown on a socket we hold; tells the peer we are done.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, to.as_fd(), None, left, flags).map_err(would_block)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Relays both ways until both directions end; an error on either side
/// ends both at once. Returns (a→b, b→a) bytes.
pub async fn relay(a: TcpStream, b: TcpStream) -> io::Result<(u64, u64)> {
    let up = pump(&a, &b);
    let down = pump(&b, &a);
    tokio::pin!(up, down);
    let (mut ab, mut ba) = (None, None);
    while ab.is_none() || ba.is_none() {
        tokio::select! {
            r = &mut up, if ab.is_none() => ab = Some(r?),
            r = &mut down, if ba.is_none() => ba = Some(r?),
        }
    }
    Ok((ab.unwrap_or(0), ba.unwrap_or(0)))
}
