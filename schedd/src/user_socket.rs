//! The user API's UNIX socket. Every local user may connect (identity comes
//! from SO_PEERCRED), so what one user can make the schedd hold is bounded,
//! well below its fd limit: connections per uid, and in all; root has a
//! share of its own so an admin gets in during a flood. Over a cap the new
//! connection is closed at once — an error for that user, nobody else.
//! Accept errors (EMFILE, ENFILE, ENOBUFS…) are waited out with backoff;
//! they never end the server.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Connections of any one non-root uid.
    pub per_uid: usize,
    /// Connections of all non-root uids together.
    pub total: usize,
    /// Root's own.
    pub root: usize,
}

impl Caps {
    /// Shares of the daemon's fd limit (see `lib.rs` for the whole budget).
    /// One user may hold half of the users' share: enough for bursts (an
    /// editor or Ansible opening a hundred sessions at once), never all.
    pub fn for_fd_limit(limit: u64) -> Caps {
        let total = (limit / 16).clamp(32, 8192) as usize;
        Caps {
            per_uid: (total / 2).max(4),
            total,
            root: (limit / 32).clamp(16, 4096) as usize,
        }
    }
}

#[derive(Default)]
struct Book {
    by_uid: HashMap<u32, usize>,
    users: usize,
}

/// One admitted connection's place; given back when it closes.
struct Share {
    uid: u32,
    book: Arc<Mutex<Book>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = b.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                b.by_uid.remove(&self.uid);
            }
        }
        if self.uid != 0 {
            b.users -= 1;
        }
    }
}

fn admit(book: &Arc<Mutex<Book>>, caps: Caps, uid: u32) -> Result<Share, String> {
    let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
    let mine = b.by_uid.get(&uid).copied().unwrap_or(0);
    if uid == 0 {
        if mine >= caps.root {
            return Err(format!("root holds {mine} connections, its cap"));
        }
    } else if mine >= caps.per_uid {
        return Err(format!(
            "uid {uid} holds {mine} connections, the cap per user"
        ));
    } else if b.users >= caps.total {
        return Err(format!("users hold {} connections, the cap", b.users));
    }
    *b.by_uid.entry(uid).or_insert(0) += 1;
    if uid != 0 {
        b.users += 1;
    }
    Ok(Share {
        uid,
        book: book.clone(),
    })
}

/// An admitted connection: the socket, and its place under the caps.
pub struct Capped {
    inner: UnixStream,
    _share: Share,
}

/// The accepted, admitted connections of `listener`, for tonic. The stream
/// never ends and never yields an error.
pub fn incoming(listener: UnixListener, caps: Caps) -> impl Stream<Item = io::Result<Capped>> {
    let book = Arc::new(Mutex::new(Book::default()));
    futures::stream::unfold(listener, move |listener| {
        let book = book.clone();
        async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "user socket: accept failed; backing off");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                backoff = Duration::from_millis(10);
                let Ok(cred) = stream.peer_cred() else {
                    continue;
                };
                match admit(&book, caps, cred.uid()) {
                    Ok(share) => {
                        return Some((
                            Ok(Capped {
                                inner: stream,
                                _share: share,
                            }),
                            listener,
                        ))
                    }
                    Err(why) => {
                        tracing::debug!(uid = cred.uid(), reason = %why, "user socket: connection refused");
                        drop(stream);
                    }
                }
            }
        }
    })
}

impl Connected for Capped {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_is_capped_others_and_root_still_get_in() {
        let caps = Caps {
            per_uid: 2,
            total: 3,
            root: 1,
        };
        let book = Arc::new(Mutex::new(Book::default()));
        let a1 = admit(&book, caps, 1000).unwrap();
        let _a2 = admit(&book, caps, 1000).unwrap();
        assert!(admit(&book, caps, 1000).is_err(), "per user");
        let _b = admit(&book, caps, 1001).unwrap();
        assert!(admit(&book, caps, 1002).is_err(), "in all");
        let _r = admit(&book, caps, 0).unwrap();
        assert!(admit(&book, caps, 0).is_err(), "root's own share");
        drop(a1);
        assert!(
            admit(&book, caps, 1002).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn caps_scale_with_the_fd_limit_and_stay_below_it() {
        for limit in [1024u64, 20_000, 1 << 20] {
            let c = Caps::for_fd_limit(limit);
            assert!(((c.total + c.root) as u64) < limit / 8, "{limit}: {c:?}");
            assert!(c.per_uid < c.total);
        }
    }
}
