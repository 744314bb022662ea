//! Jobs that Slurm runs on this node (`[starter] jobs = "slurm"`, DESIGN
//! §12): the starter starts none, and finds job J for a session in Slurm's
//! cgroup tree, whose paths the job's user cannot change:
//! - cgroup v1: `<hierarchy>/slurm_<node>/uid_<uid>/job_<J>/step_<step>/…`
//!   (or `slurm/` without the node's name), in each hierarchy Slurm uses
//!   (freezer with proctrack/cgroup; memory, cpuset, devices with
//!   task/cgroup);
//! - cgroup v2: `<mount>/system.slice/slurmstepd.scope/job_<J>/step_<step>/…`,
//!   where the uid is that of the step's processes (set by slurmstepd; a
//!   process cannot change its real uid without privilege).
//!
//! `scontrol listpids` misses what a container runtime put in a child
//! cgroup of the step, and any user may call it: the tree is read instead.
//! A session's job must run here, as the capability's owner (the handshake
//! compares). The step is the batch step unless the client named another.
//! The job is alive while its slurmstepd is: Slurm may leave a container's
//! processes behind when it ends a job, and sessions end with the job, not
//! with those processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stj_proto::handshake::Step;

use crate::cgroup::{procs_under, Mount};
use crate::container::{ContainerSpec, Init};
use crate::job_locator::{JobLocator, JobTarget, Located, Members, OuterView};
use crate::session::innermost::{real_uid, start_of};

/// One job's directories in Slurm's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDirs {
    pub uid: Option<u32>,
    /// `job_<J>` in every hierarchy that has it.
    pub dirs: Vec<PathBuf>,
    /// The one whose processes are read (freezer, where proctrack/cgroup
    /// tracks every process; the v2 tree; else the first).
    pub track: PathBuf,
}

/// Where Slurm's tree was looked for, for the message when it is not there.
fn looked_for(mounts: &[Mount], node: &str, job: u64) -> String {
    let mut v: Vec<String> = Vec::new();
    for m in mounts {
        match &m.v1 {
            Some(_) => v.push(format!(
                "{}/slurm_{node}/uid_*/job_{job}",
                m.point.display()
            )),
            None => v.push(format!(
                "{}/system.slice/slurmstepd.scope/job_{job}",
                m.point.display()
            )),
        }
    }
    v.join(", ")
}

/// A directory only root can have made and changed: slurmd's own levels
/// of the tree (a step's directory may be the job's user's, to delegate).
fn roots(d: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
}

/// Job `job`'s directories on this node, if Slurm runs it here; None also
/// when the tree disagrees with itself (two owners, a directory on the
/// way that is not root's), which nothing is entered on.
pub fn find(mounts: &[Mount], node: &str, job: u64) -> Option<JobDirs> {
    let name = format!("job_{job}");
    let mut dirs = Vec::new();
    let mut uids = Vec::new();
    let mut v1_track = None;
    let mut v2_track = None;
    for m in mounts {
        match &m.v1 {
            Some(ctrls) => {
                for top in [format!("slurm_{node}"), "slurm".to_string()] {
                    let base = m.point.join(&top);
                    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let Some(u) = n.strip_prefix("uid_").and_then(|u| u.parse::<u32>().ok())
                        else {
                            continue;
                        };
                        let d = e.path().join(&name);
                        if !d.is_dir() {
                            continue;
                        }
                        if !(roots(&base) && roots(&e.path()) && roots(&d)) {
                            return None;
                        }
                        uids.push(u);
                        if ctrls.iter().any(|c| c == "freezer") || v1_track.is_none() {
                            v1_track = Some(d.clone());
                        }
                        dirs.push(d);
                    }
                }
            }
            None => {
                let d = m.point.join("system.slice/slurmstepd.scope").join(&name);
                if d.is_dir() && roots(&d) {
                    v2_track = Some(d.clone());
                    dirs.push(d);
                }
            }
        }
    }
    uids.sort_unstable();
    uids.dedup();
    if uids.len() > 1 {
        tracing::warn!(
            job,
            ?uids,
            "Slurm's cgroup tree names several owners for one job; not entering it"
        );
        return None;
    }
    Some(JobDirs {
        uid: uids.first().copied(),
        dirs,
        // v1's freezer when Slurm tracks with it; v2's only without v1.
        track: v1_track.or(v2_track)?,
    })
}

