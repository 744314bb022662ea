//! The relay: both ends of a session dial the schedd's port with the session
//! id and their own token; the broker pairs them and splices. It sees only
//! handshake MACs and SSH ciphertext. A half whose partner never comes is
//! dropped after a deadline; either side closing closes both.

use std::sync::Arc;
use std::time::Duration;
use stj_proto::session_id::SessionId;

use stj_proto::preamble::{Role, TOKEN_LEN};
use stj_proto::starter::{schedd_message::Msg as Out, DialRelay, ScheddMessage};
use tokio::net::TcpStream;

use crate::state::Schedd;

pub async fn serve(
    schedd: Arc<Schedd>,
    stream: TcpStream,
    role: Role,
    session_id: SessionId,
    token: [u8; TOKEN_LEN],
) {
    let sid = session_id;
    match role {
        Role::Starter => {
            if let Err((e, _stream)) =
                schedd
                    .rendezvous
                    .starter_arrives(&session_id, &token, stream)
            {
                tracing::warn!(session_id = %sid, error = %e, "relay: starter half refused");
            }
        }
        Role::Client => {
            // Each relayed session holds two sockets and two kernel pipes:
            // their number is a share of the fd limit (lib.rs, Budget).
            let Ok(_relaying) = schedd.relays.clone().try_acquire_owned() else {
                tracing::warn!(session_id = %sid, cap = schedd.budget.relays, "relay: as many sessions relayed as the schedd may hold; refused (direct and reverse paths still work)");
                return;
            };
            let (node, starter_token, partner) =
                match schedd.rendezvous.client_arrives(&session_id, &token) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(session_id = %sid, error = %e, "relay: client half refused");
                        return;
                    }
                };
            let asked = schedd.registry.send(
                &node,
                ScheddMessage {
                    msg: Some(Out::DialRelay(DialRelay {
                        session_id: session_id.to_vec(),
                        token: starter_token.to_vec(),
                    })),
                },
            );
            if !asked {
                tracing::warn!(session_id = %sid, node = %node, "relay: node not connected");
                return;
            }
            let deadline = Duration::from_secs(schedd.config.relay_pairing_secs);
            let other = match tokio::time::timeout(deadline, partner).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::warn!(session_id = %sid, node = %node, "relay: the starter half never arrived; dropping the client half");
                    return;
                }
            };
            tracing::info!(session_id = %sid, node = %node, "relay: halves paired");
            match super::splice::relay(stream, other).await {
                Ok((up, down)) => {
                    use crate::metrics::Direction;
                    for (direction, n) in [("from_client", up), ("to_client", down)] {
                        schedd
                            .metrics
                            .relay_bytes
                            .get_or_create(&Direction { direction })
                            .inc_by(n);
                    }
                    tracing::info!(session_id = %sid, bytes_up = up, bytes_down = down, "relay: session ended")
                }
                Err(e) => {
                    tracing::info!(session_id = %sid, error = %e, "relay: session ended with an error")
                }
            }
        }
    }
}
