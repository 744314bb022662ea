//! One starter's link: hello and admission, reconciliation of its jobs with
//! the queue, then heartbeats both ways and job events until it goes silent.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stj_proto::session_id::SessionId;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::framing::{decode, encode, link_codec};
use stj_proto::starter::{
    schedd_message::Msg as Out, starter_message::Msg as In, ExitAck, Heartbeat, JobExited, KillJob,
    Refused, ScheddMessage, SessionEndAck, SessionEnded, SessionStarted, StarterHello,
    StarterMessage, Welcome,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::audit::Event;
use crate::enrolment::{Admitted, EnrolmentError};
use crate::queue::now;
use crate::registry::StarterHandle;
use crate::state::Schedd;

const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Messages queued for one starter before it counts as too slow.
const OUTBOX: usize = 1024;
const LINK_BUFFER: usize = 128;
/// The largest hello from a key no node is enrolled with.
pub const MAX_ENROLMENT_HELLO: usize = 16 * 1024;

/// Registers a starter, then hands its link to a task of its own. `cert`
/// is the SHA-256 of the certificate the starter proved it holds in TLS;
/// `keep` (the listener's connection permit) lives as long as the link,
/// `preauth` (its pre-authentication slot) until the hello is checked.
pub async fn serve<S, K, P>(
    schedd: Arc<Schedd>,
    stream: S,
    peer: SocketAddr,
    cert: [u8; 32],
    keep: K,
    preauth: P,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    let stopping = schedd.stopping.clone();
    let registered = register(schedd, stream, peer, cert).await;
    drop(preauth);
    match registered {
        // The registration's state machine is several KiB (the hello, its
        // reconciliation); the link's steady state needs far less. A fresh
        // task sized for the steady state alone is what each of thousands
        // of idle starters costs (measured: 16 → 13.2 KiB of schedd RSS per
        // idle starter).
        Ok(link) => {
            tokio::spawn(async move {
                let _keep = keep;
                // On drain the link is dropped: the starter sees it close
                // and reconnects (with backoff) to the next schedd.
                match stopping.run_until_cancelled(link.run()).await {
                    Some(Ok(name)) => {
                        tracing::info!(%peer, node = %name, "starter disconnected")
                    }
                    Some(Err(e)) => {
                        tracing::warn!(%peer, error = %format!("{e:#}"), "starter link ended")
                    }
                    None => tracing::debug!(%peer, "starter link closed: the schedd is stopping"),
                }
            });
        }
        Err(e) => tracing::warn!(%peer, error = %format!("{e:#}"), "starter link ended"),
    }
}

/// A registered starter's link.
struct Link<S> {
    schedd: Arc<Schedd>,
    framed: Framed<S, LengthDelimitedCodec>,
    rx: mpsc::Receiver<Box<ScheddMessage>>,
    name: String,
    conn_id: u64,
    /// Unix time of the last frame from the starter (`stj nodes`).
    last_heard: Arc<std::sync::atomic::AtomicI64>,
}

fn out(msg: Out) -> bytes::Bytes {
    encode(&ScheddMessage { msg: Some(msg) })
}

async fn register<S>(
    schedd: Arc<Schedd>,
    stream: S,
    peer: SocketAddr,
    cert: [u8; 32],
) -> Result<Link<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Small initial buffers: an idle link must cost the schedd little memory
    // (thousands of starters); they grow when a large message comes.
    let mut framed = Framed::with_capacity(stream, link_codec(), LINK_BUFFER);
    // A key no node is enrolled with may only enrol: its hello is small
    // (a new node has little to report), so unauthenticated peers cannot
    // make us buffer megabytes each.
    let known = schedd.enrolment.is_enrolled(cert).unwrap_or(false);
    if !known {
        framed.codec_mut().set_max_frame_length(MAX_ENROLMENT_HELLO);
    }
    let first = tokio::time::timeout(HELLO_DEADLINE, framed.next())
        .await
        .context("no hello within the deadline")?
        .context("closed before hello")??;
    let hello = match decode::<StarterMessage>(first)?.msg {
        Some(In::Hello(h)) => h,
        _ => bail!("first message was not a hello"),
    };

    let refusal = if hello.protocol_version != stj_proto::STARTER_PROTOCOL_VERSION {
        Some(format!(
            "starter protocol version {} is not supported (schedd speaks {}); run the same stj release on both",
            hello.protocol_version,
            stj_proto::STARTER_PROTOCOL_VERSION
        ))
    } else if !stj_proto::valid_node_name(&hello.name) {
        Some("starter name must be 1-64 characters of [A-Za-z0-9._-], not . or ..".to_string())
    } else {
        match schedd
            .enrolment
            .admit(&hello.name, cert, &hello.join_secret, &peer.to_string())
        {
            Ok(Admitted::Known) => None,
            Ok(Admitted::Enrolled) => {
                tracing::info!(%peer, node = %hello.name, cert_sha256 = %hex::encode(cert), "node enrolled; its key is pinned to its name");
                None
            }
            Err(EnrolmentError::Refused(r)) => Some(r.to_string()),
            Err(e) => bail!("cannot check the node's enrolment: {e}"),
        }
    };
    if let Some(reason) = refusal {
        tracing::warn!(%peer, name = %hello.name.chars().take(64).collect::<String>(), %reason, "starter refused");
        framed
            .send(out(Out::Refused(Refused {
                reason: reason.clone(),
            })))
            .await
            .ok();
        bail!("refused: {reason}");
    }
    let name = hello.name.clone();
    // Known now: its reports may be as large as any node's.
    framed
        .codec_mut()
        .set_max_frame_length(stj_proto::framing::MAX_LINK_FRAME);

    let mut starter_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut starter_key)
        .map_err(|_| anyhow::anyhow!("random generator failed"))?;

    // Boxed: the channel's first block holds 32 slots, so small slots keep
    // an idle link's outbox small.
    let (tx, rx) = mpsc::channel::<Box<ScheddMessage>>(OUTBOX);
    let conn_id = schedd.registry.next_conn_id();
    let last_heard = Arc::new(std::sync::atomic::AtomicI64::new(now()));
    {
        let _pool = schedd.pool_lock.lock().await;
        schedd.registry.disconnect(&name);
        let mut followups = reconcile(&schedd, &hello)?;
        followups.extend(reconcile_sessions(&schedd, &hello));
        framed
            .send(out(Out::Welcome(Welcome {
                starter_key: starter_key.to_vec(),
                heartbeat_secs: schedd.config.heartbeat_secs,
            })))
            .await?;
        for m in followups {
            framed.send(encode(&m)).await?;
        }
        schedd.registry.insert(
            &name,
            StarterHandle {
                conn_id,
                slots: hello.slots,
                tx,
                key: starter_key,
                session_addr: hello.session_addr.clone(),
            },
            peer.to_string(),
            hello.software_version.chars().take(64).collect(),
            last_heard.clone(),
        );
    }
    tracing::info!(%peer, node = %name, slots = hello.slots, running = hello.running_jobs.len(), "starter registered");
    schedd.schedule.notify_one();
    Ok(Link {
        schedd,
        framed,
        rx,
        name,
        conn_id,
        last_heard,
    })
}

