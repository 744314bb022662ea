//! Foundation: jobs run in their own containers as their owners, survive a
//! schedd crash, and end completely when removed.

use std::fs;
use std::time::Duration;

use stj_tests::cluster::{pids_matching, pids_named};
use stj_tests::{wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

fn out_of(c: &Cluster, user: &TestUser, id: u64) -> String {
    fs::read_to_string(c.workdir(user).join(format!("stj-{id}.out"))).unwrap_or_default()
}

#[test]
fn job_runs_as_owner_in_its_own_pid_namespace_with_env_and_cwd() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let id = c.submit(
        &alice,
        &[
            "--env",
            "GREETING=hello world",
            "--",
            "sh",
            "-c",
            "id -u; id -g; echo \"G=$GREETING\"; pwd; ps -eo comm; exit 4",
        ],
    );
    let job = c.wait_state(id, "completed", T);
    assert_eq!(job["exit_code"], 4, "{job}");
    assert_eq!(job["node"], "node1");
    assert_eq!(job["owner"], alice.name);

    let out = out_of(&c, &alice, id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], alice.uid.to_string(), "runs as its owner: {out}");
    assert_eq!(
        lines[1],
        alice.gid.to_string(),
        "with the owner's group: {out}"
    );
    assert_eq!(lines[2], "G=hello world");
    assert_eq!(lines[3], c.workdir(&alice).to_string_lossy());
    // Its own PID namespace: ps sees the init, the shell and ps, nothing of the host.
    let comms: Vec<&str> = lines[4..].to_vec();
    assert_eq!(comms, ["COMMAND", "stj-init", "sh", "ps"], "{out}");
}

#[test]
fn rm_kills_the_job_and_everything_it_spawned() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let id = c.submit(
        &alice,
        &[
            "--",
            "sh",
            "-c",
            "sleep 7771 & sleep 7772 & sleep 7773; wait",
        ],
    );
    c.wait_state(id, "running", T);
    for marker in ["sleep 7771", "sleep 7772", "sleep 7773"] {
        wait_until(&format!("{marker} to run"), T, || {
            (!pids_matching(marker).is_empty()).then_some(())
        });
    }
    let out = c.stj(Some(&alice), c.path(), &["rm", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("every process of the job to be gone", T, || {
        let inits = pids_named("stj-init")
            .into_iter()
            .filter(|p| is_in_pool(*p, &c))
            .count();
        let sleeps: usize = ["sleep 7771", "sleep 7772", "sleep 7773"]
            .iter()
            .map(|m| pids_matching(m).len())
            .sum();
        (inits == 0 && sleeps == 0).then_some(())
    });
    let job = c.job(id);
    assert_eq!(job["state"], "removed");
    wait_until("the kill's exit to be recorded", T, || {
        (!c.job(id)["exit_signal"].is_null()).then_some(())
    });
}

/// True if the process belongs to this test's pool (its container spec path
/// lies under the pool's dir), so parallel tests do not confuse us.
fn is_in_pool(pid: i32, c: &Cluster) -> bool {
    let pool = c.path().to_string_lossy().to_string();
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).contains(&pool) || cwd.to_string_lossy().contains(&pool)
}