/// The steps a job has here (`batch`, `extern`, `0`, ...).
pub fn steps(track: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(track)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("step_")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// The step a session goes into: the one named, else the batch step, else
/// the first numbered one (an allocation without a batch script).
fn choose(have: &[String], want: Option<Step>) -> Option<String> {
    match want {
        Some(s) => have.iter().find(|h| **h == s.to_string()).cloned(),
        None => have
            .iter()
            .find(|h| *h == "batch")
            .or_else(|| {
                have.iter()
                    .filter(|h| h.parse::<u32>().is_ok())
                    .min_by_key(|h| h.parse::<u32>().unwrap_or(u32::MAX))
            })
            .cloned(),
    }
}

/// Whether the job's slurmstepd still runs: the job lives while it does.
/// Looked for only where only root can put a process — v1's job level
/// (`job_<id>/cgroup.procs`, where slurmd starts it), v2's `step_*/slurm`
/// — and only a process that is root's through and through and runs a
/// program named slurmstepd: a process of the job's own, whatever it
/// calls itself, keeps no session alive.
pub fn stepd_alive(track: &Path) -> bool {
    let mut levels = vec![track.to_path_buf()];
    for e in std::fs::read_dir(track).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("step_") {
            levels.push(e.path().join("slurm"));
        }
    }
    levels.iter().filter(|d| roots(d)).any(|d| {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .any(is_slurmstepd)
    })
}

fn is_slurmstepd(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let all_root = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .is_some_and(|v| v.split_whitespace().all(|u| u == "0"))
    };
    all_root("Uid:")
        && all_root("Gid:")
        && std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| e.file_name().is_some_and(|n| n == "slurmstepd"))
}

struct Known {
    host_seed: Option<[u8; 32]>,
    /// The job's cgroup (device, inode): a job of the same id later (Slurm
    /// restarted its numbering) is another job, with a key of its own.
    run: (u64, u64),
}

/// The locator for Slurm's jobs on this node.
pub struct SlurmJobs {
    node: String,
    work_dir: PathBuf,
    mounts: Vec<Mount>,
    /// Per job seen here: its host key seed (for `--job-key` clients).
    known: Mutex<HashMap<u64, Known>>,
}

impl SlurmJobs {
    pub fn new(node: String, work_dir: PathBuf) -> anyhow::Result<Arc<SlurmJobs>> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mounts = crate::cgroup::mounts(&info);
        anyhow::ensure!(
            !mounts.is_empty(),
            "no cgroup filesystem is mounted, so Slurm's jobs cannot be found (Slurm needs proctrack/cgroup; mount cgroupfs)"
        );
        Ok(Arc::new(SlurmJobs {
            node,
            work_dir,
            mounts,
            known: Mutex::new(HashMap::new()),
        }))
    }

    fn seed(&self, job: u64, track: &Path) -> Option<[u8; 32]> {
        use std::os::unix::fs::MetadataExt;
        let run = std::fs::metadata(track).map(|m| (m.dev(), m.ino())).ok()?;
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        // A bounded table, whatever runs: the lower half of the ids goes
        // (those jobs get new keys if they are asked for again).
        if k.len() >= 1024 {
            let mut ids: Vec<u64> = k.keys().copied().collect();
            ids.sort_unstable();
            for id in &ids[..ids.len() / 2] {
                k.remove(id);
            }
        }
        let fresh = || Known {
            host_seed: crate::jobs::host_seed(),
            run,
        };
        let e = k.entry(job).or_insert_with(fresh);
        if e.run != run {
            *e = fresh();
        }
        e.host_seed
    }

    /// The job's outer process: the step's oldest process of its owner.
    fn outer(pids: &[i32]) -> Option<Init> {
        let (pid, start) = pids
            .iter()
            .filter_map(|&p| start_of(p).map(|s| (p, s)))
            .min_by_key(|&(_, s)| s)?;
        let pidfd = crate::container::pidfd_open(pid).ok()?;
        // The pidfd is of the process chosen, not of one that took its pid.
        (start_of(pid) == Some(start)).then_some(Init { pidfd, pid })
    }
}

