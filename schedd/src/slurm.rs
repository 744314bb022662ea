//! Slurm as the job source (`[schedd] jobs = "slurm"`, DESIGN §12): who
//! owns job J, is it running, on which nodes — asked of Slurm's own stable
//! CLI, `squeue` in a machine-readable format (about 18 ms a call here;
//! slurmrestd's JSON takes about 40 ms, needs a daemon of its own and a
//! token, and says nothing more that issuance needs). Answers are cached
//! for `slurm_cache_secs`, and at most a few squeue run at once, so a burst
//! of requests (Ansible's forks, a user trying ids) costs slurmctld little.
//!
//! The schedd runs as root, so squeue shows every job; the caller's uid
//! (SO_PEERCRED) is compared with the job's owner as Slurm reports it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use stj_cli::expiring::ExpiringMap;
use stj_proto::job_ref::{JobRef, Part};
use stj_proto::user::JobState;
use tokio::sync::Semaphore;

use crate::job_source::{JobFacts, JobSource, JobSourceError};

/// How long one Slurm command may take before it is killed.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// Slurm commands running at once; more wait their turn.
const AT_ONCE: usize = 8;
/// A job's comment with this in it turns sessions into it off, like
/// `stj submit --no-ssh` (`sbatch --comment=stj:no-ssh`).
pub const NO_SSH: &str = "stj:no-ssh";

/// squeue's fields, `|`-separated; the comment (free text) comes last.
const FORMAT: &str = "%A|%i|%U|%u|%T|%r|%B|%N|%C|%j|%k";

/// One job as squeue shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    pub id: u64,
    /// As Slurm displays it: `42`, `42_7`, `42+1`.
    pub display: String,
    pub uid: u32,
    pub user: String,
    /// RUNNING, PENDING, COMPLETED, CANCELLED, ...
    pub state: String,
    pub reason: String,
    pub batch_host: String,
    /// The allocation in Slurm's compressed form (`n[1-3],m4`).
    pub nodelist: String,
    pub cpus: u32,
    pub name: String,
    pub comment: String,
}

impl SlurmJob {
    fn parse(line: &str) -> Option<SlurmJob> {
        let f: Vec<&str> = line.splitn(11, '|').collect();
        if f.len() != 11 {
            return None;
        }
        let none = |s: &str| {
            if s == "(null)" || s == "n/a" {
                String::new()
            } else {
                s.to_string()
            }
        };
        Some(SlurmJob {
            id: f[0].trim().parse().ok()?,
            display: f[1].trim().to_string(),
            uid: f[2].trim().parse().ok()?,
            user: f[3].trim().to_string(),
            state: f[4].trim().to_string(),
            reason: none(f[5].trim()),
            batch_host: none(f[6].trim()),
            nodelist: none(f[7].trim()),
            cpus: f[8].trim().parse().unwrap_or(0),
            name: f[9].to_string(),
            comment: none(f[10].trim_end_matches('\n')),
        })
    }

    /// Slurm's state as ours: running, pending (idle), or ended.
    pub fn job_state(&self) -> JobState {
        match self.state.as_str() {
            "RUNNING" => JobState::Running,
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
            | "RESV_DEL_HOLD" => JobState::Idle,
            "CANCELLED" | "PREEMPTED" | "REVOKED" => JobState::Removed,
            // SUSPENDED, STOPPED, COMPLETING and every way of ending: not
            // somewhere a session can go now.
            _ => JobState::Completed,
        }
    }

    /// Slurm's own words for a job that is not running.
    pub fn detail(&self) -> String {
        match self.reason.as_str() {
            "" | "None" => format!("{} in Slurm", self.state),
            r => format!("{} in Slurm ({r})", self.state),
        }
    }
}

