//! A real Slurm on this machine, for the tests that add ssh-to-job to a
//! Slurm cluster: munged, slurmctld and slurmd from Debian's packages
//! (scripts/install-deps.sh), started by hand (no systemd here) once per
//! test binary and stopped by their pid files when it exits. Two nodes:
//! this machine's, named as `hostname -s` says (Slurm's NodeName must be),
//! alone in the default partition, and `stjnode2`, a second slurmd in a UTS
//! namespace of its own (its hostname is its name) listening on another
//! port, which with the first makes the partition `two` for jobs on two
//! nodes. Both have more CPUs than the machine (`config_overrides`) so
//! that the tests' jobs run side by side;
//! proctrack/cgroup, so the jobs' processes are in Slurm's cgroup tree; runc
//! for `sbatch --container`. Its config lives in its own directory, named by
//! `SLURM_CONF` for everything the tests start (daemons, users' sbatch).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::wait_until;

pub struct Slurm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// Slurm's name for this machine's node.
    pub node: String,
    /// The second node's name (partition `two` holds both).
    pub node2: String,
    /// Where rootless runc keeps its state for `--container` jobs.
    pub runc_root: PathBuf,
}

const DIR: &str = "/var/tmp/stj-tests/slurm";
const NODE2: &str = "stjnode2";

static SLURM: OnceLock<Slurm> = OnceLock::new();

/// The machine's Slurm, started on first use in this test binary.
pub fn slurm() -> &'static Slurm {
    SLURM.get_or_init(Slurm::start)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemons' names in their pid and log files (`run/NAME.pid`,
/// `log/NAME.log`): slurmctld and the slurmd of each node (`node`, this
/// machine's, and the second).
fn daemons(node: &str) -> [String; 3] {
    [
        "slurmctld".to_string(),
        format!("slurmd-{node}"),
        format!("slurmd-{NODE2}"),
    ]
}

/// Stops what a pid file names (daemons of an earlier run of the tests).
fn stop(pid_file: &Path) {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // Only if it is still that daemon: pids are reused.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end().starts_with("slurm") || comm.trim_end() == "munged" {
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_until(
            "an old Slurm daemon to stop",
            Duration::from_secs(20),
            || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
        );
    }
    fs::remove_file(pid_file).ok();
}

