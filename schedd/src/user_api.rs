//! The user API on the local UNIX socket. Who is calling comes from the
//! kernel (SO_PEERCRED), never from the request.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use stj_proto::starter::{schedd_message::Msg as Out, KillJob, ScheddMessage};
use stj_proto::user::schedd_server::Schedd as ScheddApi;
use stj_proto::user::{
    AuditReply, AuditRequest, ConnectBackReply, ConnectBackRequest, InfoReply, InfoRequest, Job,
    JobSpec, JobState, Node, NodesReply, NodesRequest, QueryReply, QueryRequest, RemoveOutcome,
    RemoveReply, RemoveRequest, ReportExitReply, ReportExitRequest, RequestSessionReply,
    RequestSessionRequest, SubmitReply, SubmitRequest, WaitReply, WaitRequest,
};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::queue::{Owner, RemoveRefusal, Submitted};
use crate::state::Schedd;

const MAX_WAIT: Duration = Duration::from_secs(3600);
const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Environment variables per job: sessions pass them to sshd, which refuses
/// more than about 1,000 ("child_set_env: too many env vars").
const MAX_ENV: usize = 900;
/// `--cpus` beyond any node's CPU count is a typo, not a request.
const MAX_MILLICPUS: u32 = 4096 * 1000;
/// Below this a job's own init and one session's sshd cannot run.
const MIN_MEMORY: u64 = 4 << 20;
/// Beyond any node's memory: a typo, not a request.
const MAX_MEMORY: u64 = 1 << 50;
/// A reply's size, well under the 4 MiB a gRPC client takes by default:
/// longer answers come in pages.
const REPLY_BUDGET: usize = 2 * 1024 * 1024;
/// Rows read from the queue at a time while filling a reply.
const PAGE_ROWS: usize = 1000;

/// One reply's items, up to `REPLY_BUDGET` encoded bytes. The first item
/// always goes in, so a reply is never empty while there is more.
struct Reply<T> {
    items: Vec<T>,
    size: usize,
}

impl<T: prost::Message> Reply<T> {
    fn new() -> Reply<T> {
        Reply {
            items: Vec::new(),
            size: 0,
        }
    }

    /// Adds `item`; false (and `item` left out) when the reply is full.
    fn add(&mut self, item: T) -> bool {
        let len = item.encoded_len();
        if !self.items.is_empty() && self.size + len > REPLY_BUDGET {
            return false;
        }
        self.size += len;
        self.items.push(item);
        true
    }
}
/// Job ids one Query may name.
const MAX_QUERY_IDS: usize = 10_000;
/// Nodes in one Nodes reply (each costs a look-up in the queue).
const NODES_PAGE: usize = 500;

