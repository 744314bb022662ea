//! The job of `stj submit --interactive`: it only waits. It ends once a
//! session has come and gone (and nothing else is attached), or after the
//! idle timeout without any session. In our containers it runs in the job's
//! PID namespace, where every process other than itself and the init
//! belongs to a session; in a Slurm job (`--in-cgroup`) it is the batch
//! step's program, and every other process in the step's cgroup is a
//! session's (sessions join the cgroup of the process they land beside).

use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);

/// Other processes in this process's cgroup (and below it): v2's, else
/// the v1 hierarchy whose path names a Slurm job.
fn others_in_cgroup() -> usize {
    let me = std::process::id() as i32;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = crate::cgroup::mounts(&info);
    let dir = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        if !path.contains("/job_") {
            return None;
        }
        let m = mounts.iter().find(|m| match &m.v1 {
            None => ctrls.is_empty(),
            Some(have) => {
                !ctrls.is_empty() && ctrls.split(',').all(|c| have.iter().any(|h| h == c))
            }
        })?;
        Some(m.point.join(path.trim_start_matches('/')))
    });
    dir.map(|d| {
        crate::cgroup::procs_under(&d)
            .into_iter()
            .filter(|&p| p != me)
            .count()
    })
    .unwrap_or(0)
}

fn others() -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me && pid != 1)
        .count()
}

pub fn main(idle_timeout: Duration, in_cgroup: bool) -> ! {
    let mut seen = false;
    let mut idle_since = Instant::now();
    let count = if in_cgroup { others_in_cgroup } else { others };
    loop {
        if count() > 0 {
            seen = true;
            idle_since = Instant::now();
        } else if seen {
            println!("the session ended; the interactive job ends with it");
            std::process::exit(0);
        } else if idle_since.elapsed() >= idle_timeout {
            println!(
                "no session for {} s; the interactive job ends",
                idle_timeout.as_secs()
            );
            std::process::exit(0);
        }
        std::thread::sleep(TICK);
    }
}