extern "C" fn stop_at_exit() {
    if let Some(s) = SLURM.get() {
        // The tests' jobs first: slurmstepd outlives the daemons.
        if let Ok(out) = Command::new("squeue").args(["-h", "-o", "%A"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("scancel").args(&ids).status();
            }
        }
        // Until slurmctld has heard every job end: a slurmstepd whose
        // completion it never gets retries for ever, and keeps its slurmd
        // from exiting. (No panicking wait_until at exit.)
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let left = Command::new("squeue")
                .args(["-h", "-o", "%A"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for d in daemons(&s.node) {
            if let Ok(pid) = fs::read_to_string(s.dir.join(format!("run/{d}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
    }
}

impl Slurm {
    fn start() -> Slurm {
        let dir = PathBuf::from(DIR);
        let node = run(Command::new("hostname").arg("-s")).trim().to_string();
        for d in daemons(&node) {
            stop(&dir.join(format!("run/{d}.pid")));
        }
        // Jobs of an earlier run outlive its daemons (slurmstepd stays):
        // their cgroups would stand for this run's jobs of the same ids.
        end_leftover_jobs(&node);
        end_leftover_jobs(NODE2);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        let spools = [format!("spool/d-{node}"), format!("spool/d-{NODE2}")];
        for d in ["spool/ctld", "log", "run", "runc"]
            .into_iter()
            .chain(spools.iter().map(String::as_str))
        {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new("chown")
            .args(["-R", "slurm:slurm"])
            .arg(dir.join("spool/ctld"))
            .arg(dir.join("log"))
            .arg(dir.join("run")));
        // Each user's runc state goes in a directory runc makes under here.
        fs::set_permissions(dir.join("runc"), fs::Permissions::from_mode(0o1777)).unwrap();
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        fs::write(
            &conf,
            format!(
                "ClusterName=stjtest
SlurmctldHost={node}
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=slurm
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmdSpoolDir={d}/spool/d-%n
StateSaveLocation={d}/spool/ctld
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MinJobAge=300
KillWait=3
InactiveLimit=0
NodeName={node} Port=16818 CPUs=64 Boards=1 SocketsPerBoard=1 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN
NodeName={NODE2} NodeAddr=127.0.0.1 Port=16819 CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=two Nodes={node},{NODE2} MaxTime=INFINITE State=UP
"
            ),
        )
        .unwrap();
        fs::write(
            dir.join("cgroup.conf"),
            "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n",
        )
        .unwrap();
        let runc_root = dir.join("runc");
        let r = runc_root.display();
        fs::write(
            dir.join("oci.conf"),
            format!(
                "RunTimeQuery=\"runc --rootless=true --root={r}/%u state %n.%u.%j.%s.%t\"
RunTimeRun=\"runc --rootless=true --root={r}/%u run %n.%u.%j.%s.%t -b %b\"
RunTimeKill=\"runc --rootless=true --root={r}/%u kill -a %n.%u.%j.%s.%t\"
RunTimeDelete=\"runc --rootless=true --root={r}/%u delete --force %n.%u.%j.%s.%t\"
"
            ),
        )
        .unwrap();
        // Everything the tests start from now on finds this Slurm.
        std::env::set_var("SLURM_CONF", &conf);
        start_munge();
        run(Command::new("/usr/sbin/slurmctld").arg("-f").arg(&conf));
        run(Command::new("/usr/sbin/slurmd").arg("-f").arg(&conf));
        // The second node: slurmd finds its NodeName by hostname.
        run(Command::new("unshare")
            .args(["--uts", "sh", "-c"])
            .arg(format!(
                "hostname {NODE2} && exec /usr/sbin/slurmd -f \"$1\""
            ))
            .arg("sh")
            .arg(&conf));
        unsafe { libc::atexit(stop_at_exit) };
        wait_until("Slurm's nodes to be idle", Duration::from_secs(60), || {
            let out = Command::new("sinfo")
                .args(["-h", "-N", "-p", "two", "-o", "%T"])
                .output()
                .ok()?;
            let states = String::from_utf8_lossy(&out.stdout).into_owned();
            (states.lines().count() == 2 && states.lines().all(|l| l.starts_with("idle")))
                .then_some(())
        });
        Slurm {
            dir,
            conf,
            node,
            node2: NODE2.to_string(),
            runc_root,
        }
    }

    /// slurmd's and slurmctld's logs, for a failing test.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for l in daemons(&self.node) {
            s.push_str(&format!("---- {l} ----\n"));
            let text =
                fs::read_to_string(self.dir.join(format!("log/{l}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
            s.push('\n');
        }
        s
    }
}

/// Kills every process in Slurm's cgroups for `node` and removes them.
fn end_leftover_jobs(node: &str) {
    for m in crate::cluster::cgroup_mounts() {
        let top = m.join(format!("slurm_{node}"));
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut todo = vec![top];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
            dirs.push(d);
        }
        let procs = |d: &Path| -> Vec<i32> {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        wait_until(
            "an earlier run's Slurm jobs to end",
            Duration::from_secs(30),
            || {
                let left: Vec<i32> = dirs.iter().flat_map(|d| procs(d)).collect();
                for p in &left {
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
                left.is_empty().then_some(())
            },
        );
        // Deepest first.
        for d in dirs.iter().rev() {
            fs::remove_dir(d).ok();
        }
    }
}

/// munged, if it is not running yet (it serves every test binary alike).
fn start_munge() {
    let running = Command::new("munge")
        .arg("-n")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if running {
        return;
    }
    fs::create_dir_all("/run/munge").unwrap();
    run(Command::new("chown").args(["munge:munge", "/run/munge"]));
    if !Path::new("/etc/munge/munge.key").exists() {
        run(Command::new("/usr/sbin/mungekey").args([
            "--create",
            "--keyfile",
            "/etc/munge/munge.key",
        ]));
        run(Command::new("chown").args(["munge:munge", "/etc/munge/munge.key"]));
    }
    run(Command::new("su").args(["-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"]));
    wait_until("munged", Duration::from_secs(20), || {
        Command::new("munge")
            .arg("-n")
            .stdout(std::process::Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    });
}
