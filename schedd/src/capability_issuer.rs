//! RequestSession: grants a one-session capability to a running job's owner
//! (or root), signed for the node that runs the job. What it knows of the
//! job comes from the job source (`job_source.rs`) only. Every request, granted
//! or denied, leaves an audit record.

use ring::rand::{SecureRandom, SystemRandom};
use stj_proto::capability::{derive_k, Capability};
use stj_proto::job_ref::JobRef;
use stj_proto::refusal::status as refuse;
use stj_proto::session_id::SessionId;
use stj_proto::user::Refusal;
use stj_proto::user::{JobState, RequestSessionReply, RequestSessionRequest};
use tonic::{Code, Status};

use crate::audit::{Event, Record};
use crate::denials::{Summary, Verdict};
use crate::queue::now;
use crate::session_limits::Refusal as LimitRefusal;
use crate::state::Schedd;

/// Records a denied request, unless its user is over the denial rate: then
/// it only counts towards the minute's summary record.
pub fn record_denial(schedd: &Schedd, uid: u32, job_id: u64, node: &str, why: &str) {
    let (verdict, summary) = schedd.denials.denied(uid, now());
    if let Some(s) = summary {
        write_summary(schedd, s);
    }
    if verdict == Verdict::Record {
        schedd.audit.send(Event::Issued(Record {
            session_id: denial_id(),
            job_id,
            uid,
            node: node.to_string(),
            outcome: why.to_string(),
        }));
    }
}

/// The record for a minute's denials beyond the rate.
pub fn write_summary(schedd: &Schedd, s: Summary) {
    tracing::warn!(
        uid = s.uid,
        denials = s.count,
        "denied requests over the rate, summed up in one audit record"
    );
    schedd.audit.send(Event::Issued(Record {
        session_id: denial_id(),
        job_id: 0,
        uid: s.uid,
        node: String::new(),
        outcome: format!(
            "{} more requests of this user were denied in the minute from unix time {} (over {} a minute, not recorded one by one)",
            s.count,
            s.since,
            crate::denials::PER_MINUTE
        ),
    }));
}

/// A denial has no session; it still gets an id of its own.
fn denial_id() -> String {
    let mut id = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut id);
    format!("denied-{}", hex::encode(id))
}

