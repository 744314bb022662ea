//! The seam between capability issuance and whatever knows the jobs (DESIGN
//! §12): for a job id, its owner, its state and the nodes it runs on.
//! RequestSession asks this and nothing else. The schedd's own queue
//! answers (the default), or Slurm (`slurm.rs`, `[schedd] jobs = "slurm"`).

use futures::future::BoxFuture;
use stj_proto::job_ref::JobRef;
use stj_proto::user::JobState;

/// What issuance needs to know about one job.
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub id: u64,
    pub owner_uid: u32,
    pub owner_name: String,
    pub state: JobState,
    /// The node sessions go to by default (the batch host); empty when the
    /// job runs nowhere.
    pub node: String,
    /// Every node of the job's allocation (`ssh-to-job --node` picks one).
    pub nodes: Vec<String>,
    /// Sessions into this job are allowed (not submitted with --no-ssh).
    pub ssh_enabled: bool,
    /// The engine's own words for the job's state, for refusals ("PENDING
    /// in Slurm (Priority)"); empty when the state says it all.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot look up jobs: {0}")]
pub struct JobSourceError(pub String);

pub trait JobSource: Send + Sync {
    /// None: no such job (never was, or forgotten).
    fn job(&self, job: JobRef) -> BoxFuture<'_, Result<Option<JobFacts>, JobSourceError>>;

    /// The command that lists this source's jobs, for messages.
    fn lists_with(&self) -> &'static str;

    /// Whether a refusal may name a job's owner: our queue shows owners to
    /// everyone (as `stj q` does); Slurm may hide them (PrivateData).
    fn names_owners(&self) -> bool {
        true
    }
}

impl JobSource for crate::queue::Queue {
    fn job(&self, job: JobRef) -> BoxFuture<'_, Result<Option<JobFacts>, JobSourceError>> {
        // Array tasks and components are Slurm's: no job of ours is one.
        let found = match job.part {
            Some(_) => Ok(None),
            // One indexed SQLite read, cached statement: cheaper than a hop
            // to a blocking thread.
            None => self
                .get(job.id)
                .map_err(|e| JobSourceError(format!("{e:#}"))),
        };
        Box::pin(async move {
            Ok(found?.map(|job| JobFacts {
                id: job.id,
                owner_uid: job.owner_uid,
                owner_name: job.owner_name,
                state: JobState::try_from(job.state).unwrap_or(JobState::Unspecified),
                nodes: (!job.node.is_empty())
                    .then(|| job.node.clone())
                    .into_iter()
                    .collect(),
                node: job.node,
                ssh_enabled: job.spec.as_ref().is_some_and(|s| s.ssh_enabled),
                detail: String::new(),
            }))
        })
    }

    fn lists_with(&self) -> &'static str {
        "stj q"
    }
}
