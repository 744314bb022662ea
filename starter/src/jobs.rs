//! The jobs this starter runs: start, kill, and report their ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stj_proto::handshake::Step;
use stj_proto::starter::{JobExited, RunJob};
use tokio::sync::mpsc;

use crate::cgroup::{CgroupTree, JobCgroup, Limits};
use crate::container::{self, ContainerSpec, Exit, Launch};
use crate::job_locator::{JobLocator, JobTarget, Located, Members, OuterView};
use crate::report::{Report, Reporter, Reports};
use crate::slots::SlotUsers;

#[derive(Default)]
struct Entry {
    init: Option<Arc<crate::container::Init>>,
    spec: Option<Arc<ContainerSpec>>,
    kill_requested: bool,
    /// Seed of the job's SSH host key, made when the job arrives and kept
    /// in memory only, for the job's life (see job_locator.rs).
    host_seed: Option<[u8; 32]>,
    /// The job's cgroup (its processes and its sessions').
    cgroup: Option<Arc<JobCgroup>>,
    /// Who submitted it (the uid it runs as may be a slot user's).
    owner_uid: u32,
}

/// A fresh host key seed; None only if the system's generator fails (then
/// sessions are refused, never served with a predictable key).
pub(crate) fn host_seed() -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).ok()?;
    Some(seed)
}

pub struct Jobs {
    table: Mutex<HashMap<u64, Entry>>,
    events: Reporter,
    work_dir: PathBuf,
    kill_grace: Duration,
    /// The sshd kit (mounted into image jobs, and home of the interactive
    /// placeholder); None if it could not be built.
    kit: Option<crate::kit::Kit>,
    /// Run jobs as leased slot uids instead of their owners'.
    slot_users: Option<Arc<SlotUsers>>,
    /// Where job cgroups are made; None when the node has none usable.
    cgroups: Option<CgroupTree>,
    /// Beside slurmd: the schedd's queue has no jobs for this node.
    runs_none: bool,
    /// Processes and threads one job may have at once (0: no cap).
    pids_max: u32,
}

pub struct JobsConfig {
    pub work_dir: PathBuf,
    pub kill_grace: Duration,
    pub kit: Option<crate::kit::Kit>,
    pub slot_users: Option<Arc<SlotUsers>>,
    pub cgroups: Option<CgroupTree>,
    /// Start no job (a starter beside slurmd): a RunJob goes back.
    pub runs_none: bool,
    pub pids_max: u32,
}

/// Creates `dir` and its parents under `work_dir` with mode 0711: job users
/// must reach their own session files without listing anyone else's.
pub(crate) fn make_traversable(
    work_dir: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mut d = dir;
    loop {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
        if d == work_dir {
            return Ok(());
        }
        match d.parent() {
            Some(p) if p.starts_with(work_dir) => d = p,
            _ => return Ok(()),
        }
    }
}

fn to_report(job_id: u64, e: Exit) -> JobExited {
    JobExited {
        job_id,
        exit_code: e.code,
        exit_signal: e.signal,
        error: e.error,
        node_failure: e.node_fault,
    }
}

impl Jobs {
    pub fn new(c: JobsConfig) -> (Arc<Jobs>, Reports) {
        let (events, rx) = mpsc::unbounded_channel();
        let jobs = Arc::new(Jobs {
            table: Mutex::new(HashMap::new()),
            events,
            work_dir: c.work_dir,
            kill_grace: c.kill_grace,
            kit: c.kit,
            slot_users: c.slot_users,
            cgroups: c.cgroups,
            runs_none: c.runs_none,
            pids_max: c.pids_max,
        });
        (jobs, rx)
    }

