//! ssh-to-job on a Slurm cluster (DESIGN §12), against a real slurmctld
//! and slurmd (`stj_tests::slurm`, started once for this test binary): the
//! schedd asks Slurm about jobs (`jobs = "slurm"`), a starter beside slurmd
//! finds them in Slurm's cgroup tree, and sessions land in the job's
//! innermost container — plain batch jobs, `sbatch --container` (runc), and
//! batch scripts that start a container of their own — also on a node
//! behind NAT, end when Slurm ends the job, and `stj submit --interactive`
//! goes through sbatch.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stj_tests::cluster::pids_matching;
use stj_tests::slurm::{slurm, Slurm};
use stj_tests::{bin, ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(60);

/// A pool whose jobs are Slurm's, with a starter beside this node's slurmd.
fn pool() -> (Cluster, &'static Slurm) {
    let s = slurm();
    let mut c = Cluster::with_schedd_config(&format!(
        "jobs = \"slurm\"\nslurm_placeholder = \"{}\"\n",
        bin("stj-starter").display()
    ));
    c.start_starter_with(&s.node, 1, &["--jobs", "slurm"]);
    (c, s)
}

/// `sbatch ARGS` as `user` in their work dir; the job id.
fn sbatch(c: &Cluster, user: &TestUser, args: &[&str]) -> u64 {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .current_dir(c.workdir(user))
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .unwrap();
    let text = ok(out);
    text.trim()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .expect("a job id")
}

fn squeue_state(id: u64) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%T", "-j", &id.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until Slurm runs job `id` and its program (`marker`, a command
/// line prefix) is up.
fn running(s: &Slurm, id: u64, marker: &str) {
    wait_until(&format!("Slurm to run job {id}"), T, || {
        let st = squeue_state(id);
        (!st.is_empty() && st.lines().all(|l| l == "RUNNING")).then_some(())
    });
    let found = std::panic::catch_unwind(|| {
        wait_until(&format!("job {id}'s program"), T, || {
            (!pids_matching(marker).is_empty()).then_some(())
        })
    });
    if found.is_err() {
        panic!("job {id} never started {marker:?}\n{}", s.logs());
    }
}

fn scancel(id: u64) {
    ok(Command::new("scancel")
        .arg(id.to_string())
        .output()
        .unwrap());
}

#[test]
fn a_plain_batch_job_its_processes_cwd_environment_and_owner() {
    let (c, _s) = pool();
    let alice = TestUser::alice();
    let id = sbatch(&c, &alice, &["-o", "/dev/null", "--wrap", "sleep 86501"]);
    running(_s, id, "sleep 86501");
    let jid = id.to_string();
    let work = c.workdir(&alice);
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &jid,
            "echo ID=$SLURM_JOB_ID; pwd; ps -eo args | grep -c '^sleep 86501'; id -u",
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&format!("ID={id}").as_str()),
        "the job's environment: {out}"
    );
    assert!(
        lines.contains(&work.to_str().unwrap()),
        "the job's working directory: {out}"
    );
    assert!(lines.contains(&"1"), "the job's processes: {out}");
    assert_eq!(lines.last(), Some(&alice.uid.to_string().as_str()), "{out}");

    // The remote command's exit status comes back.
    let st = c.ssh_to_job(&alice, &[&jid, "exit 7"], None).status;
    assert_eq!(st.code(), Some(7));

    // scp lands in the job's view of the filesystem.
    let local = c.path().join("to-the-job.txt");
    std::fs::write(&local, "payload\n").unwrap();
    nix::unistd::chown(&local, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();
    let dest = format!("remote:{}/arrived.txt", work.display());
    ok(c.ssh_to_job(
        &alice,
        &["--ssh", "scp", &jid, "--", local.to_str().unwrap(), &dest],
        None,
    ));
    assert_eq!(
        std::fs::read_to_string(work.join("arrived.txt")).unwrap(),
        "payload\n"
    );

    // Only its owner (and root) get in.
    let bob = TestUser::bob();
    let out = c.ssh_to_job(&bob, &[&jid, "true"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only its owner or root"), "{err}");
    let root = ok(c
        .ssh_to_job_cmd(&alice, &[&jid, "id -u"], None)
        .uid(0)
        .gid(0)
        .output()
        .unwrap());
    assert_eq!(
        root.trim(),
        alice.uid.to_string(),
        "root opens a session as the job's owner"
    );

    // A node outside the allocation, a step it does not have: refused, saying so.
    let out = c.ssh_to_job(&alice, &["--node", "not-a-node", &jid, "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not one of job"),
        "{err}"
    );
    let out = c.ssh_to_job(&alice, &["--step", "7", &jid, "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has no step 7"),
        "{err}"
    );
    // The batch host, named: the same as the default.
    let out = ok(c.ssh_to_job(&alice, &["--node", &_s.node, &jid, "echo ok"], None));
    assert_eq!(out, "ok\n");
    // A job Slurm does not know, a pending one: the reason, in Slurm's words.
    let out = c.ssh_to_job(&alice, &["999999", "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("squeue lists the jobs"),
        "{err}"
    );
    let pending = sbatch(&c, &alice, &["--hold", "-o", "/dev/null", "--wrap", "true"]);
    let out = c.ssh_to_job(&alice, &[&pending.to_string(), "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PENDING in Slurm"),
        "{err}"
    );
    scancel(pending);
    scancel(id);
}

/// A job on two nodes: `ssh-to-job J` goes to its batch host, `--node` to
/// the other node of its allocation (another starter, beside that node's
/// slurmd), where the session lands in that node's part of the job: its
/// step, its environment, its processes.
#[test]
fn a_job_on_two_nodes_is_entered_on_either() {
    let (mut c, s) = pool();
    c.start_starter_with(&s.node2, 1, &["--jobs", "slurm"]);
    let alice = TestUser::alice();
    let id = sbatch(
        &c,
        &alice,
        &[
            "-p",
            "two",
            "-N",
            "2",
            "-o",
            "/dev/null",
            "--wrap",
            "srun sleep 86602",
        ],
    );
    // srun runs the program by its full path.
    running(s, id, "/usr/bin/sleep 86602");
    wait_until("the step on both nodes", T, || {
        (pids_matching("/usr/bin/sleep 86602").len() == 2).then_some(())
    });
    let jid = id.to_string();
    let out = Command::new("squeue")
        .args(["-h", "-o", "%B", "-j", &jid])
        .output()
        .unwrap();
    let batch_host = ok(out).trim().to_string();
    let other = if batch_host == s.node {
        s.node2.clone()
    } else {
        assert_eq!(batch_host, s.node2);
        s.node.clone()
    };
    let show = "echo node=$SLURMD_NODENAME step=$SLURM_STEP_ID; hostname -s";
    let batch = ok(c.ssh_to_job(&alice, &[&jid, show], None));
    assert!(
        batch.starts_with(&format!("node={batch_host} ")),
        "the batch step on the batch host, {batch_host}: {batch}"
    );
    assert_eq!(batch.lines().nth(1), Some(batch_host.as_str()), "{batch}");
    let there = ok(c.ssh_to_job(&alice, &["--node", &other, &jid, show], None));
    assert_eq!(
        there,
        format!("node={other} step=0\n{other}\n"),
        "step 0 on the other node, {other}, as its processes see it"
    );
    let out = c.ssh_to_job(
        &alice,
        &["--node", &other, "--step", "batch", &jid, "true"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has no step batch"),
        "{err}"
    );
    scancel(id);
}

#[test]
fn array_tasks_are_named_the_way_slurm_names_them() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let id = sbatch(
        &c,
        &alice,
        &["-o", "/dev/null", "--array=1-2", "--wrap", "sleep 86502"],
    );
    wait_until("both tasks", T, || {
        (pids_matching("sleep 86502").len() == 2).then_some(())
    });
    running(s, id, "sleep 86502");
    for task in ["1", "2"] {
        let out = ok(c.ssh_to_job(
            &alice,
            &[&format!("{id}_{task}"), "echo T=$SLURM_ARRAY_TASK_ID"],
            None,
        ));
        assert_eq!(out.trim(), format!("T={task}"));
    }
    scancel(id);
}

/// `sbatch --container`: Slurm runs the batch script in a rootless runc
/// container (its processes in a cgroup runc made below the step's): the
/// session is inside it, with the container's pids, and what it writes the
/// job sees.
#[test]
fn an_sbatch_container_job_gets_sessions_inside_its_container() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let bundle =
        stj_tests::rootfs::oci_bundle(&c.workdir(&alice).join("bundle"), &alice, &["sh"], &[], "/");
    let id = sbatch(
        &c,
        &alice,
        &[
            "-o",
            "/dev/null",
            "--container",
            bundle.to_str().unwrap(),
            "--wrap",
            "exec sleep 86503",
        ],
    );
    running(s, id, "sleep 86503");
    let out = ok(c.ssh_to_job(
        &alice,
        &[&id.to_string(), "echo PID1=$(cat /proc/1/cmdline | tr '\\0' ' '); echo PS=$(ps -o pid,comm | tr '\\n' ' '); cat /etc/image-marker; echo from-session > /tmp/by-session"],
        None,
    ));
    assert!(
        out.contains("PID1=") && !out.contains("PID1=/sbin/init"),
        "{out}"
    );
    let ps = out.lines().find(|l| l.starts_with("PS=")).unwrap();
    assert!(
        ps.contains("sleep") && !ps.contains("slurm"),
        "the container's processes only: {out}"
    );
    assert!(out.contains("busybox image"), "the container's root: {out}");
    // The job's program sees it in its own /tmp.
    let sleep = pids_matching("sleep 86503")[0];
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{sleep}/root/tmp/by-session")).unwrap(),
        "from-session\n"
    );
    scancel(id);
}

#[test]
fn a_batch_script_that_starts_its_own_container_gets_sessions_inside_it() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let id = sbatch(
        &c,
        &alice,
        &[
            "-o",
            "/dev/null",
            "--wrap",
            "unshare --user --map-root-user --mount --pid --fork --mount-proc sh -c 'mount -t tmpfs none /mnt && echo inner > /mnt/m && exec sleep 86504'",
        ],
    );
    running(s, id, "sleep 86504");
    let jid = id.to_string();
    let out = ok(c.ssh_to_job(
        &alice,
        &[&jid, "echo PID1=$(cat /proc/1/comm); cat /mnt/m"],
        None,
    ));
    assert!(out.contains("PID1=sleep") && out.contains("inner"), "{out}");
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            "--outer",
            &jid,
            "echo PID1=$(cat /proc/1/comm); ls /mnt/m 2>&1 || true",
        ],
        None,
    ));
    assert!(
        !out.contains("PID1=sleep"),
        "--outer: the batch script's own namespaces: {out}"
    );
    scancel(id);
}