/// Slurm, asked through its CLI.
pub struct SlurmSource {
    bin_dir: PathBuf,
    cache_ms: u64,
    cache: Mutex<ExpiringMap<JobRef, Option<JobFacts>>>,
    running: Semaphore,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SlurmSource {
    pub fn new(bin_dir: PathBuf, cache: Duration) -> SlurmSource {
        SlurmSource {
            bin_dir,
            cache_ms: cache.as_millis() as u64,
            cache: Mutex::new(ExpiringMap::default()),
            running: Semaphore::new(AT_ONCE),
        }
    }

    /// Runs a Slurm command; its stdout, or an error that names the
    /// command, its exit status and its stderr. `Ok(None)`: Slurm says it
    /// knows no such job.
    async fn run(&self, program: &str, args: &[String]) -> Result<Option<String>, JobSourceError> {
        let _turn = self
            .running
            .acquire()
            .await
            .map_err(|_| JobSourceError("shutting down".into()))?;
        let path = self.bin_dir.join(program);
        let shown = format!("{} {}", path.display(), args.join(" "));
        let started = Instant::now();
        let out = tokio::time::timeout(
            COMMAND_DEADLINE,
            tokio::process::Command::new(&path)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| JobSourceError(format!("Slurm did not answer: `{shown}` took more than {COMMAND_DEADLINE:?}")))?
        .map_err(|e| JobSourceError(format!("cannot run `{shown}`: {e} (install Slurm's client commands, or set slurm_bin_dir in [schedd])")))?;
        tracing::debug!(command = %shown, ms = started.elapsed().as_millis() as u64, "asked Slurm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("Invalid job id") {
                return Ok(None);
            }
            return Err(JobSourceError(format!(
                "Slurm is not reachable: `{shown}` failed ({}): {}",
                out.status,
                stderr.trim()
            )));
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Jobs as squeue lists them: these (as users name them), or every job
    /// Slurm still knows; ended ones too with `all_states`.
    pub async fn list(
        &self,
        jobs: &[String],
        all_states: bool,
    ) -> Result<Vec<SlurmJob>, JobSourceError> {
        let mut args = vec![
            "--noheader".to_string(),
            "--array".into(),
            format!("--format={FORMAT}"),
        ];
        if all_states {
            args.push("--states=all".into());
        }
        if !jobs.is_empty() {
            args.push(format!("--jobs={}", jobs.join(",")));
        }
        let Some(out) = self.run("squeue", &args).await? else {
            return Ok(Vec::new());
        };
        Ok(out.lines().filter_map(SlurmJob::parse).collect())
    }

    /// The nodes of a compressed node list (`scontrol show hostnames`).
    async fn hostnames(&self, nodelist: &str) -> Result<Vec<String>, JobSourceError> {
        if !nodelist.contains(['[', ',']) {
            return Ok(vec![nodelist.to_string()]);
        }
        let out = self
            .run(
                "scontrol",
                &["show".into(), "hostnames".into(), nodelist.into()],
            )
            .await?
            .unwrap_or_default();
        Ok(out.lines().map(str::to_string).collect())
    }

    async fn look_up(&self, job: JobRef) -> Result<Option<JobFacts>, JobSourceError> {
        let rows = self.list(&[job.to_string()], true).await?;
        let Some(j) = pick(job, &rows)? else {
            return Ok(None);
        };
        let nodes = match j.nodelist.as_str() {
            "" => Vec::new(),
            list => self.hostnames(list).await?,
        };
        let state = j.job_state();
        Ok(Some(JobFacts {
            id: j.id,
            owner_uid: j.uid,
            owner_name: j.user.clone(),
            state,
            node: if state == JobState::Running {
                j.batch_host.clone()
            } else {
                String::new()
            },
            nodes,
            ssh_enabled: !j.comment.contains(NO_SSH),
            detail: j.detail(),
        }))
    }
}

/// The row a ref names: a plain id names the job with that id (an array's
/// own id, a heterogeneous job's component 0); otherwise, the one row.
fn pick(job: JobRef, rows: &[SlurmJob]) -> Result<Option<&SlurmJob>, JobSourceError> {
    if job.part.is_none() {
        if let Some(j) = rows.iter().find(|j| j.id == job.id) {
            return Ok(Some(j));
        }
    }
    let named: Vec<&SlurmJob> = match job.part {
        Some(Part::ArrayTask(_)) | Some(Part::HetComponent(_)) => rows
            .iter()
            .filter(|j| j.display == job.to_string())
            .collect(),
        None => rows.iter().collect(),
    };
    match named.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(JobSourceError(format!(
            "job {job} is {} jobs in Slurm ({}): name one",
            many.len(),
            many.iter()
                .take(5)
                .map(|j| j.display.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl JobSource for SlurmSource {
    fn job(&self, job: JobRef) -> BoxFuture<'_, Result<Option<JobFacts>, JobSourceError>> {
        Box::pin(async move {
            let now = now_ms();
            if let Some(hit) = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&job, now)
            {
                return Ok(hit.clone());
            }
            let facts = self.look_up(job).await?;
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
                job,
                now + self.cache_ms,
                facts.clone(),
                now,
            );
            Ok(facts)
        })
    }

    fn lists_with(&self) -> &'static str {
        "squeue"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str) -> SlurmJob {
        SlurmJob::parse(s).unwrap()
    }

    #[test]
    fn squeue_lines_and_states() {
        let j = row("17|17|1001|alice|RUNNING|None|n1|n[1-2]|4|sim|stj:no-ssh and more|x");
        assert_eq!(j.id, 17);
        assert_eq!(j.uid, 1001);
        assert_eq!(j.batch_host, "n1");
        assert_eq!(j.nodelist, "n[1-2]");
        assert_eq!(
            j.comment, "stj:no-ssh and more|x",
            "the comment may hold the separator"
        );
        assert_eq!(j.job_state(), JobState::Running);
        let p = row("18|18|1001|alice|PENDING|Priority|(null)|||1|sim|(null)");
        assert_eq!(p.job_state(), JobState::Idle);
        assert_eq!(p.detail(), "PENDING in Slurm (Priority)");
        assert_eq!(p.batch_host, "");
        assert_eq!(
            row("19|19|1|a|CANCELLED|None|n1|n1|1|x|").job_state(),
            JobState::Removed
        );
        assert_eq!(
            row("19|19|1|a|COMPLETING|None|n1|n1|1|x|").job_state(),
            JobState::Completed
        );
        assert!(SlurmJob::parse("garbage").is_none());
        assert!(SlurmJob::parse("x|17|1|a|RUNNING|None|n1|n1|1|x|").is_none());
    }

    #[test]
    fn refs_pick_their_row() {
        let rows = vec![
            row("30|30_0|1|a|RUNNING|None|n1|n1|1|x|"),
            row("31|30_1|1|a|RUNNING|None|n1|n1|1|x|"),
        ];
        assert_eq!(pick("30".parse().unwrap(), &rows).unwrap().unwrap().id, 30);
        assert_eq!(
            pick("30_1".parse().unwrap(), &rows).unwrap().unwrap().id,
            31
        );
        assert!(pick("30_2".parse().unwrap(), &rows).unwrap().is_none());
        // A plain id none of the rows has, among several: ambiguous.
        let het = vec![
            row("40|40+0|1|a|RUNNING|None|n1|n1|1|x|"),
            row("41|40+1|1|a|RUNNING|None|n2|n2|1|x|"),
        ];
        assert_eq!(pick("40+1".parse().unwrap(), &het).unwrap().unwrap().id, 41);
        let e = pick("39".parse().unwrap(), &het).unwrap_err();
        assert!(e.0.contains("name one"), "{e}");
    }
}