    /// A sender for session reports into the same channel as the jobs'.
    pub fn reporter(&self) -> Reporter {
        self.events.clone()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job if it runs here now (started, not yet ended).
    pub fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.table().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Starts a job unless it already runs here (a repeated RunJob after a
    /// reconnect is harmless).
    pub fn start(self: &Arc<Self>, run: RunJob) {
        if self.runs_none {
            // It registered with no slots: a schedd that sends one anyway
            // gets it back, for another node.
            let _ = self.events.send(Report::JobExited(JobExited {
                job_id: run.job_id,
                error: "this node serves Slurm's jobs (jobs = \"slurm\") and runs none of the schedd's queue".into(),
                node_failure: true,
                ..Default::default()
            }));
            return;
        }
        {
            let mut t = self.table();
            if t.contains_key(&run.job_id) {
                return;
            }
            t.insert(
                run.job_id,
                Entry {
                    host_seed: host_seed(),
                    owner_uid: run.uid,
                    ..Entry::default()
                },
            );
        }
        let this = self.clone();
        tokio::spawn(async move {
            let id = run.job_id;
            let exit = this.run(run).await;
            // Report first, forget second: a hello in between then lists the
            // job as running *and* finished, never as neither.
            let _ = this.events.send(Report::JobExited(to_report(id, exit)));
            this.table().remove(&id);
            std::fs::remove_dir_all(this.work_dir.join("jobs").join(id.to_string())).ok();
            // The uid stays leased (no other owner gets it) until swept.
            if let Some(slots) = this.slot_users.clone() {
                let swept = tokio::task::spawn_blocking(move || slots.release(id)).await;
                if let Ok(Some((uid, s))) = swept {
                    tracing::info!(
                        job_id = id,
                        uid,
                        processes = s.processes,
                        files_given_back = s.files,
                        "slot user's lease ended; swept"
                    );
                }
            }
        });
    }

    async fn run(&self, run: RunJob) -> Exit {
        let id = run.job_id;
        let spec = run.spec.unwrap_or_default();
        // The job's own fault: it would fail on any node.
        let failed = |error: String| Exit {
            error,
            ..Default::default()
        };
        // The node's: the job goes back to the queue.
        let node_failed = |error: String| Exit {
            error,
            node_fault: true,
            ..Default::default()
        };
        if run.uid == 0 {
            return failed("refusing to run a job as root".into());
        }
        if spec.args.is_empty() && !spec.interactive {
            return failed("the job has no command".into());
        }
        let image = (!spec.image.is_empty()).then(|| PathBuf::from(&spec.image));
        // With an image, the job's files land inside it; a job whose output
        // nobody named goes to /dev/null there (README, Jobs).
        let in_image = image.is_some();
        let default_out = |ext: &str| match in_image {
            true => "/dev/null".to_string(),
            false => format!("stj-{id}.{ext}"),
        };
        // Slot users (HTCondor's term): the job runs as a node-local uid that
        // has no passwd entry; the shim gives sessions an account for it.
        let mut workdir = None;
        let (uid, gid, user_name) = match &self.slot_users {
            Some(slots) => {
                let root = image.clone().unwrap_or_else(|| PathBuf::from("/"));
                let dir = match crate::slots::open_workdir(&root, &spec.cwd, image.is_some()) {
                    Ok(v) => v.map(|(fd, w)| (w, Arc::new(fd))),
                    Err(e) => return failed(format!("{e:#}")),
                };
                workdir = dir.as_ref().map(|(_, fd)| fd.clone());
                match slots.claim(id, run.uid, run.gid, dir) {
                    Ok(Some(uid)) => (uid, uid, format!("stj-slot{uid}")),
                    Ok(None) => {
                        return node_failed(format!(
                            "all slot users {} are leased to other owners' jobs on this node",
                            slots.range()
                        ))
                    }
                    Err(e) => {
                        return node_failed(format!(
                            "node could not record the job's slot-user lease: {e:#}"
                        ))
                    }
                }
            }
            None => (run.uid, run.gid, run.owner_name.clone()),
        };
        let sessions = self
            .work_dir
            .join("jobs")
            .join(id.to_string())
            .join("sessions");
        if let Err(e) = make_traversable(&self.work_dir, &sessions) {
            return node_failed(format!(
                "node could not prepare the job's session dir: {e:#}"
            ));
        }
        let args = if spec.interactive {
            // The placeholder of `stj submit --interactive` comes from the
            // kit, so it runs in any image.
            let Some(kit) = &self.kit else {
                return node_failed("interactive jobs need ssh-to-job on the node, which is unavailable there (see the starter's log)".into());
            };
            let mut a = kit.command(&kit.view(in_image, &sessions).kit, "stj-starter", false);
            a.push("placeholder".into());
            a.push("--idle-timeout-secs".into());
            a.push(spec.idle_timeout_secs.max(1).to_string());
            a
        } else {
            spec.args.clone()
        };
        let mut cspec = ContainerSpec {
            job_id: id,
            uid,
            gid,
            user_name,
            args,
            env: spec
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            cwd: spec.cwd.clone(),
            image,
            stdout: if spec.output.is_empty() {
                default_out("out")
            } else {
                spec.output.clone()
            },
            stderr: if spec.error.is_empty() {
                default_out("err")
            } else {
                spec.error.clone()
            },
            kit: if in_image {
                self.kit.as_ref().map(|k| k.dir.clone())
            } else {
                None
            },
            sessions,
            umask: spec.umask.unwrap_or(0o077) & 0o777,
            confined: self.slot_users.is_some(),
            writable_workdir: workdir.as_ref().and_then(|fd| {
                let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&**fd)).ok()?;
                Some((st.st_dev, st.st_ino))
            }),
            cgroups: Vec::new(),
        };
        let job_dir = self.work_dir.join("jobs").join(id.to_string());
        let limits = Limits {
            millicpus: spec.millicpus,
            memory_bytes: spec.memory_bytes,
            pids: self.pids_max,
        };
        let asks_limits = limits.millicpus > 0 || limits.memory_bytes > 0;
        let cgroup = match (&self.cgroups, !asks_limits) {
            (Some(tree), _) => {
                let tree = tree.clone();
                match tokio::task::spawn_blocking(move || tree.create(id, limits)).await {
                    Ok(Ok(c)) => Some(Arc::new(c)),
                    Ok(Err(e)) => {
                        return node_failed(format!("node could not make the job's cgroup: {e}"))
                    }
                    Err(e) => return node_failed(format!("node could not make the job's cgroup: {e}")),
                }
            }
            (None, true) => None,
            (None, false) => {
                return node_failed(
                    "node cannot enforce --cpus or --memory: it has no usable cgroup hierarchy (see its starter's log)".into(),
                )
            }
        };
        cspec.cgroups = cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default();
        let exit = self
            .run_in(id, &run.owner_name, cspec, &job_dir, cgroup.clone())
            .await;
        let Some(cgroup) = cgroup else { return exit };
        let exit = with_oom_kills(exit, cgroup.oom_kills(), limits.memory_bytes);
        // What the job left (nothing, normally: its PID namespace is gone)
        // goes with it, then its cgroup — before the job's end is reported,
        // so a run of the same job that follows never meets this one's.
        tokio::task::spawn_blocking(move || {
            cgroup.kill();
            cgroup.remove(Duration::from_secs(10));
        })
        .await
        .ok();
        exit
    }

