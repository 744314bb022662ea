//! A cgroup per job: `stj submit --cpus/--memory` limits enforced by the
//! kernel and shown in `stj q`, the job's memory limit killing it (and
//! `stj q` saying why), sessions accounted in the job's cgroup and ended
//! with it. Read from the node's side (/sys/fs/cgroup), as an admin would.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use stj_tests::cluster::pids_matching;
use stj_tests::{ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// The job's directory in the hierarchy whose mount ends with `name`.
fn dir_of(dirs: &[PathBuf], name: &str) -> PathBuf {
    dirs.iter()
        .find(|d| {
            d.ancestors()
                .any(|a| a.file_name().is_some_and(|f| f.to_string_lossy() == name))
        })
        .unwrap_or_else(|| panic!("no {name} cgroup among {dirs:?}"))
        .clone()
}

fn procs(dir: &std::path::Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_job_past_its_memory_limit_is_killed_and_q_says_why() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    // 256 MiB of bytes it really writes (a lazily zeroed allocation would
    // not count), against a 64 MiB limit with no room to swap.
    let id = c.submit(
        &alice,
        &[
            "--memory",
            "64M",
            "--",
            "python3",
            "-c",
            "import time; b = b'x' * (256 << 20); time.sleep(600)",
        ],
    );
    let job = c.wait_state(id, "completed", T);
    assert_eq!(job["exit_signal"], 9, "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory limit (64 MiB)") && reason.contains("--memory"),
        "{job}"
    );
    assert_eq!(job["memory_bytes"], 64u64 << 20, "{job}");
    let q = ok(c.stj(
        Some(&alice),
        &c.workdir(&alice),
        &["q", "--all", &id.to_string()],
    ));
    assert!(q.contains("LIMITS") && q.contains(" 64M "), "{q}");
    assert!(q.contains("out of memory"), "{q}");
    // What the job asked for is public, as squeue shows it; why it ended is not.
    let bob = TestUser::bob();
    let q = ok(c.stj(
        Some(&bob),
        &c.workdir(&bob),
        &["q", "--all", &id.to_string()],
    ));
    assert!(q.contains(" 64M ") && !q.contains("out of memory"), "{q}");
    // The job's cgroup goes with it.
    wait_until("the job's cgroup to be removed", T, || {
        c.job_cgroups("node1", id).is_empty().then_some(())
    });
}

#[test]
fn sessions_run_in_the_jobs_cgroup_under_its_limits_and_end_with_it() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let id = c.submit(
        &alice,
        &["--cpus", "0.5", "--memory", "256M", "--", "sleep", "86490"],
    );
    c.wait_state(id, "running", T);
    let q = ok(c.stj(Some(&alice), &c.workdir(&alice), &["q"]));
    assert!(q.contains("0.5cpu,256M"), "{q}");

    let dirs = c.job_cgroups("node1", id);
    let memory = dir_of(&dirs, "memory");
    let cpu = dir_of(&dirs, "cpu");
    assert_eq!(
        fs::read_to_string(memory.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (256u64 << 20).to_string()
    );
    // No swapping past the limit, where the kernel accounts swap.
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            fs::read_to_string(memory.join("memory.memsw.limit_in_bytes"))
                .unwrap()
                .trim(),
            (256u64 << 20).to_string()
        );
    }
    assert_eq!(
        fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    let job_sleep = wait_until("the job's program", T, || {
        pids_matching("sleep 86490").first().copied()
    });
    for d in &dirs {
        assert!(
            procs(d).contains(&job_sleep),
            "the job is in {}",
            d.display()
        );
    }

    // A session's process, seen from the node, is in every one of the
    // job's cgroups.
    let mut session = c
        .ssh_to_job_cmd(&alice, &[&id.to_string(), "exec sleep 4242"], None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let in_session = wait_until("the session's sleep", T, || {
        pids_matching("sleep 4242").first().copied()
    });
    for d in &dirs {
        assert!(
            procs(d).contains(&in_session),
            "the session's process is in {}",
            d.display()
        );
    }

    // stj rm ends the job, the session with it, and its cgroup.
    ok(c.stj(Some(&alice), &c.workdir(&alice), &["rm", &id.to_string()]));
    wait_until("the session's process to end", T, || {
        (!std::path::Path::new(&format!("/proc/{in_session}")).exists()).then_some(())
    });
    wait_until("the client to exit", T, || session.try_wait().unwrap());
    wait_until("the job's cgroup to be removed", T, || {
        c.job_cgroups("node1", id).is_empty().then_some(())
    });
}

#[test]
fn limits_that_make_no_sense_are_refused_before_submitting() {
    let c = Cluster::new();
    let alice = TestUser::alice();
    for (args, says) in [
        (&["--cpus", "0"][..], "--cpus is at least 0.01"),
        (&["--cpus", "two"][..], "give a number of CPUs"),
        (&["--memory", "0"][..], "--memory must be above 0"),
        (&["--memory", "lots"][..], "give a size like 64M"),
    ] {
        let mut a = args.to_vec();
        a.extend(["--", "true"]);
        let mut all = vec!["submit"];
        all.extend(a);
        let out = c.stj(Some(&alice), &c.workdir(&alice), &all);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The schedd checks too (other clients than stj).
    let out = c.stj(
        Some(&alice),
        &c.workdir(&alice),
        &["submit", "--memory", "1M", "--", "true"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--memory is at least 4M"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
