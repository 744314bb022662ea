//! The user API on the local UNIX socket. Who is calling comes from the
//! kernel (SO_PEERCRED), never from the request.

use std::sync::Arc;
use std::time::Duration;

use stj_proto::starter::{schedd_message::Msg as Out, KillJob, ScheddMessage};
use stj_proto::user::schedd_server::Schedd as ScheddApi;
use stj_proto::user::{
    AuditReply, AuditRequest, ConnectBackReply, ConnectBackRequest, Job, JobSpec, JobState,
    QueryReply, QueryRequest, RemoveReply, RemoveRequest, ReportExitReply, ReportExitRequest,
    RequestSessionReply, RequestSessionRequest, SubmitReply, SubmitRequest, WaitReply, WaitRequest,
};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::queue::Owner;
use crate::Schedd;

const MAX_WAIT: Duration = Duration::from_secs(3600);
const MAX_ARGS_BYTES: usize = 256 * 1024;

pub struct UserApi {
    pub schedd: Arc<Schedd>,
}

struct Caller {
    uid: u32,
    gid: u32,
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| Caller {
            uid: c.uid(),
            gid: c.gid(),
        })
        .ok_or_else(|| Status::unauthenticated("cannot tell who is calling (no SO_PEERCRED)"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "user API failure");
    Status::internal(format!("schedd error: {e}"))
}

fn validate(spec: &JobSpec) -> Result<(), Status> {
    let bad = |m: &str| Err(Status::invalid_argument(m.to_string()));
    if spec.interactive && !spec.ssh_enabled {
        return bad("an interactive job needs ssh: drop --no-ssh");
    }
    if !spec.interactive && (spec.args.is_empty() || spec.args[0].is_empty()) {
        return bad("no command given: stj submit [OPTIONS] -- COMMAND [ARGS...]");
    }
    let size: usize = spec.args.iter().map(|a| a.len()).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|e| e.name.len() + e.value.len())
            .sum::<usize>();
    if size > MAX_ARGS_BYTES {
        return bad("arguments and environment exceed 256 KiB; pass large data in files");
    }
    let has_nul = |s: &str| s.contains('\0');
    if spec.args.iter().any(|a| has_nul(a)) {
        return bad("arguments cannot contain NUL bytes");
    }
    for e in &spec.env {
        if e.name.is_empty() || e.name.contains('=') || has_nul(&e.name) || has_nul(&e.value) {
            return bad(&format!(
                "invalid environment variable name {:?}: use --env NAME=VALUE",
                e.name
            ));
        }
    }
    if !spec.cwd.starts_with('/') {
        return bad("the job's working directory must be an absolute path (--cwd)");
    }
    if !spec.image.is_empty() && !spec.image.starts_with('/') {
        return bad("--image must be an absolute path to a root filesystem directory");
    }
    if spec.umask.is_some_and(|m| m > 0o777) {
        return bad("umask must be at most 0777");
    }
    Ok(())
}

/// What `uid` may see of `job`. The owner and root see everything; others
/// see what `squeue` shows of someone else's job: id, owner, state, node,
/// times, exit status and the program's name — not its arguments,
/// environment, directories or files (people pass API tokens in them), and
/// no error text of an ended job (it quotes paths and commands).
fn visible_to(uid: u32, mut job: Job) -> Job {
    if uid == 0 || uid == job.owner_uid {
        return job;
    }
    let spec = job.spec.take().unwrap_or_default();
    let name = match spec.args.first() {
        _ if spec.interactive => "(interactive)".to_string(),
        Some(a) => a.rsplit('/').next().unwrap_or(a).to_string(),
        None => String::new(),
    };
    job.spec = Some(JobSpec {
        args: vec![name],
        ssh_enabled: spec.ssh_enabled,
        interactive: spec.interactive,
        ..Default::default()
    });
    if job.state != JobState::Idle as i32 {
        job.reason.clear();
    }
    job
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{uid}"))
}