/// scancel while a session is open: the session ends and its user is told
/// the job ended — also for a `--container` job, whose container Slurm 22.05
/// can leave running after scancel (sessions end with the job, not with the
/// processes).
#[test]
fn scancel_ends_open_sessions_and_says_the_job_ended() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let bundle =
        stj_tests::rootfs::oci_bundle(&c.workdir(&alice).join("bundle"), &alice, &["sh"], &[], "/");
    let plain = sbatch(&c, &alice, &["-o", "/dev/null", "--wrap", "sleep 86505"]);
    let contained = sbatch(
        &c,
        &alice,
        &[
            "-o",
            "/dev/null",
            "--container",
            bundle.to_str().unwrap(),
            "--wrap",
            "exec sleep 86506",
        ],
    );
    running(s, plain, "sleep 86505");
    running(s, contained, "sleep 86506");
    for (id, marker) in [(plain, "sleep 4343"), (contained, "sleep 4344")] {
        let mut session = c
            .ssh_to_job_cmd(&alice, &[&id.to_string(), &format!("exec {marker}")], None)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the session's command", T, || {
            (!pids_matching(marker).is_empty()).then_some(())
        });
        scancel(id);
        let status = wait_until("the session to end with the job", T, || {
            session.try_wait().unwrap()
        });
        assert!(!status.success());
        let mut err = String::new();
        session
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        // Slurm may still be completing the job when the client asks.
        assert!(
            err.contains(&format!("the session ended: job {id} "))
                && (err.contains("CANCELLED") || err.contains("COMPLETING")),
            "the user is told: {err}"
        );
        wait_until("the session's processes to be gone", T, || {
            pids_matching(marker).is_empty().then_some(())
        });
    }
}

