//! The schedd's one TCP port. Every inbound connection (starter links over
//! TLS, shared-port routing, relay halves) arrives here and is told apart by
//! its first bytes, so an admin opens exactly one port. Bounded before a
//! peer is known: connections are a share of the fd limit; silent ones are
//! bounded per source and evicted oldest first; TLS handshakes up to the
//! checked hello take one of a few slots (a share per source), and an
//! unknown key's hello is small (`link.rs`); accept errors back off and one
//! bad connection never takes the listener down.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use stj_cli::shares::{KeyedShares, Unheard, UnheardConn};
use stj_proto::preamble::{Preamble, MAX_LEN};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use crate::state::Schedd;

const TLS_DEADLINE: Duration = Duration::from_secs(10);
/// A connection must say what it is this quickly.
const PREAMBLE_DEADLINE: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Connections not heard from yet, per source and in all.
const UNHEARD_PER_SOURCE: usize = 1024;
const UNHEARD: usize = 4096;
/// Starter links between accept and their checked hello (TLS state, the
/// hello frame), at once, and per source address: a reconnect storm from
/// behind one NAT proceeds a slice at a time, a flood holds at most this.
pub const PREAUTH: usize = 128;
pub const PREAUTH_PER_SOURCE: usize = 64;

pub async fn run(schedd: Arc<Schedd>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    // A share of the fd limit (lib.rs, Budget): beyond it, connections
    // wait in the kernel's backlog instead of taking fds others need.
    let limit = schedd.tcp_slots.clone();
    let unheard = Unheard::new(UNHEARD_PER_SOURCE, UNHEARD);
    let preauth = Arc::new(KeyedShares::new(PREAUTH, PREAUTH_PER_SOURCE));
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = match limit.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => {
                backoff = Duration::from_millis(10);
                c
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to close.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        tcp.set_nodelay(true).ok();
        let acceptor = acceptor.clone();
        let schedd = schedd.clone();
        let silent = unheard.arrived(peer.ip());
        let preauth = preauth.clone();
        let stopping = schedd.stopping.clone();
        tokio::spawn(stopping.run_until_cancelled_owned(dispatch(
            schedd, acceptor, tcp, peer, permit, silent, preauth,
        )));
    }
}

async fn dispatch(
    schedd: Arc<Schedd>,
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    // Held for as long as the connection lives, wherever it goes.
    permit: OwnedSemaphorePermit,
    mut silent: UnheardConn,
    preauth: Arc<KeyedShares<IpAddr>>,
) {
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout(PREAMBLE_DEADLINE, tcp.peek(&mut first)) => r,
        _ = silent.evicted() => {
            tracing::debug!(%peer, "silent connection evicted for a newer one");
            return;
        }
    };
    match peeked {
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(%peer, "connection said nothing; dropped");
            return;
        }
    }
    drop(silent);
    if first[0] == TLS_HANDSHAKE_RECORD {
        // A restart's storm of registrations comes in at a bounded rate;
        // a starter turned away calls back later, at a random moment.
        let Some(wait) = schedd.registrations.slot(std::time::Instant::now()) else {
            tracing::debug!(%peer, "registrations are coming faster than max_registrations_per_sec; turned away");
            return;
        };
        tokio::time::sleep(wait).await;
        // Until its hello is checked, a link holds one of few slots.
        let Ok(share) = tokio::time::timeout(TLS_DEADLINE, preauth.acquire(peer.ip())).await else {
            tracing::warn!(%peer, "too many TLS handshakes in progress; dropped");
            return;
        };
        match tokio::time::timeout(TLS_DEADLINE, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                // Client certificates are mandatory (pki.rs): the starter
                // proved in TLS that it holds this certificate's key.
                let Some(cert) = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| stj_proto::token::sha256(c))
                else {
                    return tracing::warn!(%peer, "starter presented no certificate");
                };
                crate::link::serve(schedd, tls, peer, cert, permit, share).await
            }
            Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
        }
        return;
    }
    let preamble = match tokio::time::timeout(PREAMBLE_DEADLINE, read_preamble(&mut tcp)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "bad preamble; dropped");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "preamble deadline passed; dropped");
            return;
        }
    };
    match preamble {
        Preamble::Route { name, token } => route(&schedd, tcp, peer, &name, &token),
        Preamble::Relay {
            role,
            session_id,
            token,
        } => crate::broker::relay::serve(schedd, tcp, role, session_id, token).await,
    }
}

/// Reads exactly one preamble: the bytes after it belong to the session.
async fn read_preamble(tcp: &mut TcpStream) -> anyhow::Result<Preamble> {
    let mut buf = [0u8; MAX_LEN];
    tcp.read_exact(&mut buf[..6]).await?;
    let head: [u8; 6] = buf[..6].try_into()?;
    let len = Preamble::total_len(&head)?;
    tcp.read_exact(&mut buf[6..len]).await?;
    Ok(Preamble::decode(&buf[..len])?)
}

fn route(schedd: &Schedd, tcp: TcpStream, peer: SocketAddr, name: &str, token: &[u8]) {
    let r = match schedd.rendezvous.take_route(name, token) {
        Ok(r) => r,
        Err(e) => {
            // An impostor who read the name in /proc/net/unix lands here
            // and leaves the route for the genuine starter.
            tracing::warn!(%peer, name, error = %e, "shared port: route refused");
            return;
        }
    };
    let sid = r.session_id;
    let result =
        crate::broker::shared_port::open_socket(&schedd.config.daemon_sock_dir, name, r.uid)
            .and_then(|target| {
                let std = tcp.into_std()?;
                crate::broker::shared_port::pass(&target, &std)
            });
    match result {
        Ok(()) => {
            tracing::info!(%peer, session_id = %sid, "shared port: connection handed to the client")
        }
        Err(e) => {
            tracing::warn!(%peer, session_id = %sid, error = %format!("{e:#}"), "shared port: refused")
        }
    }
}