impl<S> Link<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Heartbeats both ways and the starter's reports, until the link ends.
    async fn run(self) -> Result<String> {
        let Link {
            schedd,
            framed,
            mut rx,
            name,
            conn_id,
            last_heard,
        } = self;
        let (mut sink, mut stream) = framed.split();
        let heartbeat = Duration::from_secs(schedd.config.heartbeat_secs.into());
        let writer = async {
            let mut tick = tokio::time::interval(heartbeat);
            let mut seq = 0;
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => *m,
                        None => return Ok::<_, anyhow::Error>(()), // replaced by a newer registration
                    },
                    _ = tick.tick() => {
                        seq += 1;
                        ScheddMessage { msg: Some(Out::Heartbeat(Heartbeat { seq })) }
                    }
                };
                sink.send(encode(&msg)).await?;
            }
        };
        let reader = async {
            loop {
                // Three missed heartbeats: the starter or the path to it is dead.
                let frame = match tokio::time::timeout(heartbeat * 3, stream.next()).await {
                    // Silence: maybe a network cut; the starter and its jobs may
                    // live on, so the job lease decides.
                    Err(_) => return Ok(End::Silent),
                    // Closed or reset: the starter process is gone (killed,
                    // crashed, stopped), and its jobs died with it.
                    Ok(None) | Ok(Some(Err(_))) => return Ok(End::PeerClosed),
                    Ok(Some(Ok(f))) => f,
                };
                last_heard.store(now(), std::sync::atomic::Ordering::Relaxed);
                match decode::<StarterMessage>(frame)?.msg {
                    Some(In::Exited(exit)) => job_exited(&schedd, &name, exit)?,
                    Some(In::Started(s)) => {
                        tracing::info!(node = %name, job_id = s.job_id, "job started")
                    }
                    Some(In::SessionStarted(s)) => session_started(&schedd, &name, s),
                    Some(In::SessionEnded(e)) => {
                        let ack = session_ended(&schedd, &name, e);
                        schedd.registry.send(&name, ack);
                    }
                    Some(In::Heartbeat(_)) => {}
                    Some(In::Hello(_)) => bail!("second hello on one link"),
                    None => {
                        tracing::debug!(node = %name, "ignoring a message kind this schedd does not know")
                    }
                }
            }
        };
        let result = tokio::select! {
            r = writer => r.map(|()| End::Replaced).or(Ok(End::PeerClosed)),
            r = reader => r,
        };
        let how = match result {
            Ok(End::Silent) => crate::registry::Lost::Silent,
            _ => crate::registry::Lost::Closed,
        };
        schedd.registry.remove_if(&name, conn_id, how);
        match result? {
            End::Replaced => {}
            End::Silent => {
                tracing::warn!(node = %name, silent_secs = heartbeat.as_secs() * 3, "no heartbeat from the starter; its jobs keep their lease")
            }
            End::PeerClosed => {
                let schedd = schedd.clone();
                let node = name.clone();
                tokio::spawn(async move { starter_gone(schedd, node, heartbeat * 3).await });
            }
        }
        Ok(name)
    }
}