#[test]
fn only_the_owner_or_root_can_remove_a_job() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let id = c.submit(&alice, &["--", "sleep", "600"]);
    c.wait_state(id, "running", T);

    let out = c.stj(Some(&bob), c.path(), &["rm", &id.to_string()]);
    assert!(!out.status.success(), "bob must not remove alice's job");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only its owner or root"), "{err}");
    assert_eq!(c.job(id)["state"], "running", "the job is untouched");

    let out = c.stj(None, c.path(), &["rm", &id.to_string()]);
    assert!(out.status.success(), "root may remove any job");
    assert_eq!(c.job(id)["state"], "removed");

    let out = c.stj(Some(&alice), c.path(), &["rm", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no job 999999"));
}

#[test]
fn jobs_survive_a_schedd_kill_9_and_complete_after_restart() {
    let mut c = Cluster::new();
    c.start_starter("node1", 4);
    let alice = TestUser::alice();
    let script = "while [ ! -e release-$STJ_JOB_ID ]; do sleep 0.05; done; echo done";
    let a = c.submit(&alice, &["--", "sh", "-c", script]);
    let b = c.submit(&alice, &["--", "sh", "-c", script]);
    c.wait_state(a, "running", T);
    c.wait_state(b, "running", T);

    c.kill_schedd();
    c.start_schedd();
    for id in [a, b] {
        let job = c.job(id);
        assert_eq!(job["state"], "running", "{job}");
        assert_eq!(job["node"], "node1", "{job}");
    }
    // The starter re-registers by itself and reports both jobs as running.
    c.wait_registrations("node1", 2, T);
    let wd = c.workdir(&alice);
    for id in [a, b] {
        fs::write(wd.join(format!("release-{id}")), "").unwrap();
    }
    for id in [a, b] {
        let job = c.wait_state(id, "completed", T);
        assert_eq!(job["exit_code"], 0, "{job}");
        assert_eq!(out_of(&c, &alice, id).trim(), "done");
    }
    let all = c.stj(None, c.path(), &["q", "--json", "--all"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "no job lost or duplicated: {all}"
    );
}

#[test]
fn starter_reconnects_by_itself_after_the_schedd_was_away() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let long = c.submit(
        &alice,
        &[
            "--",
            "sh",
            "-c",
            "while [ ! -e release ]; do sleep 0.05; done",
        ],
    );
    c.wait_state(long, "running", T);

    c.kill_schedd();
    // The schedd stays away until the starter has failed to reach it twice.
    wait_until("the starter to notice the schedd is gone", T, || {
        (c.starter_log("node1")
            .matches("cannot reach the schedd")
            .count()
            >= 2)
            .then_some(())
    });
    c.start_schedd();
    c.wait_registrations("node1", 2, Duration::from_secs(60));
    // The job ran on through the outage, and new jobs run.
    assert_eq!(c.job(long)["state"], "running");
    let id = c.submit(&alice, &["--", "true"]);
    assert_eq!(c.wait_state(id, "completed", T)["exit_code"], 0);
    fs::write(c.workdir(&alice).join("release"), "").unwrap();
    assert_eq!(c.wait_state(long, "completed", T)["exit_code"], 0);
}

#[test]
fn a_command_missing_in_the_container_fails_the_job_not_the_starter() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let bad = c.submit(&alice, &["--", "no-such-command-xyz"]);
    let job = c.wait_state(bad, "completed", T);
    let reason = job["reason"].as_str().unwrap();
    assert!(
        reason.contains("no-such-command-xyz") && reason.contains("not found"),
        "{job}"
    );
    let good = c.submit(&alice, &["--", "true"]);
    assert_eq!(
        c.wait_state(good, "completed", T)["exit_code"],
        0,
        "the starter still runs jobs"
    );
}

#[test]
fn image_jobs_run_inside_the_rootfs_via_pivot_root() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let root = stj_tests::rootfs::busybox(&c.path().join("rootfs"));
    fs::write(root.join("marker-inside-image"), "").unwrap();
    let id = c.submit(
        &alice,
        &[
            "--image",
            root.to_str().unwrap(),
            "--cwd",
            "/work",
            "--output",
            "out",
            "--",
            "sh",
            "-c",
            "ls /; ps -o comm; ls /dev/pts/ptmx",
        ],
    );
    let job = c.wait_state(id, "completed", T);
    assert_eq!(job["exit_code"], 0, "{job}");
    let out = fs::read_to_string(root.join("work/out")).unwrap();
    assert!(
        out.contains("marker-inside-image"),
        "the job sees the image as /: {out}"
    );
    assert!(!out.contains("home\n"), "and not the host root: {out}");
    assert!(out.contains("stj-init"), "{out}");
    assert!(out.contains("/dev/pts/ptmx"), "a private devpts: {out}");
}