impl JobLocator for SlurmJobs {
    fn locate(&self, job: u64, step: Option<Step>) -> Located {
        let Some(dirs) = find(&self.mounts, &self.node, job) else {
            if self.mounts.iter().all(|m| !m.point.exists()) {
                return Located::Unrecognised(format!(
                    "the cgroup layout is not one Slurm makes (looked for {})",
                    looked_for(&self.mounts, &self.node, job)
                ));
            }
            return Located::NotHere;
        };
        let have = steps(&dirs.track);
        let Some(chosen) = choose(&have, step) else {
            return match step {
                Some(s) => Located::NoSuchStep(s, have),
                // The job's cgroup is here, its steps not yet.
                None => Located::Starting,
            };
        };
        let step_dir = dirs.track.join(format!("step_{chosen}"));
        let all = procs_under(&step_dir);
        // v1 says whose job it is in its path; v2 by its processes' uid,
        // which must be one (slurmstepd starts the job's tasks as its owner).
        let uid = match dirs.uid {
            Some(u) => u,
            None => {
                let mut uids: Vec<u32> = all
                    .iter()
                    .filter_map(|&p| real_uid(p))
                    .filter(|&u| u != 0)
                    .collect();
                uids.sort_unstable();
                uids.dedup();
                match uids.as_slice() {
                    [u] => *u,
                    [] => return Located::Starting,
                    _ => {
                        return Located::Unrecognised(format!(
                            "the step's processes belong to several users ({uids:?}); whose job it is cannot be told"
                        ))
                    }
                }
            }
        };
        let pids: Vec<i32> = all
            .into_iter()
            .filter(|&p| real_uid(p) == Some(uid))
            .collect();
        let Some(init) = Self::outer(&pids) else {
            return Located::Starting;
        };
        if uid == 0 {
            return Located::NotHere;
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", init.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        };
        let gid = field("Gid:").and_then(|g| g.parse().ok()).unwrap_or(uid);
        let umask = field("Umask:")
            .and_then(|m| u32::from_str_radix(&m, 8).ok())
            .unwrap_or(0o022);
        let user_name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid{uid}"));
        let sessions = self
            .work_dir
            .join("jobs")
            .join(format!("slurm-{job}"))
            .join("sessions");
        if let Err(e) = crate::jobs::make_traversable(&self.work_dir, &sessions) {
            return Located::Unrecognised(format!("cannot prepare {}: {e}", sessions.display()));
        }
        // The status was read by pid: still that process's only if alive.
        if !init.alive() {
            return Located::Starting;
        }
        let spec = ContainerSpec {
            job_id: job,
            uid,
            gid,
            user_name,
            args: vec![],
            env: vec![],
            cwd: "/".into(),
            image: None,
            stdout: String::new(),
            stderr: String::new(),
            kit: None,
            sessions,
            umask,
            confined: false,
            writable_workdir: None,
            cgroups: vec![],
        };
        Located::Here(JobTarget {
            init: Arc::new(init),
            spec: Arc::new(spec),
            owner_uid: uid,
            host_seed: self.seed(job, &dirs.track),
            cgroups: dirs.dirs.clone(),
            members: Members::InCgroup { dir: step_dir, uid },
            outer_view: OuterView::Process,
            ends_with: Some(dirs.track),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_named_else_batch_else_the_first_numbered() {
        let have: Vec<String> = ["0", "2", "batch", "extern"].map(String::from).to_vec();
        assert_eq!(choose(&have, None).as_deref(), Some("batch"));
        assert_eq!(choose(&have, Some(Step::Extern)).as_deref(), Some("extern"));
        assert_eq!(choose(&have, Some(Step::Id(2))).as_deref(), Some("2"));
        assert_eq!(choose(&have, Some(Step::Id(1))), None);
        let no_batch: Vec<String> = ["extern", "10", "3"].map(String::from).to_vec();
        assert_eq!(choose(&no_batch, None).as_deref(), Some("3"));
        assert_eq!(choose(&["extern".to_string()], None), None);
    }

    /// Slurm's v1 tree as slurmd makes it, in a temp dir: the uid comes
    /// from the path, every hierarchy's job dir is found, freezer tracks.
    #[test]
    fn a_v1_tree_names_the_job_and_its_owner() {
        let t = tempfile::tempdir().unwrap();
        let mk = |p: &str| std::fs::create_dir_all(t.path().join(p)).unwrap();
        mk("memory/slurm_n1/uid_1001/job_7/step_batch");
        mk("freezer/slurm_n1/uid_1001/job_7/step_batch/task_0");
        mk("freezer/slurm_n1/uid_1001/job_7/step_extern");
        mk("freezer/slurm_n1/uid_1002/job_8/step_batch");
        let m = |n: &str| Mount {
            point: t.path().join(n),
            v1: Some(vec![n.to_string()]),
        };
        let mounts = [m("memory"), m("freezer")];
        let d = find(&mounts, "n1", 7).unwrap();
        assert_eq!(d.uid, Some(1001));
        assert_eq!(d.dirs.len(), 2);
        assert!(d.track.starts_with(t.path().join("freezer")));
        assert_eq!(steps(&d.track), vec!["batch", "extern"]);
        assert!(find(&mounts, "n1", 9).is_none());
        assert!(find(&mounts, "n2", 7).is_none(), "another node's tree");
        assert!(looked_for(&mounts, "n1", 9).contains("slurm_n1/uid_*/job_9"));
    }

    #[test]
    fn a_v2_tree_is_found_under_slurmstepd_scope() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(
            t.path()
                .join("system.slice/slurmstepd.scope/job_5/step_batch/user/task_0"),
        )
        .unwrap();
        let mounts = [Mount {
            point: t.path().to_path_buf(),
            v1: None,
        }];
        let d = find(&mounts, "n1", 5).unwrap();
        assert_eq!(d.uid, None, "v2 paths carry no uid");
        assert_eq!(steps(&d.track), vec!["batch"]);
    }
}
