//! The starter's only connection: outbound to the schedd, TLS with the CA
//! pinned by the join token. Reconnects with backoff while jobs keep running,
//! and tells the schedd on every (re-)registration what runs here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use stj_proto::session_id::SessionId;

use futures::{SinkExt, StreamExt};
use stj_proto::framing::{decode, encode, link_codec};
use stj_proto::preamble::{Preamble, Role};
use stj_proto::starter::{
    schedd_message::Msg as In, starter_message::Msg as Out, Heartbeat, JobExited, JobStarted,
    ScheddMessage, SessionEnded, StarterHello, StarterMessage,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use crate::jobs::Jobs;
use crate::report::{Report, Reports};
use crate::session::DataPath;

const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const WELCOME_DEADLINE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct LinkParams {
    pub schedd: String,
    /// The schedd's CA, from the token or from this node's enrolment.
    pub ca_pin: [u8; 32],
    /// The join token's secret; empty once enrolled without a token file.
    pub join_secret: Vec<u8>,
    pub identity: Arc<crate::identity::NodeIdentity>,
    pub name: String,
    pub slots: u32,
    /// Where this starter takes direct sessions, if anywhere.
    pub session_listen: Option<std::net::SocketAddr>,
    pub session_advertise: Option<String>,
    pub key: Arc<crate::session::StarterKey>,
    pub sessions: Arc<crate::session::Sessions>,
}

/// The address clients should dial for direct sessions: the configured one,
/// else the listen address, with an unspecified IP replaced by the address
/// this node uses towards the schedd.
fn advertised(params: &LinkParams, local: Option<std::net::SocketAddr>) -> String {
    if let Some(a) = &params.session_advertise {
        return a.clone();
    }
    match (params.session_listen, local) {
        (Some(l), Some(local)) if l.ip().is_unspecified() => {
            std::net::SocketAddr::new(local.ip(), l.port()).to_string()
        }
        (Some(l), _) => l.to_string(),
        (None, _) => String::new(),
    }
}

/// Why a link attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Retrying cannot help: the admin must act. The starter exits.
    #[error("{0}")]
    Fatal(String),
    #[error("{0}")]
    Retry(String),
}

fn retry(e: impl std::fmt::Display) -> LinkError {
    LinkError::Retry(e.to_string())
}

/// Session ends kept for the schedd at most; beyond this (a link down for
/// very long on a busy node) the oldest audit details are dropped.
const MAX_UNACKED_SESSION_ENDS: usize = 10_000;

/// What survives reconnects: exits and session ends the schedd has not
/// acknowledged.
struct State {
    pending_exits: BTreeMap<u64, JobExited>,
    pending_session_ends: BTreeMap<(i64, Vec<u8>), SessionEnded>,
    events: Reports,
}

impl State {
    /// Keeps what must survive a reconnect; returns the message to send.
    fn absorb(&mut self, ev: Report) -> StarterMessage {
        let msg = match ev {
            Report::JobStarted(id) => Out::Started(JobStarted { job_id: id }),
            Report::JobExited(e) => {
                self.pending_exits.insert(e.job_id, e.clone());
                Out::Exited(e)
            }
            // Lost while the link is down: the hello lists open sessions.
            Report::SessionStarted(s) => Out::SessionStarted(s),
            Report::SessionEnded(e) => {
                if self.pending_session_ends.len() >= MAX_UNACKED_SESSION_ENDS {
                    if let Some((_, old)) = self.pending_session_ends.pop_first() {
                        tracing::warn!(session_id = %SessionId::from_slice(&old.session_id).map(|s| s.to_string()).unwrap_or_default(), "too many session ends unacknowledged by the schedd; dropping the oldest");
                    }
                }
                self.pending_session_ends
                    .insert((e.ended_at, e.session_id.clone()), e.clone());
                Out::SessionEnded(e)
            }
        };
        StarterMessage { msg: Some(msg) }
    }

    fn session_end_acked(&mut self, id: &[u8]) {
        self.pending_session_ends
            .retain(|(_, sid), _| sid.as_slice() != id);
    }
}