/// The node's starter in a network namespace that drops inbound
/// connections: reverse and relay paths reach the Slurm job.
#[test]
fn a_slurm_node_behind_nat_is_reached_by_reverse_and_relay() {
    let s = slurm();
    // The schedd runs on the submit host's network; slurmctld is on this
    // machine's (this test process's): its Slurm commands reach it there.
    let wrappers = std::env::temp_dir().join(format!("stj-slurm-bin-{}", std::process::id()));
    std::fs::create_dir_all(&wrappers).unwrap();
    for cmd in ["squeue", "scontrol"] {
        let w = wrappers.join(cmd);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\nexec nsenter --net=/proc/{}/ns/net /usr/bin/{cmd} \"$@\"\n",
                std::process::id()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut c = Cluster::with_net_and_schedd_config(&format!(
        "jobs = \"slurm\"\nslurm_bin_dir = \"{}\"\n",
        wrappers.display()
    ));
    c.start_starter_with(&s.node, 1, &["--jobs", "slurm"]);
    let alice = TestUser::alice();
    let id = sbatch(&c, &alice, &["-o", "/dev/null", "--wrap", "sleep 86507"]);
    running(s, id, "sleep 86507");
    for mode in ["reverse", "relay"] {
        let out = ok(c.ssh_to_job(
            &alice,
            &["--mode", mode, &id.to_string(), "echo via-$SLURM_JOB_ID"],
            None,
        ));
        assert_eq!(out.trim(), format!("via-{id}"), "{mode}");
    }
    scancel(id);
    std::fs::remove_dir_all(&wrappers).ok();
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut r = r;
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// `stj ARGS` on a real pty (script(1)), as a person types it.
fn stj_on_a_terminal(c: &Cluster, user: &TestUser, args: &str) -> std::process::Child {
    let mut cmd = Command::new("script");
    cmd.args([
        "-qfec",
        &format!("{} {args}", bin("stj").display()),
        "/dev/null",
    ])
    .current_dir(c.workdir(user))
    .env("STJ_SCHEDD_SOCKET", &c.socket)
    .env("STJ_DAEMON_SOCK_DIR", &c.daemon_sock)
    .env("HOME", user.home())
    .env("XDG_RUNTIME_DIR", c.runtime_dir(user))
    .env("TERM", "xterm")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .uid(user.uid)
    .gid(user.gid);
    cmd.spawn().unwrap()
}

fn users_jobs(user: &TestUser) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%A|%j", "-u", &user.name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with("|stj-interactive"))
        .map(str::to_string)
        .collect()
}

/// `stj submit --interactive` on Slurm: a placeholder through sbatch, a
/// shell in it once it runs, and the job cancelled when the shell exits —
/// and on Ctrl-C while it is pending (here: asking for more CPUs than the
/// node has, so it pends with Slurm's reason shown).
#[test]
fn interactive_jobs_go_through_sbatch_and_are_cancelled_after() {
    let (c, _s) = pool();
    // One user's interactive jobs at a time in this test.
    let alice = TestUser::get("stjtest-carol");
    let mut child = stj_on_a_terminal(&c, &alice, "submit --interactive");
    let out = collect(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let shell = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("a shell inside the Slurm job", T, || {
            stdin
                .write_all(b"echo IN-SLURM-$SLURM_JOB_NAME-$(id -u)\n")
                .ok()?;
            std::thread::sleep(Duration::from_millis(300));
            let t = out.lock().unwrap().clone();
            t.lines()
                .any(|l| {
                    l.trim().starts_with("IN-SLURM-stj-interactive-")
                        && l.trim().ends_with(&alice.uid.to_string())
                })
                .then_some(())
        })
    }));
    if shell.is_err() {
        panic!("no shell: {}\n{}", out.lock().unwrap(), _s.logs());
    }
    stdin.write_all(b"exit\n").unwrap();
    let status = wait_until("stj to end with the session", T, || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", out.lock().unwrap());
    wait_until("the job to be cancelled", T, || {
        users_jobs(&alice).is_empty().then_some(())
    });

    // Pending, then Ctrl-C.
    let mut child = stj_on_a_terminal(&c, &alice, "submit --interactive --cpus 1000");
    let out = collect(child.stdout.take().unwrap());
    wait_until("the pending display", T, || {
        out.lock()
            .unwrap()
            .contains("pending in Slurm")
            .then_some(())
    });
    assert_eq!(users_jobs(&alice).len(), 1);
    child.stdin.as_mut().unwrap().write_all(&[3]).unwrap();
    let status = wait_until("stj to stop", T, || child.try_wait().unwrap());
    assert!(!status.success());
    let t = out.lock().unwrap().clone();
    assert!(t.contains("interrupted") && t.contains("cancelled"), "{t}");
    wait_until("the pending job to be cancelled", T, || {
        users_jobs(&alice).is_empty().then_some(())
    });
}