#[tonic::async_trait]
impl ScheddApi for UserApi {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        let who = caller(&req)?;
        if who.uid == 0 {
            return Err(Status::permission_denied(
                "jobs never run as root: submit as the user the job should run as (root may still query and remove jobs)",
            ));
        }
        let req = req.into_inner();
        let spec = req.spec.unwrap_or_default();
        validate(&spec)?;
        if req.request_id.len() > 64 {
            return Err(Status::invalid_argument(
                "request_id is at most 64 characters",
            ));
        }
        let owner = Owner {
            uid: who.uid,
            gid: who.gid,
            name: owner_name(who.uid),
        };
        let (id, new) = self
            .schedd
            .queue
            .submit(&owner, &spec, &req.request_id)
            .map_err(internal)?;
        if !new {
            tracing::info!(job_id = id, uid = owner.uid, request_id = %req.request_id, "submit retried; the job it made already");
            return Ok(Response::new(SubmitReply { job_id: id }));
        }
        tracing::info!(job_id = id, owner = %owner.name, uid = owner.uid, "job submitted");
        self.schedd.job_changed();
        self.schedd.schedule.notify_one();
        Ok(Response::new(SubmitReply { job_id: id }))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        let who = caller(&req)?;
        let ids = req.into_inner().job_ids;
        let jobs = if ids.is_empty() {
            self.schedd.queue.list().map_err(internal)?
        } else {
            let mut jobs = Vec::new();
            for id in ids {
                match self.schedd.queue.get(id).map_err(internal)? {
                    Some(j) => jobs.push(j),
                    None => {
                        return Err(Status::not_found(format!(
                            "there is no job {id} (stj q lists the queue)"
                        )))
                    }
                }
            }
            jobs
        };
        let jobs = jobs.into_iter().map(|j| visible_to(who.uid, j)).collect();
        Ok(Response::new(QueryReply { jobs }))
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().job_id;
        let job = self
            .schedd
            .queue
            .get(id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!("there is no job {id} (stj q lists the queue)"))
            })?;
        if who.uid != 0 && who.uid != job.owner_uid {
            tracing::warn!(
                job_id = id,
                uid = who.uid,
                owner = job.owner_uid,
                "refused to remove another user's job"
            );
            return Err(Status::permission_denied(format!(
                "job {id} belongs to {} (uid {}); only its owner or root can remove it",
                job.owner_name, job.owner_uid
            )));
        }
        let before = self.schedd.queue.remove(id, who.uid).map_err(internal)?;
        if let Some(before) = before {
            if before.state == JobState::Running as i32 {
                let sent = self.schedd.registry.send(
                    &before.node,
                    ScheddMessage {
                        msg: Some(Out::KillJob(KillJob { job_id: id })),
                    },
                );
                tracing::info!(job_id = id, node = %before.node, sent, "job removed; kill sent to its node");
            } else {
                tracing::info!(job_id = id, "job removed");
            }
        }
        self.schedd.job_changed();
        self.schedd.schedule.notify_one();
        let job = self.schedd.queue.get(id).map_err(internal)?;
        Ok(Response::new(RemoveReply { job }))
    }

    async fn request_session(
        &self,
        req: Request<RequestSessionRequest>,
    ) -> Result<Response<RequestSessionReply>, Status> {
        let who = caller(&req)?;
        crate::capability_issuer::issue(&self.schedd, who.uid, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let mut records = Vec::new();
        let mut owners = std::collections::HashMap::new();
        for r in self
            .schedd
            .queue
            .sessions(req.job_id, req.uid)
            .map_err(internal)?
        {
            let visible = who.uid == 0 || r.uid == who.uid || {
                let owner = match owners.get(&r.job_id) {
                    Some(o) => *o,
                    None => {
                        let o = self
                            .schedd
                            .queue
                            .get(r.job_id)
                            .map_err(internal)?
                            .map(|j| j.owner_uid);
                        owners.insert(r.job_id, o);
                        o
                    }
                };
                owner == Some(who.uid)
            };
            if visible {
                records.push(r);
            }
        }
        Ok(Response::new(AuditReply { records }))
    }

    async fn report_exit(
        &self,
        req: Request<ReportExitRequest>,
    ) -> Result<Response<ReportExitReply>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        if req.session_id.len() != 16 {
            return Err(Status::invalid_argument("session_id must be 16 bytes"));
        }
        // Checked in the update itself: only the granted uid's report, once.
        self.schedd.audit.send(crate::audit::Event::Exit {
            session_id: hex::encode(&req.session_id),
            uid: who.uid,
            status: req.exit_status,
        });
        Ok(Response::new(ReportExitReply {}))
    }

    async fn connect_back(
        &self,
        req: Request<ConnectBackRequest>,
    ) -> Result<Response<ConnectBackReply>, Status> {
        let who = caller(&req)?;
        crate::capability_issuer::connect_back(&self.schedd, who.uid, req.into_inner())
            .map(|()| Response::new(ConnectBackReply {}))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitReply>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let want = JobState::try_from(req.state)
            .ok()
            .filter(|s| *s != JobState::Unspecified)
            .ok_or_else(|| Status::invalid_argument("unknown job state to wait for"))?;
        let limit = match req.timeout_secs {
            0 => MAX_WAIT,
            s => Duration::from_secs(s.into()).min(MAX_WAIT),
        };
        let deadline = tokio::time::Instant::now() + limit;
        // Subscribe before reading so no change between the read and the wait is missed.
        let mut changes = self.schedd.changes.subscribe();
        loop {
            let job: Job = self
                .schedd
                .queue
                .get(req.job_id)
                .map_err(internal)?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "there is no job {} (stj q lists the queue)",
                        req.job_id
                    ))
                })?;
            let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
            if state == want {
                return Ok(Response::new(WaitReply {
                    job: Some(visible_to(who.uid, job)),
                    reached: true,
                }));
            }
            if state.is_terminal() {
                return Err(Status::failed_precondition(format!(
                    "job {} ended in state {} and will never be {}",
                    job.id,
                    state.label(),
                    want.label()
                )));
            }
            tokio::select! {
                r = changes.changed() => { r.map_err(internal)?; }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(Response::new(WaitReply { job: Some(visible_to(who.uid, job)), reached: false }));
                }
            }
        }
    }
}