pub async fn run(params: LinkParams, jobs: Arc<Jobs>, events: Reports) -> anyhow::Result<()> {
    let (tls, mismatch) = crate::tls::client_config(params.ca_pin, params.identity.tls_identity())?;
    let connector = TlsConnector::from(tls);
    let mut state = State {
        pending_exits: BTreeMap::new(),
        pending_session_ends: BTreeMap::new(),
        events,
    };
    // The first call comes at once; after that, spread and backed off.
    let mut backoff = stj_cli::backoff::Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    loop {
        let mut registered = false;
        let result = session(
            &params,
            &connector,
            &mismatch,
            &jobs,
            &mut state,
            &mut registered,
        )
        .await;
        if registered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        match result {
            Err(LinkError::Fatal(msg)) => anyhow::bail!(msg),
            Err(LinkError::Retry(msg)) => {
                tracing::warn!(schedd = %params.schedd, retry_in_ms, "{msg}")
            }
            Ok(()) => {
                tracing::warn!(schedd = %params.schedd, retry_in_ms, "schedd closed the link")
            }
        }
        // Jobs keep running and ending meanwhile; remember their exits.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(ev) = state.events.recv() => { state.absorb(ev); }
            }
        }
    }
}

/// Reverse and relay: this node dials the schedd's port (outbound, so NAT is
/// no obstacle), says where the connection should go, and then serves the
/// session handshake on it exactly as in direct mode.
fn dial_back(params: &LinkParams, preamble: Preamble) {
    let schedd = params.schedd.clone();
    let sessions = params.sessions.clone();
    tokio::spawn(async move {
        let path = match &preamble {
            Preamble::Route { .. } => DataPath::Reverse,
            Preamble::Relay { .. } => DataPath::Relay,
        };
        let kind = path.as_str();
        let mut stream = match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(&schedd))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(schedd = %schedd, path = kind, error = %e, "cannot dial the schedd's port for a session; check the firewall between this node and the schedd");
                return;
            }
            Err(_) => {
                tracing::warn!(schedd = %schedd, path = kind, "dialing the schedd's port for a session timed out; a firewall is probably dropping it");
                return;
            }
        };
        stream.set_nodelay(true).ok();
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut stream, &preamble.encode()).await {
            tracing::warn!(path = kind, error = %e, "cannot send the preamble");
            return;
        }
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        tracing::debug!(path = kind, %peer, "dialed back for a session");
        sessions.serve(stream, peer, path).await;
    });
}

