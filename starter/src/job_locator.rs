//! The seam between sessions and whatever runs jobs on this node (DESIGN
//! §12): given a job id, where a session enters it — the process whose
//! namespaces it joins (held by pidfd, so a recycled pid cannot stand in),
//! the uid and gid it runs as, the job's environment and working directory.
//! Session entry asks this and nothing else. Today the starter's own
//! containers answer (`jobs.rs`); a locator for jobs another engine started
//! (Slurm's cgroup tree beside slurmd) implements the same trait.

use std::sync::Arc;

use crate::container::{ContainerSpec, Init};

/// What a session needs to enter a running job.
pub struct JobTarget {
    /// The process the session's namespaces come from.
    pub init: Arc<Init>,
    /// Who the job runs as, its environment, working directory and files.
    pub spec: Arc<ContainerSpec>,
    /// Seed of the job's own SSH host key, for sessions whose client asked
    /// for it (Hello.job_host_key): one that can only check keys listed in
    /// known_hosts (paramiko, Ansible's paramiko) lists it once
    /// (`ssh-to-job host-key --add`). Other sessions get a one-time key.
    /// The key never leaves the node but in those sessions' files. None: no
    /// key could be made.
    pub host_seed: Option<[u8; 32]>,
    /// The job's cgroup, one directory per hierarchy: session processes
    /// join it, so they are accounted and limited with the job and end with
    /// it. Empty when the node has none.
    pub cgroups: Vec<std::path::PathBuf>,
}

/// Where job J stands on this node, as a session sees it.
pub enum Located {
    Here(JobTarget),
    /// Assigned here and still being set up: retrying shortly helps.
    Starting,
    NotHere,
}

pub trait JobLocator: Send + Sync {
    fn locate(&self, job_id: u64) -> Located;
}
