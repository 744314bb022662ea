//! The starter's side of the handshake, with the policy checks: signature
//! (through the proofs), expiry, node, job running here, and single use.

use std::net::SocketAddr;

use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::capability::Capability;
use stj_proto::handshake::{
    error_message, read_message, write_message, HandshakeError, StarterHandshake, DEADLINE,
    NONCE_LEN,
};
use stj_proto::session::ErrorCode;
use tokio::net::TcpStream;

use super::home;
use super::landing::{self, Landing};
use super::{now, Sessions};
use crate::job_locator::{JobTarget, Located};
use stj_cli::shares::UnheardConn;

pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub capability: Capability,
    pub target: JobTarget,
    /// Seed of the session's ed25519 host key (one-time, or the job's).
    pub host_seed: [u8; 32],
    /// Where the session lands, its HOME included.
    pub landing: Landing,
    /// The client's certificate of the host key, for sshd to present.
    pub host_cert: Option<String>,
    /// When the Hello arrived (attach time).
    pub started: std::time::Instant,
}

struct Refusal(ErrorCode, String);

pub async fn run(
    s: &Sessions,
    mut stream: TcpStream,
    peer: SocketAddr,
    unheard: Option<UnheardConn>,
    path: &'static str,
) -> Option<Accepted> {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(DEADLINE, exchange(s, &mut stream, unheard)).await;
    let label = match &outcome {
        Ok(Ok(_)) => "accepted".to_string(),
        Ok(Err(Ok(Refusal(code, _)))) => code
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_ascii_lowercase(),
        Ok(Err(Err(_))) => "failed".to_string(),
        Err(_) => "timed_out".to_string(),
    };
    s.metrics.handshake(path, label);
    match outcome {
        Ok(Ok((capability, target, host_seed, landing, host_cert))) => {
            s.metrics
                .handshake_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(%peer, session_id = %capability.session_id, job_id = capability.job_id, uid = capability.owner_uid, "session accepted");
            Some(Accepted {
                stream,
                peer,
                capability,
                target,
                host_seed,
                landing,
                host_cert,
                started,
            })
        }
        Ok(Err(Ok(Refusal(code, message)))) => {
            tracing::warn!(%peer, ?code, %message, "session refused");
            let _ = write_message(&mut stream, &error_message(code, message)).await;
            None
        }
        Ok(Err(Err(e))) => {
            tracing::warn!(%peer, error = %e, "handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "handshake deadline passed; dropping connection");
            None
        }
    }
}

type Outcome = Result<
    (Capability, JobTarget, [u8; 32], Landing, Option<String>),
    Result<Refusal, HandshakeError>,
>;

async fn exchange(s: &Sessions, stream: &mut TcpStream, unheard: Option<UnheardConn>) -> Outcome {
    let refuse = |code, msg: String| Err(Ok(Refusal(code, msg)));
    let (_, hello) = match unheard {
        Some(mut waiting) => tokio::select! {
            r = read_message(stream) => r.map_err(Err)?,
            _ = waiting.evicted() => {
                return Err(Err(HandshakeError::Io(std::io::Error::other(
                    "evicted: silent while newer connections waited",
                ))))
            }
        },
        None => read_message(stream).await.map_err(Err)?,
    };
    let Some(key) = s.key.get() else {
        return refuse(
            ErrorCode::Unavailable,
            format!(
                "node {} is not registered with the schedd right now; retry shortly",
                s.node
            ),
        );
    };
    // The Hello's MAC proves the sender holds the capability's k; nothing
    // below (no slot, no work) is given to a connection that cannot.
    let mut hs = match StarterHandshake::on_hello(&hello, &key) {
        Ok(h) => h,
        Err(HandshakeError::BadProof) => {
            return refuse(
                ErrorCode::BadProof,
                "the Hello does not prove it holds this capability's key (forged or altered capability)".into(),
            )
        }
        Err(e) => return refuse(ErrorCode::BadMessage, format!("bad hello: {e}")),
    };
    let cap = hs.capability.clone();
    // Before the in-flight claim: a session id already used is "replayed"
    // even while the connection that used it is still winding down.
    if s.replay.contains(&cap.session_id) {
        return refuse(
            ErrorCode::Replayed,
            "this session id was already used; every ssh-to-job run needs a fresh capability"
                .into(),
        );
    }
    let Some(_in_flight) = s.admission.claim(cap.session_id) else {
        return refuse(
            ErrorCode::InUse,
            "this capability is in use by another connection; every ssh-to-job run needs a fresh one".into(),
        );
    };
    // A user's burst waits for its share of the node's slots (bounded by
    // the handshake deadline) instead of being refused.
    let _slot = s.admission.slot(cap.owner_uid).await;
    if now() > cap.expiry {
        return refuse(
            ErrorCode::Expired,
            "the capability has expired; run ssh-to-job again for a fresh one".into(),
        );
    }
    if cap.starter_id != s.node {
        return refuse(
            ErrorCode::WrongStarter,
            format!("this is node {}, not {}", s.node, cap.starter_id),
        );
    }
    if let Err(why) = &s.kit {
        return refuse(
            ErrorCode::NodeMisconfigured,
            format!("ssh-to-job is unavailable on node {}: {why}", s.node),
        );
    }
    let t0 = std::time::Instant::now();
    // Reading a job's cgroup tree and /proc: quick, but blocking.
    let (jobs, step) = (s.jobs.clone(), hs.asks.step);
    let located = tokio::task::spawn_blocking(move || jobs.locate(cap.job_id, step))
        .await
        .map_err(|e| Err(HandshakeError::Io(std::io::Error::other(e))))?;
    let target = match located {
        Located::Here(t) if t.owner_uid != cap.owner_uid => {
            return refuse(
                ErrorCode::JobNotHere,
                format!(
                    "job {} on node {} belongs to uid {}, not to uid {} whom the capability names",
                    cap.job_id, s.node, t.owner_uid, cap.owner_uid
                ),
            )
        }
        Located::Here(t) => t,
        Located::NoSuchStep(step, have) => {
            let have = match have.is_empty() {
                true => "it has no steps to choose from (--step is for Slurm jobs)".to_string(),
                false => format!("its steps here: {}", have.join(", ")),
            };
            return refuse(
                ErrorCode::JobNotHere,
                format!(
                    "job {} has no step {step} on node {}; {have}",
                    cap.job_id, s.node
                ),
            );
        }
        Located::Unrecognised(why) => {
            return refuse(
                ErrorCode::NodeMisconfigured,
                format!("node {} cannot find job {}: {why}", s.node, cap.job_id),
            )
        }
        Located::Starting => {
            return refuse(
                ErrorCode::NotReady,
                format!(
                    "job {} is still starting on node {}; retry in a moment",
                    cap.job_id, s.node
                ),
            )
        }
        Located::NotHere => {
            return refuse(
                ErrorCode::JobNotHere,
                format!("job {} is not running on node {}", cap.job_id, s.node),
            )
        }
    };

    // The Hello's `outer` is bound by the proofs below: a session lands
    // where its client asked, or nowhere.
    let located_us = t0.elapsed().as_micros() as u64;
    let landing = match landing::decide(&target, hs.asks.outer).await {
        Ok(l) => l,
        Err(home::Unsafe(why)) => return refuse(ErrorCode::UnsafeHome, why),
    };
    tracing::debug!(
        job_id = cap.job_id,
        located_us,
        landed_us = t0.elapsed().as_micros() as u64,
        "session target found"
    );

    let rng = SystemRandom::new();
    let mut nonce = [0u8; NONCE_LEN];
    // A one-time host key, unless the client keeps the job's key in a
    // known_hosts line (paramiko) and asked for it: a key that outlives the
    // session is one whose copy (session files are the job user's) could
    // stand in for the job later, so only clients that need one get it.
    let seed = if hs.asks.job_host_key {
        target.host_seed
    } else {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed).ok().map(|()| seed)
    };
    let Some(seed) = seed else {
        return refuse(
            ErrorCode::Unavailable,
            "the node could not make a host key (random generator failed)".into(),
        );
    };
    if rng.fill(&mut nonce).is_err() {
        return refuse(
            ErrorCode::Unavailable,
            "random generator failed on the node".into(),
        );
    }
    let host = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let challenge = hs.challenge(nonce, host.public.0);
    write_message(stream, &challenge).await.map_err(Err)?;

    let (proof, _) = read_message(stream).await.map_err(Err)?;
    let Ok(cert) = hs.on_proof(proof) else {
        return refuse(
            ErrorCode::BadProof,
            "the client could not prove it holds this capability's key".into(),
        );
    };
    let host_cert = match super::host_cert::check(&cert, host.public.0, cap.job_id) {
        Ok(c) => c,
        Err(why) => return refuse(ErrorCode::BadMessage, why),
    };
    // Checked again atomically: of two connections racing with one
    // capability, exactly one gets here.
    if !s.replay.first_use(cap.session_id, cap.expiry, now()) {
        return refuse(
            ErrorCode::Replayed,
            "this session id was already used".into(),
        );
    }
    let ready = hs.ready(&target.spec.user_name).map_err(Err)?;
    write_message(stream, &ready).await.map_err(Err)?;
    Ok((cap, target, seed, landing, host_cert))
}
