//! Bytes a session moved each way, read from the kernel's TCP counters on
//! the data connection after sshd is done with it: nothing sits in the data
//! path to count them.

use std::os::fd::{AsRawFd, BorrowedFd};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub from_client: u64,
    pub to_client: u64,
}

/// TCP_INFO of `socket`: bytes received, and bytes sent that the peer
/// acknowledged. Zero if the socket is not TCP (it always is here).
pub fn of(socket: BorrowedFd<'_>) -> Traffic {
    // SAFETY: tcp_info is plain data; the kernel writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Traffic::default();
    }
    Traffic {
        from_client: info.tcpi_bytes_received,
        to_client: info.tcpi_bytes_acked,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn counts_bytes_each_way() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1; 1000]).unwrap();
        let mut buf = [0; 1000];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[2; 300]).unwrap();
        let mut buf = [0; 300];
        c.read_exact(&mut buf).unwrap();
        // The client's read means the data arrived; its ACK may still be in
        // flight for a moment on the server's side.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let t = super::of(s.as_fd());
            assert_eq!(t.from_client, 1000);
            if t.to_client == 300 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{t:?}");
            std::thread::yield_now();
        }
    }
}
