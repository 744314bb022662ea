//! A cgroup per job: the job, everything it starts and every session into
//! it live in one cgroup, so `--cpus`/`--memory` limit them together, the
//! kernel accounts them together, and removing the job kills all of it.
//!
//! Layouts (read from /proc/self/mountinfo at start-up):
//! - **v2** (unified, with controllers): one directory per job,
//!   `<mount>/<parent>/stj-job-<id>`, with `memory.max`, `memory.swap.max`,
//!   `cpu.max`, `cgroup.kill`; the controllers are switched on in every
//!   `cgroup.subtree_control` from the mount down to the parent.
//! - **v1** (legacy, and the hybrid systemd used to make): a directory per
//!   job in each of the memory, cpu and pids hierarchies, with
//!   `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (swap included,
//!   when the kernel accounts it), `cpu.cfs_quota_us`; plus the job's
//!   directory in a controller-less cgroup2 mount when there is one (the
//!   hybrid's `/sys/fs/cgroup/unified`), for its `cgroup.kill`.
//!
//! `<parent>` is `cgroup_parent` (default `stj_<node name>`, like Slurm's
//! `slurm_<node name>`): one starter per parent, since a starter removes
//! what it finds there at start-up (the jobs of a starter that died).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the memory or cpu controller is mounted (looked in /proc/self/mountinfo for cgroup2 with controllers, or cgroup v1 memory/cpu); mount cgroupfs on the node")]
    NoHierarchy,
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup_parent {0:?} must be a relative path of names made of letters, digits, '.', '_' and '-' (e.g. stj_node1)")]
    BadParent(String),
    #[error("this node cannot enforce --{0}: its cgroups have no {0} controller (the starter's log says which hierarchies it found)")]
    NoController(&'static str),
    #[error("this node swaps but does not account swap per cgroup (no memory.swap.max or memory.memsw.limit_in_bytes), so a --memory job could go past its limit into swap; boot the node with swapaccount=1 (or turn swap off) to run jobs with --memory")]
    SwapNotAccounted,
    #[error("another stj-starter on this machine uses the cgroup parent {0} (a starter removes the job cgroups it finds there, so it would kill that one's jobs); give each starter a cgroup_parent of its own in its [starter] config (or --cgroup-parent)")]
    InUse(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// What a job asked for; 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub millicpus: u32,
    pub memory_bytes: u64,
    /// Processes and threads at once (the node's `job_pids_max`).
    pub pids: u32,
}

/// Job cgroups are `stj-job-<id>`: a parent pointed by mistake at another
/// engine's tree (Slurm's are `job_<id>`) has nothing of it swept.
pub const JOB_PREFIX: &str = "stj-job-";

/// The CFS period both layouts use; quota = millicpus × 100 µs.
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup filesystem mounted on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    /// None for cgroup2; the v1 controllers (and `name=`) otherwise.
    pub v1: Option<Vec<String>>,
}

/// The cgroup mounts in a /proc/self/mountinfo text.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = left.split(' ');
        // A mount of a hierarchy's subtree (a container's view) is not its
        // root: cgroup paths would not be relative to it.
        if fields.nth(3) != Some("/") {
            continue;
        }
        let Some(point) = fields.next() else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let point = PathBuf::from(unescape(point));
        match fstype {
            Some("cgroup2") => out.push(Mount { point, v1: None }),
            Some("cgroup") => out.push(Mount {
                point,
                v1: Some(
                    opts.split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_string)
                        .collect(),
                ),
            }),
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories of one set of hierarchies, each once (v1 controllers
/// may share a mount).
fn unique(dirs: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !v.contains(&d) {
            v.push(d);
        }
    }
    v
}

/// The same place in each hierarchy the node has: the parent of all job
/// cgroups, or one job's.
#[derive(Debug, Clone)]
struct Dirs {
    /// In the cgroup2 mount, and whether that has controllers (v2) or only
    /// tracks membership (the hybrid's unified mount).
    v2: Option<(PathBuf, bool)>,
    memory_v1: Option<PathBuf>,
    cpu_v1: Option<PathBuf>,
    pids_v1: Option<PathBuf>,
}

impl Dirs {
    fn child(&self, name: &str) -> Dirs {
        Dirs {
            v2: self.v2.as_ref().map(|(p, c)| (p.join(name), *c)),
            memory_v1: self.memory_v1.as_ref().map(|p| p.join(name)),
            cpu_v1: self.cpu_v1.as_ref().map(|p| p.join(name)),
            pids_v1: self.pids_v1.as_ref().map(|p| p.join(name)),
        }
    }