pub async fn issue(
    schedd: &Schedd,
    uid: u32,
    req: RequestSessionRequest,
) -> Result<RequestSessionReply, Status> {
    let internal = |e: &dyn std::fmt::Display| Status::internal(format!("schedd error: {e}"));
    let asked = std::time::Instant::now();
    // Every request leaves a record, denials too (rate-limited per user,
    // denials.rs), the job's and its node's when the job exists.
    let deny = |job_id: u64, node: &str, status: Status| {
        schedd.metrics.denied_for(stj_proto::refusal::of(&status));
        record_denial(schedd, uid, job_id, node, status.message());
        tracing::warn!(job_id, uid, reason = %status.message(), "session denied");
        Err(status)
    };
    let job_ref = match req.job.as_str() {
        "" => JobRef::plain(req.job_id),
        named => match named.parse::<JobRef>() {
            Ok(r) if r.id == req.job_id => r,
            Ok(_) | Err(_) => {
                return deny(
                    req.job_id,
                    "",
                    refuse(
                        Code::InvalidArgument,
                        Refusal::BadRequest,
                        format!(
                            "{:?} is not a job id (42, or Slurm's 42_7 and 42+1)",
                            named.chars().take(32).collect::<String>()
                        ),
                    ),
                )
            }
        },
    };
    let source = schedd.jobs();
    let t0 = std::time::Instant::now();
    let looked_up = match source.job(job_ref).await {
        Ok(found) => found,
        // Slurm unreachable, or several jobs by that name: the user is told
        // what failed (the command and its stderr), and it is audited.
        Err(e) => {
            return deny(
                req.job_id,
                "",
                refuse(Code::Unavailable, Refusal::JobSourceFailed, e.to_string()),
            )
        }
    };
    let Some(job) = looked_up else {
        return deny(
            req.job_id,
            "",
            refuse(
                Code::NotFound,
                Refusal::NoSuchJob,
                format!(
                    "there is no job {job_ref} ({} lists the jobs)",
                    source.lists_with()
                ),
            ),
        );
    };
    let Ok(client_pubkey) = <[u8; 32]>::try_from(req.client_pubkey.as_slice()) else {
        return deny(
            job.id,
            &job.node,
            refuse(
                Code::InvalidArgument,
                Refusal::BadRequest,
                "client_pubkey must be 32 bytes (ed25519)",
            ),
        );
    };
    let deny = |status: Status| deny(job.id, &job.node, status);
    if uid != 0 && uid != job.owner_uid {
        let whose = match source.names_owners() {
            true => format!("belongs to {} (uid {})", job.owner_name, job.owner_uid),
            false => "is not yours".to_string(),
        };
        return deny(refuse(
            Code::PermissionDenied,
            Refusal::NotOwner,
            format!(
                "job {} {whose}; only its owner or root can open a session in it",
                job.id
            ),
        ));
    }
    if !schedd.config.enable_ssh_to_job {
        return deny(refuse(Code::FailedPrecondition, Refusal::PoolDisabled,
            "ssh-to-job is disabled in this pool (the admin set enable_ssh_to_job = false in [schedd])",
        ));
    }
    if !job.ssh_enabled {
        return deny(refuse(
            Code::FailedPrecondition,
            Refusal::JobSshDisabled,
            format!("job {} was submitted with --no-ssh", job.id),
        ));
    }
    let state = job.state;
    if state != JobState::Running {
        let hint = match (state, job.detail.is_empty()) {
            (_, false) => format!(": {}", job.detail),
            (JobState::Idle, true) => {
                format!("; wait for it with `stj wait {} --state running`", job.id)
            }
            _ => String::new(),
        };
        let refusal = if state == JobState::Idle {
            Refusal::JobIdle
        } else {
            Refusal::JobNotRunning
        };
        return deny(refuse(
            Code::FailedPrecondition,
            refusal,
            format!("job {} is {}, not running{hint}", job.id, state.label()),
        ));
    }
    // The batch host, or the node of the allocation the user named.
    let node = match req.node.as_str() {
        "" => job.node.clone(),
        n if job.nodes.iter().any(|x| x == n) => n.to_string(),
        n => {
            return deny(refuse(
                Code::InvalidArgument,
                Refusal::NotInAllocation,
                format!(
                    "node {:?} is not one of job {}'s nodes ({})",
                    n.chars().take(64).collect::<String>(),
                    job.id,
                    job.nodes.join(", ")
                ),
            ))
        }
    };
    let Some(target) = schedd.registry.session_target(&node) else {
        return deny(refuse(Code::Unavailable, Refusal::NodeAway, format!(
            "node {node} that runs job {} is not connected to the schedd right now (is an stj-starter running there, registered under Slurm's name for it?); retry in a few seconds",
            job.id
        )));
    };
    let session_id =
        SessionId::random().map_err(|_| Status::internal("random generator failed"))?;
    let cap = Capability {
        session_id,
        job_id: job.id,
        owner_uid: job.owner_uid,
        expiry: now() as u64 + schedd.config.capability_ttl_secs,
        client_pubkey,
        starter_id: node.clone(),
    };
    if let Err(r) = schedd
        .limits
        .admit(uid, session_id, &node, cap.expiry as i64, now())
    {
        let refusal = match r {
            LimitRefusal::TooManyOpen(_) => Refusal::TooManyOpen,
            LimitRefusal::TooManyPending(_) => Refusal::TooManyPending,
        };
        return deny(refuse(Code::ResourceExhausted, refusal, match r {
            LimitRefusal::TooManyOpen(n) => format!(
                "you have {n} ssh-to-job sessions open, the most one user may (max_sessions_per_user in the schedd's [schedd] config); end one first"
            ),
            LimitRefusal::TooManyPending(n) => format!(
                "you hold {n} unused ssh-to-job capabilities, the most one user may (max_pending_per_user in the schedd's [schedd] config); wait for your other attempts to finish or for their capabilities to expire (capability_ttl_secs = {} s)",
                schedd.config.capability_ttl_secs
            ),
        }));
    }
    let encoded = cap.encode().map_err(|e| internal(&e))?;
    let k = derive_k(&target.key, &encoded);
    let sid = session_id.to_string();
    // No grant that cannot be audited: the capability leaves only once its
    // record is committed.
    if let Err(why) = schedd
        .audit
        .record(Event::Issued(Record {
            session_id: sid.clone(),
            job_id: job.id,
            uid,
            node: node.clone(),
            outcome: "granted".into(),
        }))
        .await
    {
        schedd.limits.forget(&session_id);
        tracing::error!(job_id = job.id, uid, reason = %why, "session not granted: it could not be audited");
        return Err(refuse(
            Code::Unavailable,
            Refusal::NotAudited,
            format!(
            "no session was granted because the schedd could not record it ({why}); tell the admin"
        ),
        ));
    }
    tracing::debug!(
        job_id = job.id,
        audited_us = t0.elapsed().as_micros() as u64,
        "session audited"
    );
    let relay_token = schedd.rendezvous.grant(session_id, &node, uid, cap.expiry);
    tracing::info!(session_id = %sid, job_id = job.id, uid, %node, "session granted");
    schedd.metrics.granted.inc();
    schedd
        .metrics
        .grant_seconds
        .observe(asked.elapsed().as_secs_f64());
    Ok(RequestSessionReply {
        capability: encoded,
        k: k.to_vec(),
        direct_addr: target.session_addr,
        node,
        user: job.owner_name,
        relay_token: relay_token.to_vec(),
        broker_addr: schedd.broker_addr.clone(),
        daemon_sock_dir: schedd.config.daemon_sock_dir.to_string_lossy().into_owned(),
    })
}
