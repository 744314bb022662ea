//! The seam between capability issuance and whatever knows the jobs (DESIGN
//! §12): for a job id, its owner, its state and the nodes it runs on.
//! RequestSession asks this and nothing else. Today the schedd's own queue
//! answers; a source for jobs another engine runs (Slurm, asked through its
//! CLI or slurmrestd) implements the same trait.

use futures::future::BoxFuture;
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
    /// Sessions into this job are allowed (not submitted with --no-ssh).
    pub ssh_enabled: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot look up jobs: {0}")]
pub struct JobSourceError(pub String);

pub trait JobSource: Send + Sync {
    /// None: no such job (never was, or forgotten).
    fn job(&self, id: u64) -> BoxFuture<'_, Result<Option<JobFacts>, JobSourceError>>;
}

impl JobSource for crate::queue::Queue {
    fn job(&self, id: u64) -> BoxFuture<'_, Result<Option<JobFacts>, JobSourceError>> {
        // One indexed SQLite read, cached statement: cheaper than a hop to
        // a blocking thread.
        let found = self.get(id).map_err(|e| JobSourceError(format!("{e:#}")));
        Box::pin(async move {
            Ok(found?.map(|job| JobFacts {
                id: job.id,
                owner_uid: job.owner_uid,
                owner_name: job.owner_name,
                state: JobState::try_from(job.state).unwrap_or(JobState::Unspecified),
                node: job.node,
                ssh_enabled: job.spec.as_ref().is_some_and(|s| s.ssh_enabled),
            }))
        })
    }
}
