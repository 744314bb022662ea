//! The seam between sessions and whatever runs jobs on this node (DESIGN
//! §12): given a job id, where a session enters it — the job's outer
//! process (held by pidfd, so a recycled pid cannot stand in), its
//! processes (among which the innermost container is chosen), its owner,
//! uid and gid, its cgroup. Session entry asks this and nothing else. The
//! starter's own containers answer (`jobs.rs`), and so do Slurm's jobs,
//! found in Slurm's cgroup tree beside slurmd (`slurm.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use stj_proto::handshake::Step;

use crate::container::{ContainerSpec, Init};

/// What a session needs to enter a running job.
pub struct JobTarget {
    /// The job's outer process: its init (our containers), the oldest
    /// process of the step (Slurm). `--outer` lands beside it.
    pub init: Arc<Init>,
    /// Who the job runs as, its environment, working directory and files.
    pub spec: Arc<ContainerSpec>,
    /// The job's owner as this node knows it: a capability naming another
    /// owner is refused, whatever the schedd signed.
    pub owner_uid: u32,
    /// Seed of the job's own SSH host key, for sessions whose client asked
    /// for it (Hello.job_host_key): one that can only check keys listed in
    /// known_hosts (paramiko, Ansible's paramiko) lists it once
    /// (`ssh-to-job host-key --add`). Other sessions get a one-time key.
    /// The key never leaves the node but in those sessions' files. None: no
    /// key could be made.
    pub host_seed: Option<[u8; 32]>,
    /// The job's cgroup, a directory per hierarchy: a session joins, of the
    /// cgroups of the process it lands beside, those inside these, so it is
    /// accounted and limited with the job and ends with it. Empty when the
    /// node has none.
    pub cgroups: Vec<PathBuf>,
    /// The job's processes, among which the innermost container is found.
    pub members: Members,
    /// What a session landing beside `init` starts from.
    pub outer_view: OuterView,
    /// A Slurm job lives while a slurmstepd runs in this cgroup: its
    /// sessions end when it is gone, whatever the job left running. None:
    /// sessions end with the job's PID namespace (our containers).
    pub ends_with: Option<PathBuf>,
}

/// Which processes are the job's.
#[derive(Debug, Clone)]
pub enum Members {
    /// The init and its descendants (our containers: nothing leaves the
    /// job's PID namespace).
    DescendantsOf(i32),
    /// The processes of `uid` in the cgroup `dir` and below it (a Slurm
    /// step; its root-owned slurmstepd is not the job's).
    InCgroup { dir: PathBuf, uid: u32 },
}

/// Where the working directory and environment of a session landing beside
/// the job's outer process come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterView {
    /// The job's spec: our init is stj-init, whose environment is not the
    /// job's.
    Spec,
    /// That process itself (a Slurm batch script).
    Process,
}

/// Where job J stands on this node, as a session sees it.
pub enum Located {
    Here(JobTarget),
    /// Assigned here and still being set up: retrying shortly helps.
    Starting,
    NotHere,
    /// The job runs here, but has no such step (the steps it has).
    NoSuchStep(Step, Vec<String>),
    /// This node cannot tell (its job engine's layout is not one it knows);
    /// the message names what was looked for.
    Unrecognised(String),
}

pub trait JobLocator: Send + Sync {
    fn locate(&self, job_id: u64, step: Option<Step>) -> Located;
}
