//! Waiting for a job to run, with the progress people expect: a spinner
//! with the job's state and queue position on a terminal, plain lines
//! otherwise. It waits on the schedd's own notifications (the Wait call
//! returns the moment the state changes), not on a polling timer.

use std::io::IsTerminal;
use std::path::Path;

use std::time::Duration;
use stj_proto::job_ref::JobRef;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use stj_proto::user::{Job, JobState, WaitRequest};

use crate::schedd_client::{connect, status_error};

/// How often the queue position is refreshed while nothing changes.
const REFRESH: u32 = 2;

fn state(j: &Job) -> JobState {
    JobState::try_from(j.state).unwrap_or(JobState::Unspecified)
}

/// "idle, 3rd in the queue" style status of `id` among all jobs.
fn describe(id: u64, jobs: &[Job]) -> String {
    let Some(me) = jobs.iter().find(|j| j.id == id) else {
        return "unknown".into();
    };
    match state(me) {
        JobState::Idle => {
            let ahead = jobs
                .iter()
                .filter(|j| state(j) == JobState::Idle && j.id < id)
                .count();
            let why = if me.reason.is_empty() {
                String::new()
            } else {
                format!("; {}", me.reason)
            };
            format!("idle, position {} in the queue{why}", ahead + 1)
        }
        s => s.label().to_string(),
    }
}

/// Returns once job `id` runs; fails if it ends first.
pub async fn until_running(socket: &Path, job: JobRef) -> Result<()> {
    // A Slurm array task or component has an id of its own that only the
    // schedd resolves: its requests are retried until it runs instead.
    if job.part.is_some() {
        return Ok(());
    }
    let id = job.id;
    let mut c = connect(socket).await?;
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
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
        // The live queue (for the position), and the job itself if it ended.
        let mut jobs = crate::schedd_client::query_all(&mut c, vec![], false).await?;
        if !jobs.iter().any(|j| j.id == id) {
            jobs.extend(crate::schedd_client::query_all(&mut c, vec![id], true).await?);
        }
        let Some(me) = jobs.iter().find(|j| j.id == id) else {
            break Err(anyhow::anyhow!(
                "there is no job {id} (stj q lists the queue)"
            ));
        };
        let st = state(me);
        if st == JobState::Running {
            break Ok(());
        }
        if st.is_terminal() {
            break Err(anyhow::anyhow!(
                "job {id} ended ({}) before it ran: {}",
                st.label(),
                me.reason
            ));
        }
        let text = format!("waiting for job {id}: {}", describe(id, &jobs));
        match &bar {
            Some(b) => b.set_message(text.clone()),
            None if text != last => eprintln!("ssh-to-job: {text}"),
            None => {}
        }
        last = text;
        let w = c
            .wait(WaitRequest {
                job_id: id,
                state: JobState::Running as i32,
                timeout_secs: REFRESH,
            })
            .await;
        if let Err(s) = w {
            break Err(status_error(s));
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}