async fn session(
    params: &LinkParams,
    connector: &TlsConnector,
    mismatch: &Arc<std::sync::Mutex<Option<String>>>,
    jobs: &Arc<Jobs>,
    state: &mut State,
    registered: &mut bool,
) -> Result<(), LinkError> {
    let port_hint = params.schedd.rsplit(':').next().unwrap_or("9618");
    let tcp = match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(&params.schedd)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(retry(format!(
                "cannot reach the schedd at {}: {e}; check that stj-schedd runs there and that TCP port {port_hint} is open in every firewall between this node and the schedd",
                params.schedd
            )))
        }
        Err(_) => {
            return Err(retry(format!(
                "connecting to the schedd at {} timed out after {} s; a firewall is probably dropping TCP port {port_hint}",
                params.schedd,
                CONNECT_DEADLINE.as_secs()
            )))
        }
    };
    tcp.set_nodelay(true).ok();
    let session_addr = advertised(params, tcp.local_addr().ok());
    let tls = match connector.connect(crate::tls::server_name(), tcp).await {
        Ok(t) => t,
        Err(e) => {
            if let Some(offered) = mismatch.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(LinkError::Fatal(format!(
                    "the schedd at {} presented a CA with sha256 {offered}, but this node pins {} (from its join token, or from its enrolment in {}): it is another schedd, or the schedd's state dir was recreated; if that is intended, remove the identity dir and enrol with a new token from `stj-schedd token NODE-NAME`",
                    params.schedd,
                    hex::encode(params.ca_pin),
                    params.identity.dir.display()
                )));
            }
            return Err(retry(format!(
                "TLS with the schedd at {} failed: {e}",
                params.schedd
            )));
        }
    };
    let mut framed = Framed::new(tls, link_codec());

    // Snapshot running jobs before collecting exits: a job ending in between
    // is then listed in both, which the schedd handles, never in neither.
    let running_jobs = jobs.running();
    let open_sessions = params.sessions.open_list();
    while let Ok(ev) = state.events.try_recv() {
        state.absorb(ev);
    }
    let hello = StarterMessage {
        msg: Some(Out::Hello(StarterHello {
            protocol_version: stj_proto::STARTER_PROTOCOL_VERSION,
            name: params.name.clone(),
            slots: params.slots,
            join_secret: params.join_secret.clone(),
            running_jobs,
            finished_jobs: state.pending_exits.values().cloned().collect(),
            session_addr,
            open_sessions,
            finished_sessions: state.pending_session_ends.values().cloned().collect(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    framed.send(encode(&hello)).await.map_err(retry)?;
    let heartbeat_secs = match tokio::time::timeout(WELCOME_DEADLINE, framed.next()).await {
        Err(_) => return Err(retry("the schedd did not answer our hello in time")),
        Ok(None) => return Err(retry("the schedd closed the link during registration")),
        Ok(Some(frame)) => match decode::<ScheddMessage>(frame.map_err(retry)?)
            .map_err(retry)?
            .msg
        {
            Some(In::Welcome(w)) => {
                let key: [u8; 32] = w
                    .starter_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| retry("the schedd sent a starter key of the wrong length"))?;
                params.key.set(key);
                // Enrolled (or known): later starts need no token.
                if let Err(e) = params.identity.enrolled_with(params.ca_pin) {
                    return Err(LinkError::Fatal(format!(
                        "cannot record this node's enrolment: {e:#}"
                    )));
                }
                w.heartbeat_secs.max(1)
            }
            Some(In::Refused(r)) => {
                return Err(LinkError::Fatal(format!(
                    "the schedd refused this starter: {}",
                    r.reason
                )))
            }
            _ => return Err(retry("unexpected first message from the schedd")),
        },
    };
    *registered = true;
    tracing::info!(schedd = %params.schedd, node = %params.name, "registered with the schedd");

    let heartbeat = Duration::from_secs(heartbeat_secs.into());
    let mut tick = tokio::time::interval(heartbeat);
    let mut seq = 0;
    let deadline = heartbeat * 3;
    // One deadline for the whole link, moved only by what the schedd sends:
    // our own heartbeats and job events must not keep a dead link alive.
    let mut silent_until = tokio::time::Instant::now() + deadline;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(silent_until) => {
                return Err(retry(format!("no heartbeat from the schedd for {} s", deadline.as_secs())));
            }
            frame = framed.next() => {
                let frame = match frame {
                    None => return Ok(()),
                    Some(f) => f.map_err(retry)?,
                };
                silent_until = tokio::time::Instant::now() + deadline;
                match decode::<ScheddMessage>(frame).map_err(retry)?.msg {
                    Some(In::RunJob(run)) => jobs.start(run),
                    Some(In::DialRoute(d)) => match (SessionId::from_slice(&d.session_id), <[u8; 32]>::try_from(d.token.as_slice())) {
                        (Some(_), Ok(token)) => dial_back(params, Preamble::Route { name: d.name, token }),
                        _ => tracing::warn!("dial-route with a malformed session id or token; ignored"),
                    },
                    Some(In::DialRelay(d)) => match (SessionId::from_slice(&d.session_id), <[u8; 32]>::try_from(d.token.as_slice())) {
                        (Some(session_id), Ok(token)) => dial_back(params, Preamble::Relay { role: Role::Starter, session_id, token }),
                        _ => tracing::warn!("dial-relay with a malformed session id or token; ignored"),
                    },
                    Some(In::KillJob(k)) => jobs.kill(k.job_id),
                    Some(In::ExitAck(a)) => { state.pending_exits.remove(&a.job_id); }
                    Some(In::SessionEndAck(a)) => state.session_end_acked(&a.session_id),
                    Some(In::Heartbeat(_)) => {}
                    Some(In::Refused(r)) => return Err(LinkError::Fatal(format!("the schedd refused this starter: {}", r.reason))),
                    Some(In::Welcome(_)) => return Err(retry("second welcome on one link")),
                    None => tracing::debug!("ignoring a message kind this starter does not know"),
                }
            }
            Some(ev) = state.events.recv() => {
                let msg = state.absorb(ev);
                framed.send(encode(&msg)).await.map_err(retry)?;
            }
            _ = tick.tick() => {
                seq += 1;
                let hb = StarterMessage { msg: Some(Out::Heartbeat(Heartbeat { seq })) };
                framed.send(encode(&hb)).await.map_err(retry)?;
            }
        }
    }
}