    fn all(&self) -> Vec<PathBuf> {
        unique(
            self.v2
                .iter()
                .map(|(p, _)| p.clone())
                .chain(self.memory_v1.clone())
                .chain(self.cpu_v1.clone())
                .chain(self.pids_v1.clone()),
        )
    }

    fn has_v2_controllers(&self) -> bool {
        matches!(self.v2, Some((_, true)))
    }
}

/// Where this starter makes job cgroups, held (flock on the parent
/// directory) for as long as the starter runs: one starter per parent.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    dirs: Dirs,
    /// The lock; released when the starter exits.
    _held: std::sync::Arc<std::os::fd::OwnedFd>,
}

/// Checks `cgroup_parent`: a relative path of plain names.
pub fn check_parent(parent: &str) -> Result<(), CgroupError> {
    let ok = !parent.is_empty()
        && parent.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadParent(parent.to_string()))
    }
}

impl CgroupTree {
    /// The node's layout from /proc/self/mountinfo; job cgroups go under
    /// `parent` in each hierarchy used.
    pub fn detect(parent: &str) -> Result<CgroupTree, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        CgroupTree::from_mounts(&mounts(&info), parent)
    }

    pub fn from_mounts(mounts: &[Mount], parent: &str) -> Result<CgroupTree, CgroupError> {
        check_parent(parent)?;
        let v1 = |ctrl: &str| {
            mounts
                .iter()
                .find(|m| m.v1.as_ref().is_some_and(|c| c.iter().any(|x| x == ctrl)))
                .map(|m| m.point.join(parent))
        };
        let v2 = mounts.iter().find(|m| m.v1.is_none()).map(|m| {
            let controllers = fs::read_to_string(m.point.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == "memory" || c == "cpu");
            (m.point.clone(), controllers)
        });
        let tree = match v2 {
            // Pure v2: the controllers live there, none in v1.
            Some((point, true)) => Dirs {
                v2: Some((point.join(parent), true)),
                memory_v1: None,
                cpu_v1: None,
                pids_v1: None,
            },
            other => Dirs {
                v2: other.map(|(p, _)| (p.join(parent), false)),
                memory_v1: v1("memory"),
                cpu_v1: v1("cpu"),
                pids_v1: v1("pids"),
            },
        };
        if tree.memory_v1.is_none() && tree.cpu_v1.is_none() && !tree.has_v2_controllers() {
            return Err(CgroupError::NoHierarchy);
        }
        if let Some((dir, true)) = &tree.v2 {
            enable_controllers(dir)?;
        }
        for d in tree.all() {
            fs::create_dir_all(&d).map_err(io("create", &d))?;
        }
        let _held = hold(&tree.all()[0])?;
        Ok(CgroupTree { dirs: tree, _held })
    }

    /// What the log says at start-up.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let t = &self.dirs;
        match &t.v2 {
            Some((p, true)) => parts.push(format!("v2 {}", p.display())),
            Some((p, false)) => parts.push(format!("v2 (tracking, cgroup.kill) {}", p.display())),
            None => {}
        }
        for (name, p) in [
            ("memory", &t.memory_v1),
            ("cpu", &t.cpu_v1),
            ("pids", &t.pids_v1),
        ] {
            if let Some(p) = p {
                parts.push(format!("v1 {name} {}", p.display()));
            }
        }
        parts.join(", ")
    }

    fn job(&self, name: &str) -> JobCgroup {
        JobCgroup(self.dirs.child(name))
    }

    /// Makes job `id`'s cgroup with its limits. A limit this node cannot
    /// enforce is an error, never silently dropped.
    pub fn create(&self, id: u64, limits: Limits) -> Result<JobCgroup, CgroupError> {
        let job = self.job(&format!("{JOB_PREFIX}{id}"));
        let t = &self.dirs;
        if limits.memory_bytes > 0 && !t.has_v2_controllers() && t.memory_v1.is_none() {
            return Err(CgroupError::NoController("memory"));
        }
        if limits.millicpus > 0 && !t.has_v2_controllers() && t.cpu_v1.is_none() {
            return Err(CgroupError::NoController("cpus"));
        }
        // Left over from a job of the same id that a crash left behind.
        job.kill();
        job.remove(Duration::from_secs(2));
        for d in job.dirs() {
            fs::create_dir(&d).map_err(io("create", &d))?;
        }
        if let Err(e) = job.limit(limits) {
            job.remove(Duration::from_secs(1));
            return Err(e);
        }
        Ok(job)
    }

    /// Kills and removes every job cgroup under the parent: what a starter
    /// that died left (its jobs died with it; stragglers do now).
    pub fn sweep(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for p in self.dirs.all() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(JOB_PREFIX) && e.path().is_dir() {
                    names.insert(n);
                }
            }
        }
        for n in &names {
            let job = self.job(n);
            job.kill();
            job.remove(Duration::from_secs(2));
        }
        names.len()
    }
}

