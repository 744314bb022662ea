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

/// squeue's fields, `|`-separated: only what Slurm itself writes (ids,
/// uid, account name, state, reason code, node names). A job's name and
/// comment are the user's free text — a newline there would make a row of
/// the user's own making — so they are asked for apart (`names`,
/// `no_ssh`), where nothing depends on how they split into lines.
const FORMAT: &str = "%A|%i|%U|%u|%T|%r|%B|%N|%C";
/// How long a caller waits for one of the AT_ONCE turns before being told
/// Slurm is busy (a user flooding the schedd starves nobody for long).
const TURN_WAIT: Duration = Duration::from_secs(10);

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
    /// The job's name (`stj q`), when squeue's answer about names could be
    /// matched to the jobs line by line; else empty.
    pub name: String,
}

impl SlurmJob {
    fn parse(line: &str) -> Option<SlurmJob> {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        if f.len() != 9 {
            return None;
        }
        let none = |s: &str| match s {
            "(null)" | "n/a" => String::new(),
            s => s.to_string(),
        };
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        let job = SlurmJob {
            id: f[0].parse().ok()?,
            display: f[1].to_string(),
            uid: f[2].parse().ok()?,
            user: f[3].to_string(),
            state: f[4].to_string(),
            reason: none(f[5]),
            batch_host: none(f[6]),
            nodelist: none(f[7]),
            cpus: f[8].parse().unwrap_or(0),
            name: String::new(),
        };
        // Nothing here is free text; anything that looks like it is not a
        // row of squeue's.
        let host_ok = job.batch_host.is_empty() || stj_proto::valid_node_name(&job.batch_host);
        (plain(&job.display) && plain(&job.user) && plain(&job.state) && host_ok).then_some(job)
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
        let _turn = tokio::time::timeout(TURN_WAIT, self.running.acquire())
            .await
            .map_err(|_| JobSourceError(format!("Slurm is busy: {AT_ONCE} questions to it are waiting for answers; retry shortly")))?
            .map_err(|_| JobSourceError("shutting down".into()))?;
        let path = self.bin_dir.join(program);
        let shown = format!("{} {}", path.display(), args.join(" "));
        let started = Instant::now();
        let out = tokio::time::timeout(
            COMMAND_DEADLINE,
            tokio::process::Command::new(&path)
                .args(args)
                // What a caller's environment would make squeue show
                // instead of what is asked (SQUEUE_FORMAT, SQUEUE_STATES...).
                .env_clear()
                .envs(std::env::vars_os().filter(|(k, _)| !k.to_string_lossy().starts_with("SQUEUE_")))
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

    fn squeue_args(
        format: &str,
        jobs: &[String],
        user: Option<&str>,
        all_states: bool,
    ) -> Vec<String> {
        let mut args = vec![
            "--noheader".to_string(),
            "--array".into(),
            format!("--format={format}"),
        ];
        if all_states {
            args.push("--states=all".into());
        }
        if !jobs.is_empty() {
            args.push(format!("--jobs={}", jobs.join(",")));
        }
        if let Some(u) = user {
            args.push(format!("--user={u}"));
        }
        args
    }

    /// Jobs as squeue lists them: these (as users name them), or every job
    /// Slurm still knows (of `user` only, when given); ended ones too with
    /// `all_states`.
    pub async fn list(
        &self,
        jobs: &[String],
        user: Option<&str>,
        all_states: bool,
    ) -> Result<Vec<SlurmJob>, JobSourceError> {
        let args = Self::squeue_args(FORMAT, jobs, user, all_states);
        let Some(out) = self.run("squeue", &args).await? else {
            return Ok(Vec::new());
        };
        Ok(out.lines().filter_map(SlurmJob::parse).collect())
    }

    /// `list`, with each job's name where squeue's answer about names lines
    /// up with the jobs exactly (a name with a newline in it makes it not,
    /// and then no name is shown rather than one a user could forge).
    pub async fn list_named(
        &self,
        jobs: &[String],
        user: Option<&str>,
        all_states: bool,
    ) -> Result<Vec<SlurmJob>, JobSourceError> {
        let mut listed = self.list(jobs, user, all_states).await?;
        let args = Self::squeue_args("%A|%j", jobs, user, all_states);
        let names = self.run("squeue", &args).await?.unwrap_or_default();
        let lines: Vec<&str> = names.lines().collect();
        let lined_up = lines.len() == listed.len()
            && lines.iter().zip(&listed).all(|(l, j)| {
                l.split_once('|')
                    .is_some_and(|(id, _)| id.trim() == j.id.to_string())
            });
        if lined_up {
            for (l, j) in lines.iter().zip(listed.iter_mut()) {
                j.name = l
                    .split_once('|')
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_default();
            }
        }
        Ok(listed)
    }

    /// Whether job `id`'s comment turns sessions off (`NO_SSH`). The
    /// comment is the user's free text: the answer is searched whole, so
    /// a newline in it can only turn sessions off, never on.
    async fn no_ssh(&self, id: u64) -> Result<bool, JobSourceError> {
        let args = Self::squeue_args("%k", &[id.to_string()], None, true);
        Ok(self
            .run("squeue", &args)
            .await?
            .is_some_and(|out| out.contains(NO_SSH)))
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
        let rows = self.list(&[job.to_string()], None, true).await?;
        let Some(j) = pick(job, &rows)? else {
            return Ok(None);
        };
        let (nodes, no_ssh) = tokio::join!(
            async {
                match j.nodelist.as_str() {
                    "" => Ok(Vec::new()),
                    list => self.hostnames(list).await,
                }
            },
            self.no_ssh(j.id)
        );
        let nodes: Vec<String> = nodes?
            .into_iter()
            .filter(|n| stj_proto::valid_node_name(n))
            .collect();
        let no_ssh = no_ssh?;
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
            ssh_enabled: !no_ssh,
            detail: j.detail(),
        }))
    }
}

