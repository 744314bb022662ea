//! `stj submit --interactive` on a pool whose jobs are Slurm's:
//! `condor_submit -interactive` for Slurm. A placeholder job goes in with
//! `sbatch` (as the user: Slurm authenticates them, not us), its state and
//! Slurm's reason show while it is pending, the session opens as soon as it
//! runs, and the job is cancelled (`scancel`) when the session ends — or on
//! Ctrl-C while it waits. The placeholder (`stj-starter placeholder
//! --in-cgroup`, on the node) also ends by itself once its session has
//! gone, or after the idle timeout without one, should this client die.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use stj_proto::job_ref::JobRef;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

use crate::session::{self, Options};

/// What `stj submit --interactive` asks for, as Slurm takes it.
pub struct Request {
    /// The stj-starter binary on the nodes (the schedd's slurm_placeholder).
    pub placeholder: String,
    pub idle_timeout: Duration,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub millicpus: u32,
    pub memory_bytes: u64,
}

/// A word for sh, single-quoted.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Request {
    /// sbatch's arguments.
    fn sbatch_args(&self) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            "--job-name=stj-interactive".into(),
            "--output=/dev/null".into(),
            "--error=/dev/null".into(),
            format!("--chdir={}", self.cwd),
        ];
        if self.millicpus > 0 {
            a.push(format!("--cpus-per-task={}", self.millicpus.div_ceil(1000)));
        }
        if self.memory_bytes > 0 {
            a.push(format!("--mem={}M", self.memory_bytes.div_ceil(1 << 20)));
        }
        a.push(format!(
            "--wrap=exec {} placeholder --in-cgroup --idle-timeout-secs {}",
            quoted(&self.placeholder),
            self.idle_timeout.as_secs().max(1)
        ));
        a
    }
}

/// Variables through which a user's environment would change what these
/// commands do (SBATCH_ARRAY_INX makes an array of the placeholder,
/// SLURM_CLUSTERS sends scancel to another cluster's job of that number).
fn steers(name: &str) -> bool {
    ["SBATCH_", "SQUEUE_", "SCANCEL_", "SALLOC_"]
        .iter()
        .any(|p| name.starts_with(p))
        || name == "SLURM_CLUSTERS"
}

async fn slurm(program: &str, args: &[String], env: &[(String, String)]) -> Result<String> {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if steers(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {program} (are Slurm's commands installed here?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Slurm's state and reason for the job; None once Slurm forgot it.
async fn state(id: u64) -> Result<Option<(String, String)>> {
    let out = slurm(
        "squeue",
        &[
            "--noheader".into(),
            format!("--jobs={id}"),
            "--states=all".into(),
            "--format=%T|%r".into(),
        ],
        &[],
    )
    .await?;
    Ok(out.lines().next().map(|l| {
        let (s, r) = l.split_once('|').unwrap_or((l, ""));
        (s.trim().to_string(), r.trim().to_string())
    }))
}

async fn cancel(id: u64) {
    match slurm("scancel", &[id.to_string()], &[]).await {
        Ok(_) => eprintln!("stj: job {id} cancelled"),
        Err(e) => eprintln!("stj: could not cancel job {id}: {e:#}"),
    }
}

/// Submits the placeholder, waits for it, runs the session, cancels it.
pub async fn run(req: Request, socket: PathBuf) -> Result<ExitCode> {
    let out = slurm("sbatch", &req.sbatch_args(), &req.env).await?;
    let id: u64 = out
        .trim()
        .split(';')
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("sbatch printed {:?}, not a job id", out.trim()))?;
    eprintln!("stj: interactive job {id} submitted to Slurm; Ctrl-C while it waits cancels it");
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let waited = tokio::select! {
        r = until_running(id) => r,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = hup.recv() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = waited {
        eprintln!("stj: {e:#} while waiting for job {id}");
        cancel(id).await;
        return Ok(ExitCode::from(130));
    }
    let o = Options {
        // The job runs; its node's starter may not see it for a moment.
        retries: 20,
        ..Options::ssh(JobRef::plain(id), socket)
    };
    let result = session::run(&o).await;
    cancel(id).await;
    match result {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("stj: error: {e:#}");
            Ok(ExitCode::from(255))
        }
    }
}

/// Polls Slurm until the job runs, showing its state and reason.
async fn until_running(id: u64) -> Result<()> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut last = String::new();
    let result = loop {
        match state(id).await? {
            Some((s, _)) if s == "RUNNING" => break Ok(()),
            Some((s, r)) if s == "PENDING" || s == "CONFIGURING" => {
                let line = format!("job {id} {} in Slurm ({r})", s.to_lowercase());
                if line != last {
                    match &bar {
                        Some(b) => b.set_message(line.clone()),
                        None => eprintln!("stj: {line}"),
                    }
                    last = line;
                }
            }
            Some((s, r)) => {
                break Err(anyhow::anyhow!(
                    "job {id} is {s} in Slurm ({r}), not running"
                ))
            }
            None => break Err(anyhow::anyhow!("Slurm no longer knows job {id}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_gets_the_limits_and_a_quoted_placeholder() {
        let r = Request {
            placeholder: "/opt/stj it's/stj-starter".into(),
            idle_timeout: Duration::from_secs(600),
            cwd: "/work".into(),
            env: vec![],
            millicpus: 1500,
            memory_bytes: (64 << 20) + 1,
        };
        let a = r.sbatch_args();
        assert!(a.contains(&"--cpus-per-task=2".to_string()), "{a:?}");
        assert!(a.contains(&"--mem=65M".to_string()), "{a:?}");
        assert!(a.contains(&"--chdir=/work".to_string()), "{a:?}");
        assert_eq!(
            a.last().unwrap(),
            r"--wrap=exec '/opt/stj it'\''s/stj-starter' placeholder --in-cgroup --idle-timeout-secs 600"
        );
    }
}