/// An exclusive lock on the parent directory, or InUse if another starter
/// holds it (flock works on cgroupfs directories like on any other).
fn hold(dir: &Path) -> Result<std::sync::Arc<std::os::fd::OwnedFd>, CgroupError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let f = fs::File::open(dir).map_err(io("open", dir))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(CgroupError::InUse(dir.to_path_buf()));
        }
        return Err(io("lock", dir)(e));
    }
    Ok(std::sync::Arc::new(OwnedFd::from(f)))
}

/// Switches memory, cpu and pids on from the v2 mount down to `dir`'s
/// parent level, so `dir` and its children get them.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let mut chain: Vec<PathBuf> = dir.ancestors().map(Path::to_path_buf).collect();
    chain.reverse();
    // From the mount (the first with cgroup.controllers) to `dir` itself.
    let start = chain
        .iter()
        .position(|p| p.join("cgroup.controllers").exists())
        .unwrap_or(chain.len());
    for level in &chain[start..] {
        fs::create_dir_all(level).map_err(io("create", level))?;
        let available = fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = available
            .split_whitespace()
            .filter(|c| matches!(*c, "memory" | "cpu" | "pids"))
            .map(|c| format!("+{c}"))
            .collect();
        if !want.is_empty() {
            let f = level.join("cgroup.subtree_control");
            fs::write(&f, want.join(" ")).map_err(io("write", &f))?;
        }
    }
    Ok(())
}

/// One job's cgroup, in every hierarchy the node has.
#[derive(Debug, Clone)]
pub struct JobCgroup(Dirs);

fn write(path: PathBuf, value: String) -> Result<(), CgroupError> {
    fs::write(&path, value).map_err(io("write", &path))
}

