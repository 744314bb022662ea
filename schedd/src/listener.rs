//! The schedd's TCP port: accepts starters' TLS links. Bounded: a semaphore
//! caps concurrent connections, accept errors back off, and one bad
//! connection never takes the listener down.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::Schedd;

const MAX_CONNECTIONS: usize = 20_000;
const TLS_DEADLINE: Duration = Duration::from_secs(10);

pub async fn run(schedd: Arc<Schedd>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(TLS_DEADLINE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => crate::link::serve(schedd, tls, peer).await,
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