    async fn run_in(
        &self,
        id: u64,
        owner: &str,
        cspec: ContainerSpec,
        job_dir: &std::path::Path,
        cgroup: Option<Arc<JobCgroup>>,
    ) -> Exit {
        let node_failed = |error: String| Exit {
            error,
            node_fault: true,
            ..Default::default()
        };
        let container = match container::launch(&cspec, job_dir).await {
            Ok(Launch::Started(c)) => c,
            Ok(Launch::Failed(exit)) => {
                tracing::warn!(job_id = id, error = %exit.error, "job failed to start");
                return exit;
            }
            Err(e) => {
                tracing::error!(job_id = id, error = %format!("{e:#}"), "cannot launch container");
                return node_failed(format!("node could not start the container: {e:#}"));
            }
        };
        let init = container.init.clone();
        let kill_now = {
            let mut t = self.table();
            let e = t.entry(id).or_default();
            e.init = init.clone();
            e.spec = Some(Arc::new(cspec.clone()));
            e.cgroup = cgroup;
            e.kill_requested
        };
        tracing::info!(job_id = id, %owner, "job started");
        let _ = self.events.send(Report::JobStarted(id));
        if kill_now {
            self.kill(id);
        }
        let exit = container.wait().await;
        tracing::info!(job_id = id, code = ?exit.code, signal = ?exit.signal, "job exited");
        exit
    }

    /// SIGTERM to the job's init (which forwards it to everything in the
    /// container), then SIGKILL to the init after the grace period, which
    /// takes the whole PID namespace down.
    pub fn kill(&self, id: u64) {
        let (init, cgroup) = {
            let mut t = self.table();
            let Some(e) = t.get_mut(&id) else { return };
            e.kill_requested = true;
            (e.init.clone(), e.cgroup.clone())
        };
        let Some(init) = init else { return }; // killed as soon as it has started
        tracing::info!(job_id = id, "killing job");
        container::signal_pidfd(&init.pidfd, libc::SIGTERM);
        let grace = self.kill_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            container::signal_pidfd(&init.pidfd, libc::SIGKILL);
            // Everything in the job's cgroup, whatever namespace it is in.
            if let Some(c) = cgroup {
                tokio::task::spawn_blocking(move || c.kill());
            }
        });
    }
}

/// The job's exit, saying so when its memory limit killed processes of it
/// (the exit status alone says only "signal 9").
fn with_oom_kills(mut exit: Exit, kills: u64, limit: u64) -> Exit {
    if kills > 0 && exit.error.is_empty() {
        let limit = match limit {
            0 => String::new(),
            l if l % (1 << 20) == 0 => format!(" ({} MiB)", l >> 20),
            l => format!(" ({l} bytes)"),
        };
        exit.error = format!(
            "out of memory: the job reached its memory limit{limit} and the kernel killed {kills} of its processes; submit with a larger --memory"
        );
    }
    exit
}

/// The starter's own containers: a job is here from its RunJob until it
/// exits, and enterable once its container's init is up.
impl JobLocator for Jobs {
    fn locate(&self, id: u64, step: Option<Step>) -> Located {
        let t = self.table();
        // Steps are Slurm's; ours have one, the job itself.
        if let (Some(step), Some(_)) = (step, t.get(&id)) {
            return Located::NoSuchStep(step, vec![]);
        }
        match t.get(&id) {
            Some(Entry {
                init: Some(init),
                spec: Some(spec),
                host_seed,
                cgroup,
                owner_uid,
                ..
            }) => Located::Here(JobTarget {
                init: init.clone(),
                spec: spec.clone(),
                owner_uid: *owner_uid,
                host_seed: *host_seed,
                cgroups: cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default(),
                members: Members::DescendantsOf(init.pid),
                outer_view: OuterView::Spec,
                ends_with: None,
            }),
            Some(e) if e.init.is_none() && !e.kill_requested => Located::Starting,
            _ => Located::NotHere,
        }
    }
}