impl JobCgroup {
    /// Its directories, one per hierarchy: a process joins the job by
    /// writing itself into each one's `cgroup.procs`.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.0.all()
    }

    fn limit(&self, l: Limits) -> Result<(), CgroupError> {
        let quota = u64::from(l.millicpus) * CPU_PERIOD_US / 1000;
        let j = &self.0;
        match &j.v2 {
            Some((d, true)) => {
                if l.memory_bytes > 0 {
                    write(d.join("memory.max"), l.memory_bytes.to_string())?;
                    // Swap is memory too: a limit it can swap past is none.
                    match d.join("memory.swap.max").exists() {
                        true => write(d.join("memory.swap.max"), "0".into())?,
                        false if node_swaps() => return Err(CgroupError::SwapNotAccounted),
                        false => {}
                    }
                }
                if l.pids > 0 && d.join("pids.max").exists() {
                    write(d.join("pids.max"), l.pids.to_string())?;
                }
                if l.millicpus > 0 {
                    write(d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
            _ => {
                if let (Some(d), true) = (&j.memory_v1, l.memory_bytes > 0) {
                    write(d.join("memory.limit_in_bytes"), l.memory_bytes.to_string())?;
                    // memsw is memory + swap and must not be below the
                    // memory limit: set after it.
                    match d.join("memory.memsw.limit_in_bytes").exists() {
                        true => write(
                            d.join("memory.memsw.limit_in_bytes"),
                            l.memory_bytes.to_string(),
                        )?,
                        false if node_swaps() => return Err(CgroupError::SwapNotAccounted),
                        false => {}
                    }
                }
                if let (Some(d), true) = (&j.pids_v1, l.pids > 0) {
                    write(d.join("pids.max"), l.pids.to_string())?;
                }
                if let (Some(d), true) = (&j.cpu_v1, l.millicpus > 0) {
                    write(d.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    write(d.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// How many of the job's processes the kernel's OOM killer ended
    /// because of the job's memory limit.
    pub fn oom_kills(&self) -> u64 {
        let file = match (&self.0.v2, &self.0.memory_v1) {
            (Some((d, true)), _) => d.join("memory.events"),
            (_, Some(d)) => d.join("memory.oom_control"),
            _ => return 0,
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The pids in the job's cgroup now.
    pub fn procs(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in self.dirs() {
            for l in fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(p) = l.trim().parse::<i32>() {
                    if !pids.contains(&p) {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }

    /// SIGKILL to everything in the job's cgroup: `cgroup.kill` where the
    /// kernel has it (one atomic step, forks included), else each process
    /// until none is left.
    pub fn kill(&self) {
        if let Some((d, _)) = &self.0.v2 {
            if fs::write(d.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        let dirs = self.dirs();
        for _ in 0..100 {
            let pids = self.procs();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                // Pinned first, then checked to be still in the job's
                // cgroup: a pid that was reused meanwhile is not signalled.
                let Ok(fd) = crate::container::pidfd_open(p) else {
                    continue;
                };
                let own = fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
                let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                if !in_bounds(&own, &mounts(&info), &dirs).is_empty() {
                    crate::container::signal_pidfd(&fd, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the job's directories once its processes are gone (the
    /// kernel refuses while any is left), trying until `patience` ends.
    pub fn remove(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        for d in self.dirs() {
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(dir = %d.display(), error = %e, "job cgroup not empty yet");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot remove a job's cgroup");
                        break;
                    }
                }
            }
        }
    }
}

/// Whether the node has swap in use (/proc/swaps lists any).
fn node_swaps() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

/// Most entries (cgroups and pids) below one job's that are looked at: a
/// job may make cgroups of its own (a rootless container in a delegated
/// Slurm step), and no job makes the starter walk or hold without end.
const MAX_WALK: usize = 65_536;

/// The pids in the cgroup `dir` and every cgroup below it, breadth first
/// (the job's own levels before what it made below them), at most
/// MAX_WALK entries, without following symlinks.
pub fn procs_under(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut todo = std::collections::VecDeque::from([dir.to_path_buf()]);
    let mut seen = 0usize;
    while let Some(d) = todo.pop_front() {
        for l in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(p) = l.trim().parse::<i32>() {
                pids.push(p);
                seen += 1;
            }
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push_back(e.path());
                seen += 1;
            }
            if seen > MAX_WALK {
                tracing::warn!(dir = %dir.display(), "more than {MAX_WALK} cgroups and processes below a job's; the rest are not looked into");
                return pids;
            }
        }
    }
    pids
}

/// The cgroups of `pid` (a directory per hierarchy), of those inside one of
/// `bounds` (a job's cgroup): where a session that lands beside `pid`
/// goes — the job's own cgroup, or the one a container in it made.
pub fn cgroups_of(pid: i32, bounds: &[PathBuf]) -> Vec<PathBuf> {
    let (Ok(own), Ok(info)) = (
        fs::read_to_string(format!("/proc/{pid}/cgroup")),
        fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return Vec::new();
    };
    in_bounds(&own, &mounts(&info), bounds)
}

fn in_bounds(proc_cgroup: &str, mounts: &[Mount], bounds: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mount = mounts.iter().find(|m| match (&m.v1, ctrls) {
            (None, "") => true,
            (Some(have), c) if !c.is_empty() => c.split(',').all(|x| have.iter().any(|h| h == x)),
            _ => false,
        });
        let Some(m) = mount else { continue };
        let dir = m.point.join(path.trim_start_matches('/'));
        if bounds.iter().any(|b| dir.starts_with(b)) && !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// Puts the calling process into each of `dirs` (a job's cgroup): what it
/// starts from then on is the job's. Called by the container init and the
/// session helper, single-threaded, before they change namespaces.
pub fn join(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for d in dirs {
        write(d.join("cgroup.procs"), "0".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory
41 35 0:36 / /sys/fs/cgroup/cpu,cpuacct rw shared:16 - cgroup cgroup rw,cpu,cpuacct
42 35 0:37 / /sys/fs/cgroup/pids rw shared:17 - cgroup cgroup rw,pids
43 25 0:38 / /mnt/with\\040space rw - ext4 /dev/x rw
";

    #[test]
    fn mountinfo_is_read_for_cgroup_mounts_only() {
        let m = mounts(HYBRID);
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0].point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].v1, None);
        assert_eq!(m[1].v1.as_deref(), Some(&["xattr".to_string()][..]));
        assert_eq!(m[3].point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            m[3].v1.as_deref(),
            Some(&["cpu".to_string(), "cpuacct".to_string()][..])
        );
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    }

    #[test]
    fn a_session_joins_the_cgroups_of_its_process_inside_the_jobs_only() {
        let m = mounts(HYBRID);
        let proc_cgroup = "\
9:name=systemd:/
6:freezer:/slurm_vm/uid_1001/job_4/step_batch/ctr
5:memory:/process_api/x
4:cpu,cpuacct:/slurm_vm/uid_1001/job_4
2:pids:/slurm_vm/uid_1001/job_44
0::/
";
        let bounds = [
            PathBuf::from("/sys/fs/cgroup/freezer/slurm_vm/uid_1001/job_4"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/slurm_vm/uid_1001/job_4"),
            PathBuf::from("/sys/fs/cgroup/pids/slurm_vm/uid_1001/job_4"),
        ];
        // Not freezer (unmounted in HYBRID), not memory (outside the job),
        // not pids (job_44 is another job, whatever its name begins with).
        assert_eq!(
            in_bounds(proc_cgroup, &m, &bounds),
            vec![PathBuf::from(
                "/sys/fs/cgroup/cpu,cpuacct/slurm_vm/uid_1001/job_4"
            )]
        );
    }

    #[test]
    fn parents_must_be_plain_relative_names() {
        check_parent("stj_node1").unwrap();
        check_parent("system.slice/stj-jobs").unwrap();
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a b", "a\nb", "x/"] {
            assert!(check_parent(bad).is_err(), "{bad:?}");
        }
    }

    /// A v2 tree as the kernel shows it, in a temp dir (this machine's
    /// cgroups are a v1 hybrid; the e2e tests cover that layout for real):
    /// controllers switched on down to the parent, limits written where v2
    /// keeps them.
    #[test]
    fn v2_limits_land_in_v2_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cg");
        fs::create_dir(&root).unwrap();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let m = [Mount {
            point: root.clone(),
            v1: None,
        }];
        let tree = CgroupTree::from_mounts(&m, "stj_n1").unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        // The kernel fills a new directory with its files; the fake does it
        // for the parent by hand.
        fs::write(root.join("stj_n1/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let tree = CgroupTree::from_mounts(&m, "stj_n1").unwrap_or(tree);
        assert_eq!(
            fs::read_to_string(root.join("stj_n1/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        let job = tree
            .create(
                7,
                Limits {
                    millicpus: 1500,
                    memory_bytes: 64 << 20,
                    pids: 100,
                },
            )
            .unwrap();
        let d = root.join("stj_n1/stj-job-7");
        assert_eq!(job.dirs(), vec![d.clone()]);
        assert_eq!(
            fs::read_to_string(d.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(job.oom_kills(), 2);
    }

    #[test]
    fn v1_limits_land_in_v1_files_and_memsw_follows_memory() {
        let t = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = t.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        };
        let (unified, memory, cpu) = (mk("unified"), mk("memory"), mk("cpu"));
        let m = [
            Mount {
                point: unified.clone(),
                v1: None,
            },
            Mount {
                point: memory.clone(),
                v1: Some(vec!["memory".into()]),
            },
            Mount {
                point: cpu.clone(),
                v1: Some(vec!["cpu".into(), "cpuacct".into()]),
            },
        ];
        let tree = CgroupTree::from_mounts(&m, "stj_n1").unwrap();
        assert!(tree.describe().contains("v1 memory"), "{}", tree.describe());
        // No pids hierarchy: a job is in the other three.
        let job = tree
            .create(
                3,
                Limits {
                    millicpus: 250,
                    memory_bytes: 4 << 20,
                    pids: 0,
                },
            )
            .unwrap();
        assert_eq!(job.dirs().len(), 3);
        let md = memory.join("stj_n1/stj-job-3");
        assert_eq!(
            fs::read_to_string(md.join("memory.limit_in_bytes")).unwrap(),
            "4194304"
        );
        assert!(!md.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(
            fs::read_to_string(cpu.join("stj_n1/stj-job-3/cpu.cfs_quota_us")).unwrap(),
            "25000"
        );
        fs::write(
            md.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(job.oom_kills(), 1);
        // A controller the node lacks is an error for a job that needs it.
        let memless = CgroupTree::from_mounts(&m[2..], "stj_n2").unwrap();
        let e = memless
            .create(
                4,
                Limits {
                    millicpus: 0,
                    memory_bytes: 4 << 20,
                    pids: 0,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("--memory"), "{e}");
        assert!(CgroupTree::from_mounts(&[], "x").is_err());
        // One starter per parent: a second one is refused, never sweeps.
        let e = CgroupTree::from_mounts(&m, "stj_n1").unwrap_err();
        assert!(matches!(e, CgroupError::InUse(_)), "{e}");
        drop(tree);
        CgroupTree::from_mounts(&m, "stj_n1").unwrap();
    }
}