/// A node `stj nodes` shows: seen since this schedd started, or only
/// enrolled.
enum Known {
    Seen(crate::registry::NodeView),
    Enrolled(crate::enrolment::EnrolledNode),
}
/// Jobs one Remove call may name.
const MAX_REMOVE: usize = 100_000;

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
    if spec.env.len() > MAX_ENV {
        return bad(&format!(
            "at most {MAX_ENV} --env variables (a session's sshd passes at most about 1,000); put the rest in a file the job reads"
        ));
    }
    if spec.umask.is_some_and(|m| m > 0o777) {
        return bad("umask must be at most 0777");
    }
    if spec.millicpus > MAX_MILLICPUS || (1..10).contains(&spec.millicpus) {
        return bad("--cpus is between 0.01 and 4096");
    }
    if spec.memory_bytes != 0 && spec.memory_bytes < MIN_MEMORY {
        return bad(
            "--memory is at least 4M: less leaves no room for the job's own init and a session",
        );
    }
    if spec.memory_bytes > MAX_MEMORY {
        return bad("--memory is at most 1P");
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
        // squeue shows what a job asked for, to everyone.
        millicpus: spec.millicpus,
        memory_bytes: spec.memory_bytes,
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

/// On Slurm the schedd keeps no queue: what users do with jobs is Slurm's.
fn slurm_jobs(what: &str) -> Status {
    stj_proto::refusal::status(
        tonic::Code::FailedPrecondition,
        stj_proto::user::Refusal::SlurmJobs,
        format!("this pool's jobs are Slurm's: {what} (ssh-to-job JOBID works on them; stj submit --interactive submits with sbatch)"),
    )
}

/// A Slurm job as `stj q` shows jobs.
fn from_slurm(j: crate::slurm::SlurmJob) -> Job {
    let state = j.job_state();
    Job {
        id: j.id,
        owner_uid: j.uid,
        owner_name: j.user.clone(),
        state: state as i32,
        node: if state == JobState::Running {
            j.batch_host.clone()
        } else {
            String::new()
        },
        reason: match state {
            JobState::Running => String::new(),
            _ => j.detail(),
        },
        spec: Some(JobSpec {
            args: vec![j.name.clone()],
            // Known per job only when a session is asked for (the
            // comment is asked apart); listings do not say.
            ssh_enabled: true,
            millicpus: j.cpus.saturating_mul(1000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ScheddApi for UserApi {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        use stj_proto::user::info_reply::Jobs;
        Ok(Response::new(match self.schedd.slurm {
            Some(_) => InfoReply {
                jobs: Jobs::Slurm as i32,
                slurm_placeholder: self
                    .schedd
                    .config
                    .slurm_placeholder
                    .to_string_lossy()
                    .into_owned(),
            },
            None => InfoReply {
                jobs: Jobs::Queue as i32,
                ..Default::default()
            },
        }))
    }

    async fn nodes(&self, req: Request<NodesRequest>) -> Result<Response<NodesReply>, Status> {
        use std::sync::atomic::Ordering;
        use stj_proto::user::node::State;
        let req = req.into_inner();
        if req.names.len() > MAX_QUERY_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_QUERY_IDS} node names per query"
            )));
        }
        let wanted: HashSet<&str> = req.names.iter().map(String::as_str).collect();
        let wanted = |n: &str| wanted.is_empty() || wanted.contains(n);
        // The nodes the schedd knows, by name: connected since it started
        // (`seen`), or enrolled and not seen. Listing all, a page needs only
        // the first NODES_PAGE + 1 after `after_name` of each; named ones
        // (at most MAX_QUERY_IDS) are looked for among all.
        let (seen, enrolled) = if req.names.is_empty() {
            (
                self.schedd
                    .registry
                    .views_after(&req.after_name, NODES_PAGE + 1),
                self.schedd
                    .enrolment
                    .list_after(&req.after_name, NODES_PAGE + 1)
                    .map_err(internal)?,
            )
        } else {
            (
                self.schedd.registry.views(),
                self.schedd.enrolment.list().map_err(internal)?,
            )
        };
        let mut known: BTreeMap<String, Known> = enrolled
            .into_iter()
            .map(|e| (e.name.clone(), Known::Enrolled(e)))
            .collect();
        for (name, v) in seen {
            known.insert(name, Known::Seen(v));
        }
        // Named nodes must exist (the first page says so).
        if req.after_name.is_empty() {
            if let Some(n) = req.names.iter().find(|n| !known.contains_key(n.as_str())) {
                return Err(Status::not_found(format!(
                    "no node {:?} has enrolled with this schedd (stj nodes lists them)",
                    n.chars().take(64).collect::<String>()
                )));
            }
        }
        let mut reply = Reply::new();
        let mut more = false;
        let after = (Bound::Excluded(req.after_name.as_str()), Bound::Unbounded);
        for (name, k) in known.range::<str, _>(after).filter(|(n, _)| wanted(n)) {
            // Each node costs a look-up in the queue: a page has at most
            // NODES_PAGE of them, whatever the pool's size.
            if reply.items.len() == NODES_PAGE {
                more = true;
                break;
            }
            let node = match k {
                Known::Seen(v) => {
                    let jobs: Vec<u64> = self
                        .schedd
                        .queue
                        .running_on(name)
                        .map_err(internal)?
                        .iter()
                        .map(|j| j.id)
                        .collect();
                    Node {
                        name: name.clone(),
                        state: match v.state {
                            crate::registry::LinkState::Connected => State::Connected,
                            crate::registry::LinkState::Silent => State::Silent,
                            crate::registry::LinkState::Gone => State::Gone,
                        } as i32,
                        since: v.since,
                        slots_total: v.slots,
                        slots_used: jobs.len() as u32,
                        jobs,
                        sessions_open: self.schedd.limits.open_on(name) as u32,
                        version: v.version.clone(),
                        address: v.address.clone(),
                        last_heard: v.last_heard.load(Ordering::Relaxed),
                    }
                }
                Known::Enrolled(e) => Node {
                    name: name.clone(),
                    state: State::NotSeen as i32,
                    since: e.enrolled_at,
                    address: e.enrolled_from.clone(),
                    ..Default::default()
                },
            };
            if !reply.add(node) {
                more = true;
                break;
            }
        }
        let next_after_name = match (more, reply.items.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(NodesReply {
            nodes: reply.items,
            next_after_name,
        }))
    }

    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        if self.schedd.slurm.is_some() {
            return Err(slurm_jobs("submit them with sbatch"));
        }
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
        let cap = self.schedd.config.max_jobs_per_user;
        let id = match self
            .schedd
            .queue
            .submit(&owner, &spec, &req.request_id, cap)
            .map_err(internal)?
        {
            Submitted::New(id) => id,
            Submitted::Again(id) => {
                tracing::info!(job_id = id, uid = owner.uid, request_id = %req.request_id, "submit retried; the job it made already");
                return Ok(Response::new(SubmitReply { job_id: id }));
            }
            Submitted::OverCap(n) => {
                return Err(Status::resource_exhausted(format!(
                    "you have {n} jobs idle or running, the most one user may (max_jobs_per_user in the schedd's [schedd] config); remove some with stj rm, or wait for them to end"
                )))
            }
        };
        tracing::info!(job_id = id, owner = %owner.name, uid = owner.uid, "job submitted");
        self.schedd.job_changed();
        self.schedd.schedule.notify_one();
        Ok(Response::new(SubmitReply { job_id: id }))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        if req.job_ids.len() > MAX_QUERY_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_QUERY_IDS} job ids per query"
            )));
        }
        if let Some(slurm) = &self.schedd.slurm {
            // No paging: Slurm keeps few ended jobs. squeue runs as root
            // here, so it would show what Slurm's PrivateData may hide from
            // users: they are shown their own jobs only (root all).
            let ids: Vec<String> = req.job_ids.iter().map(u64::to_string).collect();
            let user = (who.uid != 0).then(|| owner_name(who.uid));
            let jobs = slurm
                .list_named(&ids, user.as_deref(), req.include_ended)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut reply = Reply::new();
            for j in jobs
                .into_iter()
                .filter(|j| who.uid == 0 || j.uid == who.uid)
            {
                if !reply.add(visible_to(who.uid, from_slurm(j))) {
                    break;
                }
            }
            return Ok(Response::new(QueryReply {
                jobs: reply.items,
                next_after_id: 0,
            }));
        }
        // Named jobs must exist (the first page says so).
        if req.after_id == 0 {
            for &id in &req.job_ids {
                if self.schedd.queue.get(id).map_err(internal)?.is_none() {
                    return Err(Status::not_found(format!(
                        "there is no job {id} (stj q lists the queue)"
                    )));
                }
            }
        }
        let mut reply = Reply::new();
        let mut after = req.after_id;
        loop {
            let page = self
                .schedd
                .queue
                .jobs_page(&req.job_ids, req.include_ended, after, PAGE_ROWS)
                .map_err(internal)?;
            let last_page = page.len() < PAGE_ROWS;
            for mut job in page {
                let id = job.id;
                job.node_away = job.state == JobState::Running as i32
                    && !self.schedd.registry.is_connected(&job.node);
                if !reply.add(visible_to(who.uid, job)) {
                    return Ok(Response::new(QueryReply {
                        jobs: reply.items,
                        next_after_id: after,
                    }));
                }
                after = id;
            }
            if last_page {
                return Ok(Response::new(QueryReply {
                    jobs: reply.items,
                    next_after_id: 0,
                }));
            }
        }
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
        if self.schedd.slurm.is_some() {
            return Err(slurm_jobs("remove them with scancel"));
        }
        let who = caller(&req)?;
        let req = req.into_inner();
        let single = (req.job_id != 0).then_some(req.job_id);
        let ids: Vec<u64> = single.into_iter().chain(req.job_ids).collect();
        if ids.len() > MAX_REMOVE {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REMOVE} jobs per call; remove them in batches"
            )));
        }
        let done = self
            .schedd
            .queue
            .remove_many(&ids, who.uid)
            .map_err(internal)?;
        let mut outcomes = Vec::with_capacity(done.len());
        let mut refusal_of_single = None;
        for (id, result) in done {
            if single == Some(id) {
                if let Err(r) = &result {
                    refusal_of_single = Some(r.clone());
                }
            }
            let error = match result {
                Ok(Some(node)) => {
                    let sent = self.schedd.registry.send(
                        &node,
                        ScheddMessage {
                            msg: Some(Out::KillJob(KillJob { job_id: id })),
                        },
                    );
                    tracing::info!(job_id = id, node = %node, sent, uid = who.uid, "job removed; kill sent to its node");
                    String::new()
                }
                Ok(None) => {
                    tracing::info!(job_id = id, uid = who.uid, "job removed");
                    String::new()
                }
                Err(RemoveRefusal::NoSuchJob) => {
                    format!("there is no job {id} (stj q lists the queue)")
                }
                Err(RemoveRefusal::NotOwner { owner, owner_name }) => {
                    tracing::warn!(
                        job_id = id,
                        uid = who.uid,
                        owner,
                        "refused to remove another user's job"
                    );
                    format!("job {id} belongs to {owner_name} (uid {owner}); only its owner or root can remove it")
                }
            };
            outcomes.push(RemoveOutcome { job_id: id, error });
        }
        self.schedd.job_changed();
        self.schedd.schedule.notify_one();
        // One job asked the old way: its refusal is the call's error.
        if let (Some(id), [only]) = (single, outcomes.as_slice()) {
            return match refusal_of_single {
                Some(RemoveRefusal::NoSuchJob) => Err(Status::not_found(only.error.clone())),
                Some(RemoveRefusal::NotOwner { .. }) => {
                    Err(Status::permission_denied(only.error.clone()))
                }
                None => {
                    let job = self.schedd.queue.get(id).map_err(internal)?;
                    Ok(Response::new(RemoveReply { job, outcomes }))
                }
            };
        }
        Ok(Response::new(RemoveReply {
            job: None,
            outcomes,
        }))
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
        let mut after = match req.after.split_once(':') {
            None if req.after.is_empty() => (i64::MIN, i64::MIN),
            Some((t, r)) => match (t.parse(), r.parse()) {
                (Ok(t), Ok(r)) => (t, r),
                _ => return Err(Status::invalid_argument("bad audit cursor")),
            },
            None => return Err(Status::invalid_argument("bad audit cursor")),
        };
        let mut reply = Reply::new();
        let mut owners = std::collections::HashMap::new();
        loop {
            let page = self
                .schedd
                .queue
                .sessions_page(req.job_id, req.uid, after, PAGE_ROWS)
                .map_err(internal)?;
            let last_page = page.len() < PAGE_ROWS;
            for (r, cursor) in page {
                // On Slurm the queue holds no jobs: whose job a record is
                // about is not known here, so users see their own requests.
                let slurm = self.schedd.slurm.is_some();
                let visible = who.uid == 0
                    || r.uid == who.uid
                    || !slurm && {
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
                if visible && !reply.add(r) {
                    return Ok(Response::new(AuditReply {
                        records: reply.items,
                        next: format!("{}:{}", after.0, after.1),
                    }));
                }
                after = cursor;
            }
            if last_page {
                return Ok(Response::new(AuditReply {
                    records: reply.items,
                    next: String::new(),
                }));
            }
        }
    }

    async fn report_exit(
        &self,
        req: Request<ReportExitRequest>,
    ) -> Result<Response<ReportExitReply>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let Some(session_id) = stj_proto::session_id::SessionId::from_slice(&req.session_id) else {
            return Err(Status::invalid_argument("session_id must be 16 bytes"));
        };
        // Checked in the update itself: only the granted uid's report, once.
        self.schedd.audit.send(crate::audit::Event::Exit {
            session_id: session_id.to_string(),
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
        crate::broker::connect_back::connect_back(&self.schedd, who.uid, req.into_inner())
            .map(|()| Response::new(ConnectBackReply {}))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitReply>, Status> {
        if self.schedd.slurm.is_some() {
            return Err(slurm_jobs("wait for them with squeue or sbatch --wait"));
        }
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