#[test]
fn stj_q_shows_slurm_jobs_and_rm_says_to_use_scancel() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let id = sbatch(
        &c,
        &alice,
        &[
            "-o",
            "/dev/null",
            "-J",
            "stjq-test",
            "--wrap",
            "sleep 86508",
        ],
    );
    running(s, id, "sleep 86508");
    let q = ok(c.stj(Some(&alice), &c.workdir(&alice), &["q", &id.to_string()]));
    assert!(
        q.contains("stjq-test") && q.contains("running") && q.contains(&s.node),
        "{q}"
    );
    let out = c.stj(Some(&alice), &c.workdir(&alice), &["rm", &id.to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("scancel"),
        "{out:?}"
    );
    scancel(id);
}

/// Faults name their fix: Slurm's commands failing (the command and its
/// stderr, as the user sees them), and a node whose starter is not there.
#[test]
fn faults_say_which_command_failed_and_which_node_is_missing() {
    let s = slurm();
    let alice = TestUser::alice();
    // squeue as it fails when slurmctld cannot be reached.
    let bin = std::env::temp_dir().join(format!("stj-broken-slurm-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    for cmd in ["squeue", "scontrol"] {
        let p = bin.join(cmd);
        std::fs::write(
            &p,
            "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let c = Cluster::with_schedd_config(&format!(
        "jobs = \"slurm\"\nslurm_bin_dir = \"{}\"\n",
        bin.display()
    ));
    let out = c.ssh_to_job(&alice, &["5", "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Slurm is not reachable")
            && err.contains("squeue")
            && err.contains("Unable to contact slurm controller"),
        "{err}"
    );
    std::fs::remove_dir_all(&bin).ok();

    // A running job whose node has no starter registered.
    let c = Cluster::with_schedd_config("jobs = \"slurm\"\n");
    let id = sbatch(&c, &alice, &["-o", "/dev/null", "--wrap", "sleep 86509"]);
    running(s, id, "sleep 86509");
    let out = c.ssh_to_job(&alice, &[&id.to_string(), "true"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("node {}", s.node)) && err.contains("registered under Slurm's name"),
        "{err}"
    );
    scancel(id);
}

/// A job's name is its owner's free text. One with a newline and a row of
/// squeue's format after it must not become a job of someone else's in
/// the schedd's eyes: sessions still go into the owner's own job, and
/// `stj q` shows no row the user made.
#[test]
fn a_job_name_cannot_forge_a_row_of_squeue() {
    let (c, s) = pool();
    let alice = TestUser::alice();
    let bob = TestUser::bob();
    let forged = format!(
        "x\n999999|999999|{}|{}|RUNNING|None|{n}|{n}|1",
        bob.uid,
        bob.name,
        n = s.node
    );
    let id = sbatch(
        &c,
        &alice,
        &[
            "-o",
            "/dev/null",
            "--job-name",
            &forged,
            "--wrap",
            "sleep 86510",
        ],
    );
    running(s, id, "sleep 86510");
    let out = ok(c.ssh_to_job(&alice, &[&id.to_string(), "echo $SLURM_JOB_ID"], None));
    assert_eq!(out.trim(), id.to_string());
    let q = ok(c.stj(None, c.path(), &["q", "--json"]));
    let jobs: serde_json::Value = serde_json::from_str(&q).unwrap();
    let ids: Vec<u64> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&id) && !ids.contains(&999999), "{q}");
    scancel(id);
}

/// Knobs for jobs the starter runs itself are refused beside slurmd,
/// naming the knob, rather than ignored.
#[test]
fn a_slurm_starter_refuses_knobs_for_its_own_jobs() {
    let s = slurm();
    let c = Cluster::with_schedd_config("jobs = \"slurm\"\n");
    let child = c.spawn_starter(
        &s.node,
        1,
        &c.token_file,
        &["--jobs", "slurm", "--slots", "4"],
    );
    let log = c.starter_refused(&s.node, child);
    assert!(
        log.contains("slots is for the jobs this starter runs itself"),
        "{log}"
    );
}
