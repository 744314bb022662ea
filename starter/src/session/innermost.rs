//! Where a session lands (DESIGN §12): in the innermost container of the
//! job — the namespaces of the process the job's program runs in — not
//! beside it. A job that starts its own container (`unshare --user --pid
//! --mount …`, an apptainer-style wrapper) gets sessions inside that
//! container, seeing its processes and its private mounts.
//!
//! The rule: among the job's processes (those descending from its init in
//! our containers; the owner's processes in the step's cgroup in Slurm),
//! those in the deepest PID namespace (the length of `NSpid` in
//! /proc/PID/status); of several, the oldest. The job's outer process when
//! nothing went deeper. The
//! session joins that process's mount, PID, UTS, IPC and cgroup namespaces
//! but not its user namespace, and runs as the job's owner: a rootless
//! container maps only its root to the owner, and sshd cannot run as root
//! there (privilege separation needs a second uid), while the owner's real
//! uid is that root's outside — the session reads and writes what the
//! container's root can, and its files belong to the owner.
//!
//! That mount namespace is the job's to shape (its user namespace owns
//! it): a set-id program there would run with the node's root behind a
//! PAM config or a libc the job chose. So sessions landing there run with
//! no_new_privs — no set-id or file-capability program gains anything —
//! as confined (slot-user) sessions always do. Only what reading /proc
//! cannot stall is read here (stat, status, the cwd link): a process's
//! environment lives in its memory, which a job can back with a FUSE file
//! that never answers.

use std::collections::HashMap;

use crate::job_locator::Members;

/// The process (as the node numbers it) a session into a job lands beside,
/// and its start time (to tell it from a process that takes its pid
/// later): of the job's processes, one in the deepest PID namespace, the
/// oldest of several; `outer` itself when none went deeper.
pub fn innermost(outer: i32, members: &Members) -> (i32, u64) {
    let pids = match members {
        Members::DescendantsOf(init) => descendants(*init),
        Members::InCgroup { dir, uid } => crate::cgroup::procs_under(dir)
            .into_iter()
            .filter(|&p| real_uid(p) == Some(*uid))
            .collect(),
    };
    let depth = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| nspid_depth(&s))
            .unwrap_or(0)
    };
    let mut best = (depth(outer), start_of(outer).unwrap_or(0), outer);
    for pid in pids {
        if pid == outer {
            continue;
        }
        let d = depth(pid);
        let start = start_of(pid).unwrap_or(u64::MAX);
        // Deeper wins; at the same depth, the one that started first.
        if d > best.0 || (d == best.0 && best.2 != outer && start < best.1) {
            best = (d, start, pid);
        }
    }
    (best.2, best.1)
}

/// `init` and every process below it.
fn descendants(init: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = children.get(&init).cloned().unwrap_or_default();
    while let Some(pid) = stack.pop() {
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    out
}

fn stat(pid: i32) -> Option<(i32, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| ppid_and_start(&s))
}

/// When `pid` started (clock ticks since boot).
pub fn start_of(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// The real uid of `pid` (a process cannot change it without privilege).
pub fn real_uid(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` is still the process `innermost` chose: the same start
/// time, and still one of the job's (checked after a pidfd of it was
/// taken, so the pid cannot change hands afterwards).
pub fn still_ours(pid: i32, start: u64, members: &Members) -> bool {
    if start_of(pid) != Some(start) {
        return false;
    }
    match members {
        Members::DescendantsOf(init) => {
            let mut p = pid;
            // A chain longer than the pid space is a loop: not ours.
            for _ in 0..4_194_304 {
                if p == *init {
                    return true;
                }
                match stat(p) {
                    Some((ppid, _)) if ppid > 0 => p = ppid,
                    _ => return false,
                }
            }
            false
        }
        Members::InCgroup { dir, uid } => {
            real_uid(pid) == Some(*uid) && crate::cgroup::procs_under(dir).contains(&pid)
        }
    }
}

/// The parent pid and start time (clock ticks since boot) in a
/// /proc/PID/stat line; the command name may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn ppid_and_start(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … starttime(22).
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// How many PID namespaces deep a process is: the number of pids on its
/// `NSpid:` line (1 on the node itself).
fn nspid_depth(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|p| p.split_whitespace().count())
}

/// The working directory of `pid`, as a path in its own mount namespace;
/// None unless it can be a passwd home (absolute, no `:` or newline: the
/// job chooses it, and the shim's passwd line carries it).
pub fn cwd(pid: i32) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    usable_home(&p.to_string_lossy()).map(str::to_string)
}

fn usable_home(p: &str) -> Option<&str> {
    (p.starts_with('/') && !p.contains([':', '\n', '\r'])).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_fields() {
        let stat = "4242 (we) ird (name) S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(ppid_and_start(stat), Some((17, 98765)));
        assert_eq!(
            nspid_depth("Name:\tsleep\nNSpid:\t1350\t7\t1\nNSgid:\t1\n"),
            Some(3)
        );
        assert_eq!(nspid_depth("Name:\tinit\nNSpid:\t1\n"), Some(1));
        assert_eq!(usable_home("/mnt/work"), Some("/mnt/work"));
        for bad in [
            "relative",
            "/a:b",
            "/a\nroot::0:0::/:/bin/sh",
            "/x (deleted)\r",
        ] {
            assert_eq!(usable_home(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_process_with_no_deeper_descendant_is_its_own_innermost() {
        // This test process has no child in a deeper PID namespace.
        let me = std::process::id() as i32;
        let members = Members::DescendantsOf(me);
        let (pid, start) = innermost(me, &members);
        assert_eq!(pid, me);
        assert!(still_ours(pid, start, &members));
        assert!(
            !still_ours(pid, start + 1, &members),
            "another start time: another process"
        );
        assert_eq!(real_uid(me), Some(nix::unistd::getuid().as_raw()));
    }
}