enum End {
    /// A newer registration of the same starter took over.
    Replaced,
    /// No heartbeat within the deadline.
    Silent,
    /// The connection was closed or reset.
    PeerClosed,
}

/// The starter's process ended (its link was closed, not cut). Its jobs died
/// with it (each container's monitor kills the container when the starter
/// goes). Unless it registers again within `grace` — a restart reports what
/// it still runs — its jobs go back to the queue.
async fn starter_gone(schedd: Arc<Schedd>, node: String, grace: Duration) {
    tokio::time::sleep(grace).await;
    let _pool = schedd.pool_lock.lock().await;
    if schedd.registry.is_connected(&node) {
        return;
    }
    sessions_lost(
        &schedd,
        &node,
        &[],
        format!("the starter on node {node} stopped; the session ended with it"),
    );
    let jobs = match schedd.queue.running_on(&node) {
        Ok(j) => j,
        Err(e) => return tracing::error!(error = %e, "cannot read the queue"),
    };
    let mut changed = false;
    for job in jobs {
        let reason = format!(
            "the starter on node {node} stopped and did not come back within {} s; the job died with it and was requeued",
            grace.as_secs()
        );
        match schedd.queue.requeue(job.id, &node, &reason) {
            Ok(true) => {
                tracing::warn!(job_id = job.id, node = %node, "starter gone; job requeued");
                changed = true;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(job_id = job.id, error = %e, "cannot requeue"),
        }
    }
    if changed {
        schedd.job_changed();
        schedd.schedule.notify_one();
    }
}

/// Matches what the starter says it runs against what the queue says runs
/// there. Returns the messages that put the starter right.
fn reconcile(schedd: &Schedd, hello: &StarterHello) -> Result<Vec<ScheddMessage>> {
    let node = &hello.name;
    let mut msgs = Vec::new();
    let mut changed = false;
    let reported: HashSet<u64> = hello.running_jobs.iter().copied().collect();
    let finished: HashSet<u64> = hello.finished_jobs.iter().map(|e| e.job_id).collect();

    for exit in &hello.finished_jobs {
        changed |= schedd.queue.finish(node, exit)?;
        msgs.push(ScheddMessage {
            msg: Some(Out::ExitAck(ExitAck {
                job_id: exit.job_id,
            })),
        });
    }
    let mut expected = HashSet::new();
    for job in schedd.queue.running_on(node)? {
        expected.insert(job.id);
        if !reported.contains(&job.id) && !finished.contains(&job.id) {
            let reason =
                format!("node {node} no longer had the job when it registered again; requeued");
            if schedd.queue.requeue(job.id, node, &reason)? {
                tracing::warn!(job_id = job.id, node = %node, "job lost by its node; requeued");
                changed = true;
            }
        }
    }
    for id in reported.difference(&expected) {
        // Removed while the node was away, or never ours: it must not run.
        tracing::info!(job_id = id, node = %node, "telling node to kill a job the queue does not run there");
        msgs.push(ScheddMessage {
            msg: Some(Out::KillJob(KillJob { job_id: *id })),
        });
    }
    if changed {
        schedd.job_changed();
    }
    Ok(msgs)
}

fn session_started(schedd: &Schedd, node: &str, s: SessionStarted) {
    let Some(id) = SessionId::from_slice(&s.session_id) else {
        return tracing::warn!(node = %node, "session report with a malformed id; ignored");
    };
    tracing::info!(node = %node, session_id = %id, job_id = s.job_id, path = %s.path, "session started");
    schedd.limits.started(node, &id);
    schedd
        .metrics
        .started
        .get_or_create(&crate::metrics::Path {
            path: match s.path.as_str() {
                p @ ("direct" | "reverse" | "relay") => p.to_string(),
                _ => "other".to_string(),
            },
        })
        .inc();
    schedd.audit.send(Event::Started {
        node: node.to_string(),
        s,
    });
}

/// Records a session's end; returns the acknowledgement for the node.
fn session_ended(schedd: &Schedd, node: &str, e: SessionEnded) -> ScheddMessage {
    let ack = ScheddMessage {
        msg: Some(Out::SessionEndAck(SessionEndAck {
            session_id: e.session_id.clone(),
        })),
    };
    let Some(id) = SessionId::from_slice(&e.session_id) else {
        tracing::warn!(node = %node, "session report with a malformed id; ignored");
        return ack;
    };
    tracing::info!(node = %node, session_id = %id, job_id = e.job_id, path = %e.path, bytes_from_client = e.bytes_from_client, bytes_to_client = e.bytes_to_client, error = %e.error, "session ended");
    schedd.limits.ended(node, &id);
    for (direction, n) in [
        ("from_client", e.bytes_from_client),
        ("to_client", e.bytes_to_client),
    ] {
        schedd
            .metrics
            .session_bytes
            .get_or_create(&crate::metrics::Direction { direction })
            .inc_by(n);
    }
    schedd.audit.send(Event::Ended {
        node: node.to_string(),
        e,
    });
    ack
}

/// The node's sessions as it lists them in its hello: ends it could not
/// report while the link was down, and what is open there now. A session
/// we counted as open that it lists in neither ended without a report.
fn reconcile_sessions(schedd: &Schedd, hello: &StarterHello) -> Vec<ScheddMessage> {
    let mut acks = Vec::new();
    for e in &hello.finished_sessions {
        acks.push(session_ended(schedd, &hello.name, e.clone()));
    }
    for s in &hello.open_sessions {
        schedd.audit.send(Event::Started {
            node: hello.name.clone(),
            s: s.clone(),
        });
    }
    sessions_lost(
        schedd,
        &hello.name,
        &hello.open_sessions,
        format!(
            "node {} no longer had the session when it registered again",
            hello.name
        ),
    );
    acks
}

/// Sessions open on `node`, other than `still_open`, ended without a report
/// from it: they stop counting for the caps, and their records are closed
/// with `note` (unless the node reports the end after all).
fn sessions_lost(schedd: &Schedd, node: &str, still_open: &[SessionStarted], note: String) {
    let open: HashSet<SessionId> = still_open
        .iter()
        .filter_map(|s| SessionId::from_slice(&s.session_id))
        .collect();
    schedd.limits.reconcile(node, &open);
    schedd.audit.send(Event::Lost {
        node: node.to_string(),
        still_open: still_open.iter().map(|s| s.session_id.clone()).collect(),
        note,
    });
}

fn job_exited(schedd: &Schedd, node: &str, exit: JobExited) -> Result<()> {
    let recorded = schedd.queue.finish(node, &exit)?;
    if exit.node_failure {
        tracing::warn!(node = %node, job_id = exit.job_id, error = %exit.error, recorded, "the node could not start the job; requeued (or ended after too many tries)");
    } else {
        tracing::info!(node = %node, job_id = exit.job_id, exit_code = ?exit.exit_code, exit_signal = ?exit.exit_signal, error = %exit.error, recorded, "job exited");
    }
    schedd.registry.send(
        node,
        ScheddMessage {
            msg: Some(Out::ExitAck(ExitAck {
                job_id: exit.job_id,
            })),
        },
    );
    schedd.job_changed();
    schedd.schedule.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use stj_proto::valid_node_name as valid_name;

    #[test]
    fn node_names() {
        assert!(valid_name("node-1.example"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".") && !valid_name(".."));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