/// The row a ref names, and only that: a plain id the job with that id
/// (an array's own id is its first task's, a heterogeneous job's its
/// component 0's); `42_7` and `42+1` the row Slurm displays so. Two rows
/// for one name is an answer nobody should act on.
fn pick(job: JobRef, rows: &[SlurmJob]) -> Result<Option<&SlurmJob>, JobSourceError> {
    let named: Vec<&SlurmJob> = match job.part {
        None => rows.iter().filter(|j| j.id == job.id).collect(),
        Some(Part::ArrayTask(_)) | Some(Part::HetComponent(_)) => rows
            .iter()
            .filter(|j| j.display == job.to_string())
            .collect(),
    };
    match named.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(JobSourceError(format!(
            "Slurm's answer names job {job} {} times; not acting on it",
            many.len()
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

    fn names_owners(&self) -> bool {
        false
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
        let j = row("17|17|1001|alice|RUNNING|None|n1|n[1-2]|4");
        assert_eq!(j.id, 17);
        assert_eq!(j.uid, 1001);
        assert_eq!(j.batch_host, "n1");
        assert_eq!(j.nodelist, "n[1-2]");
        assert_eq!(j.job_state(), JobState::Running);
        let p = row("18|18|1001|alice|PENDING|Priority|(null)||1");
        assert_eq!(p.job_state(), JobState::Idle);
        assert_eq!(p.detail(), "PENDING in Slurm (Priority)");
        assert_eq!(p.batch_host, "");
        assert_eq!(
            row("19|19|1|a|CANCELLED|None|n1|n1|1").job_state(),
            JobState::Removed
        );
        assert_eq!(
            row("19|19|1|a|COMPLETING|None|n1|n1|1").job_state(),
            JobState::Completed
        );
        for bad in [
            "garbage",
            "x|17|1|a|RUNNING|None|n1|n1|1",
            "17|17|1|a|RUNNING|None|n1|n1|1|extra",
            "17|17|1|a b|RUNNING|None|n1|n1|1",
            "17|17|1|a|RUNNING|None|../n1|n1|1",
        ] {
            assert!(SlurmJob::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn refs_pick_their_row_and_nothing_else() {
        let rows = vec![
            row("30|30_0|1|a|RUNNING|None|n1|n1|1"),
            row("31|30_1|1|a|RUNNING|None|n1|n1|1"),
        ];
        assert_eq!(pick("30".parse().unwrap(), &rows).unwrap().unwrap().id, 30);
        assert_eq!(
            pick("30_1".parse().unwrap(), &rows).unwrap().unwrap().id,
            31
        );
        assert!(pick("30_2".parse().unwrap(), &rows).unwrap().is_none());
        let het = vec![
            row("40|40+0|1|a|RUNNING|None|n1|n1|1"),
            row("41|40+1|1|a|RUNNING|None|n2|n2|1"),
        ];
        assert_eq!(pick("40+1".parse().unwrap(), &het).unwrap().unwrap().id, 41);
        // A lone row for another job is not this job's (a row a user made
        // with a newline in a name would be such a row).
        let other = vec![row("600|600|1001|alice|RUNNING|None|nodeV|nodeV|1")];
        assert!(pick("500".parse().unwrap(), &other).unwrap().is_none());
        let twice = vec![
            row("500|500|1001|alice|RUNNING|None|n1|n1|1"),
            row("500|500|1002|bob|RUNNING|None|n2|n2|1"),
        ];
        assert!(pick("500".parse().unwrap(), &twice).is_err());
    }
}
