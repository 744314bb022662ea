//! When ssh's connection ends under it (exit 255: "Connection closed by
//! remote host"), what happened to the job, in one line the user can act
//! on: it was removed (and by whom), it ended, it went back to the queue,
//! or its node is away. Asked of the schedd, which knows; nothing is said
//! when it knows of nothing wrong.

use std::path::Path;
use std::time::Duration;

use stj_proto::user::{Job, JobState};

use crate::schedd_client::{connect, query_all};

/// How long the schedd may take to learn of what ended the session (a
/// removed job is marked at once; a starter's death when its link drops).
const SETTLE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);

pub async fn explain(socket: &Path, job_id: u64) -> Option<String> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut c = connect(socket).await.ok()?;
    loop {
        let jobs = query_all(&mut c, vec![job_id], true).await.ok()?;
        if let Some(why) = jobs.iter().find(|j| j.id == job_id).and_then(reason) {
            return Some(why);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why a session into `j` cannot go on, if its record says.
fn reason(j: &Job) -> Option<String> {
    let id = j.id;
    let detail = if j.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", j.reason)
    };
    match JobState::try_from(j.state).unwrap_or(JobState::Unspecified) {
        JobState::Removed => Some(format!("job {id} was removed{detail}")),
        JobState::Completed => Some(match (j.exit_code, j.exit_signal) {
            (Some(code), _) => format!("job {id} ended, exit code {code}{detail}"),
            (None, Some(sig)) => format!("job {id} ended, killed by signal {sig}{detail}"),
            _ => format!("job {id} ended{detail}"),
        }),
        JobState::Idle => Some(format!("job {id} went back to the queue{detail}")),
        JobState::Running if j.node_away => Some(format!(
            "node {} that runs job {id} is no longer connected to the schedd (its starter stopped, or the network to it is cut)",
            j.node
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState) -> Job {
        Job {
            id: 7,
            state: state as i32,
            node: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_end_says_what_happened() {
        let mut j = job(JobState::Removed);
        j.reason = "removed by uid 1001".into();
        assert_eq!(
            reason(&j).unwrap(),
            "job 7 was removed (removed by uid 1001)"
        );
        let mut j = job(JobState::Completed);
        j.exit_code = Some(3);
        assert_eq!(reason(&j).unwrap(), "job 7 ended, exit code 3");
        let mut j = job(JobState::Running);
        assert_eq!(
            reason(&j),
            None,
            "a running job with its node here: nothing to say"
        );
        j.node_away = true;
        assert!(reason(&j).unwrap().contains("node n1"));
    }
}
